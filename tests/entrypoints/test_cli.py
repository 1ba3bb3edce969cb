from __future__ import annotations

from pathlib import Path

import pytest

from membound.entrypoints.cli import main, split_model_and_prompts


def test_generate_prints_text_and_summary(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["generate", str(tiny_llama), "def add(a, b):", "import os", "--max-tokens", "5",
               "--temperature", "0", "--ignore-eos", "--block-size", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "--- prompt: 'def add(a, b):'" in out and "--- prompt: 'import os'" in out
    assert "2 prompt(s):" in out and "10 output tokens" in out and "output tokens/s" in out


def test_generate_chat(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(tiny_llama), "hi", "--chat", "--max-tokens", "3",
                 "--ignore-eos"]) == 0
    assert "1 prompt(s)" in capsys.readouterr().out


def test_generate_bad_option_is_clear(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(tiny_llama), "x", "--top-p", "1.5"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_model_argument_is_optional(tiny_llama: Path) -> None:
    assert split_model_and_prompts([str(tiny_llama), "a"], None) == (str(tiny_llama), ["a"])
    assert split_model_and_prompts(["hello world"], None) == (None, ["hello world"])
    assert split_model_and_prompts(["org/model", "p"], None) == ("org/model", ["p"])
    assert split_model_and_prompts(["a", "b"], "m") == ("m", ["a", "b"])


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "cuda available" in out and "host memory" in out


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["generate", "--help"], ["info", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "usage" in capsys.readouterr().out
