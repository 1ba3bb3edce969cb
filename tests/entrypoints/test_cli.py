from __future__ import annotations

from pathlib import Path

import pytest

from membound.entrypoints.cli import build_parser, main, split_model_and_prompts


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


def test_missing_model_path_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "/typo/path", "hi", "--max-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "'/typo/path' does not exist" in err and err.count("\n") == 1
    assert split_model_and_prompts(["./nope", "p"], None) == ("./nope", ["p"])
    assert split_model_and_prompts(["~/nope"], None) == ("~/nope", [])
    assert split_model_and_prompts(["/help me please"], None) == (None, ["/help me please"])


def test_truncated_checkpoint_is_one_line(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_llama, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert main(["generate", str(folder), "hi", "--max-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(weights) in err and "truncated" in err


def test_global_flags_in_either_position() -> None:
    parser = build_parser()
    assert parser.parse_args(["--log-level", "debug", "generate", "x"]).log_level == "DEBUG"
    assert parser.parse_args(["generate", "x", "--log-level", "info"]).log_level == "INFO"
    assert parser.parse_args(["info", "--log-level", "error"]).log_level == "ERROR"
    assert parser.parse_args(["--log-level", "error", "serve"]).log_level == "ERROR"
    assert not hasattr(parser.parse_args(["generate", "x"]), "log_level")  # main: WARNING


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["generate", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
    out = " ".join(capsys.readouterr().out.split())
    for text in ("tokens per KV block (default: 16)", "sequences per step (default: 256)",
                 "tokens to generate per prompt (default: 128)", "(default: 127.0.0.1)",
                 "--header-timeout-s", "--drain-timeout-s", "(default: 30.0)",
                 "--generation-config auto|vllm|DIR"):
        assert text in out, text


def test_vllm_spellings() -> None:
    from membound.config import ConfigError
    from membound.engine.engine_args import EngineArgs
    from membound.entrypoints.openai.server_args import ServerArgs

    args = build_parser().parse_args([
        "serve", "m", "-tp", "2", "--chat-template", "{{ x }}", "--generation-config", "vllm",
        "--disable-log-requests", "--trust-remote-code",
    ])
    engine = EngineArgs.from_cli_args(args)
    assert engine.tensor_parallel_size == 2 and engine.generation_config == "vllm"
    server = ServerArgs.from_cli_args(args)
    assert server.chat_template == "{{ x }}" and server.access_log is False
    assert server.read_chat_template() == "{{ x }}"
    with pytest.raises(ConfigError, match="trust_remote_code is not supported"):
        engine.create_engine_config()


def test_served_model_name_does_not_swallow_the_model(tmp_path: Path) -> None:
    from membound.entrypoints.openai.server_args import take_model_from_names

    parser = build_parser()
    for argv in (["serve", "--served-model-name", "a", "b", str(tmp_path)],
                 ["serve", str(tmp_path), "--served-model-name", "a", "b"]):
        args = take_model_from_names(parser.parse_args(argv))
        assert args.model == str(tmp_path) and list(args.served_model_name) == ["a", "b"]
    args = take_model_from_names(parser.parse_args(["serve", "--served-model-name", "a", "o/m"]))
    assert args.model is None and args.served_model_name == ["a", "o/m"]  # a hub id stays a name


def test_serve_missing_model_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("uvicorn")
    for argv in (["serve", "/typo/path"], ["serve", "--served-model-name", "m", "/typo/path"]):
        assert main([*argv, "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert "'/typo/path' does not exist" in err and err.count("\n") == 1
