"""`membound serve`: flags, the API key from the environment, clear errors without the extras
or without a model, and no server imports until the server runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from membound.engine.engine_args import EngineArgs
from membound.entrypoints.cli import build_parser, main
from membound.entrypoints.openai import cli as serve_cli
from membound.entrypoints.openai.api_server import ServerArgs


def test_serve_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMBOUND_API_KEY", raising=False)
    args = build_parser().parse_args([
        "serve", str(tmp_path), "--port", "9001", "--api-key", "k", "--served-model-name", "a",
        "b", "--max-n", "4", "--max-waiting-requests", "7", "--block-size", "4",
        "--max-model-len", "64",
    ])
    assert args.func is serve_cli.run_server and args.host == "127.0.0.1" and args.port == 9001
    server = ServerArgs.from_cli_args(args)
    assert server.served_model_names == ("a", "b") and server.api_key == "k"
    assert server.limits.max_n == 4 and server.limits.max_waiting_requests == 7
    engine = EngineArgs.from_cli_args(args)
    assert engine.model == str(tmp_path) and engine.block_size == 4 and engine.max_model_len == 64
    defaults = build_parser().parse_args(["serve"])
    assert defaults.model is None and defaults.port == 8000
    assert ServerArgs.from_cli_args(defaults).api_key is None


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBOUND_API_KEY", "from-env")
    args = build_parser().parse_args(["serve"])
    assert ServerArgs.from_cli_args(args).api_key == "from-env"


def test_missing_extras_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(serve_cli, "missing_server_modules", lambda: ["fastapi", "uvicorn"])
    assert main(["serve"]) == 2
    assert "pip install 'membound[server]'" in capsys.readouterr().err


def test_missing_default_model_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import membound.model_source as model_source

    monkeypatch.setattr(model_source, "default_model_path", lambda: str(tmp_path / "none"))
    assert main(["serve", "--port", "1"]) == 2
    assert "default model is missing" in capsys.readouterr().err


def test_cli_loads_serve_without_server_imports() -> None:
    code = (
        "import sys\n"
        "from membound.entrypoints.cli import build_parser\n"
        "build_parser().parse_args(['serve'])\n"
        "loaded = [m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic', "
        "'prometheus_client') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
