"""The GPU workload script (benchmarks/gpu_reference_workloads.py) cannot run here; check
that its model folders load as engine configs and its commands parse."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from membound.engine.engine_args import EngineArgs
from membound.entrypoints.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_reference_workloads.py"


@pytest.fixture(scope="module")
def script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_reference_workloads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_workloads_cover_the_issue(script) -> None:  # type: ignore[no-untyped-def]
    names = {w.name for w in script.WORKLOADS}
    assert names == {
        "llama3-8b-bf16-128x128",
        "llama3-8b-bf16-1000x1000",
        "llama3-8b-fp8-128x128",
        "llama3-8b-fp8-1000x1000",
        "llama3-70b-fp8-h200-128x128",
        "llama3-8b-bf16-batch1",
    }


def test_model_folders_and_commands(script, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    parser = build_parser()
    for w in script.WORKLOADS:
        folder = script.write_model_folder(w.preset, tmp_path)
        config = EngineArgs(
            model=str(folder), load_format="dummy", dtype="bfloat16", device="cpu"
        ).create_engine_config()
        assert config.model_config.num_hidden_layers in (32, 80)
        cmd = script.bench_command(w, folder, tmp_path / f"{w.name}.json", plot=True)
        assert isinstance(cmd, list), cmd  # FP8 weights and FP8 KV are both supported now
        assert cmd[:4] == [sys.executable, "-m", "membound.entrypoints.cli", "bench"]
        args = parser.parse_args(cmd[3:])
        if w.precision == "fp8":
            assert (args.quantization, args.kv_cache_dtype) == ("fp8", "fp8")
        assert args.load_format == "dummy" and args.output_json.endswith(".json")
        assert (args.input_len, args.output_len) == (w.input_len, w.output_len)


def test_dry_run_and_gpu_check(script, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert script.main(["--dry-run", "all", "--gpu-name", "NVIDIA H100 80GB HBM3"]) == 0
    out = capsys.readouterr().out
    assert "llama3-70b-fp8-h200-128x128: skipped, needs a GPU matching" in out
    assert "--load-format dummy" in out and "h100-80gb-hbm3.json" in out
    assert script.device_slug("NVIDIA H200") == "h200"


def test_skips_are_recorded_under_out(  # type: ignore[no-untyped-def]
    script, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only workloads that skip (here FP8 as if the config refused an FP8 KV cache, and 70B
    off an H200): nothing runs, yet every reason, naming what is missing, lands in --out."""
    from membound.config import ConfigError

    def refuse(**kwargs: object) -> None:
        raise ConfigError("kv_cache_dtype='fp8' is not supported yet")

    monkeypatch.setattr("membound.config.engine.CacheConfig", refuse)
    names = ["llama3-8b-fp8-128x128", "llama3-70b-fp8-h200-128x128"]
    assert script.main([*names, "--gpu-name", "NVIDIA H100", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "workloads.json").read_text())
    reasons = {w["name"]: (w["status"], w["reason"]) for w in doc["workloads"]}
    assert reasons["llama3-8b-fp8-128x128"][0] == "skipped"
    assert "FP8 KV cache" in reasons["llama3-8b-fp8-128x128"][1]
    assert "h200" in reasons["llama3-70b-fp8-h200-128x128"][1]
