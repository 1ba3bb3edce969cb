"""``membound plan``: the JSON schema, the table, errors with exit code 2, the plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from membound.planner.cli import (
    add_parser,
    main,
    run_audit_command,
    run_calibrate_command,
    run_plan_command,
)

RESULT_KEYS = {
    "gpu", "tp", "precision", "kv_dtype", "fits", "weight_bytes", "weight_bytes_per_gpu",
    "kv_bytes_per_token", "kv_bytes_per_token_per_gpu", "max_kv_tokens", "max_concurrent_seqs",
    "cpu_offload_bytes", "batch", "decode_tokens_per_s_bound", "decode_tokens_per_s", "ttft_s",
    "tpot_s", "ttft_s_bound", "tpot_s_bound", "queue_wait_s", "bound", "bounds",
    "meets_targets", "cost_per_million_tokens", "tokens_per_dollar", "price_per_gpu_hour",
    "price", "joules_per_token", "energy", "efficiency", "notes",
}  # fmt: skip
TOP_KEYS = {"schema_version", "model", "workload", "assumptions", "results", "recommendation",
            "recommendation_reason"}  # fmt: skip


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_schema_is_stable(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, "--model", "llama-3-8b", "--gpu", "h100,h200", "--concurrency", "8")
    assert set(doc) == TOP_KEYS
    assert doc["schema_version"] == 1
    assert set(doc["workload"]) == {"input_len", "output_len", "concurrency", "target_ttft_s",
                                    "target_tpot_s"}  # fmt: skip
    assert [r["gpu"] for r in doc["results"]] == ["h100-sxm", "h200"]
    for result in doc["results"]:
        assert set(result) == RESULT_KEYS
        assert result["bound"] in ("memory", "compute")
        assert set(result["bounds"]) == {"ttft", "tpot", "decode_tokens_per_s"}
        assert result["kv_bytes_per_token"] == 131_072
        assert result["decode_tokens_per_s"] <= result["decode_tokens_per_s_bound"]
    assert doc["recommendation"]["gpu"] in ("h100-sxm", "h200")


def test_fit_answers_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, "--model", "llama-2-70b", "--gpu", "h100", "--tp", "1")
    assert doc["results"][0]["fits"] is False and doc["results"][0]["cpu_offload_bytes"] > 0
    assert doc["recommendation"] is None
    doc = run_json(capsys, "--model", "llama-2-70b", "--gpu", "h100")
    assert (doc["results"][0]["tp"], doc["results"][0]["fits"]) == (2, True)
    doc = run_json(capsys, "--model", "llama-3-70b", "--gpu", "h200", "--precision", "fp8")
    assert (doc["results"][0]["tp"], doc["results"][0]["fits"]) == (1, True)
    doc = run_json(capsys, "--model", "falcon-180b", "--gpu", "h200", "--precision", "int4-awq")
    assert (doc["results"][0]["tp"], doc["results"][0]["fits"]) == (1, True)


def test_targets_pick_the_cheapest_option_that_meets_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = run_json(capsys, "--model", "llama-3-70b", "--gpu", "h100,h200", "--precision", "fp8",
                   "--target-tpot", "20ms", "--concurrency", "16")  # fmt: skip
    meeting = [r for r in doc["results"] if r["meets_targets"]]
    assert meeting, doc["results"]
    assert all(r["tpot_s"] <= 0.02 for r in meeting)
    cheapest = min(meeting, key=lambda r: r["cost_per_million_tokens"])
    assert doc["recommendation"]["gpu"] == cheapest["gpu"]
    assert doc["recommendation"]["tp"] == cheapest["tp"]
    assert len({(r["gpu"], r["tp"]) for r in doc["results"]}) > 2  # larger TPs were searched


def test_price_override_and_hardware_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "--model", "llama-3-8b", "--gpu", "h100,h200",
                   "--price-per-gpu-hour", "h100=1.0,h200=2.0")  # fmt: skip
    assert [r["price_per_gpu_hour"] for r in doc["results"]] == [1.0, 2.0]
    hw = tmp_path / "hw.toml"
    hw.write_text("[gpu.big]\nmemory_gib = 1000\nbandwidth_gbs = 10000\ndense_bf16_tflops = 100\n")
    doc = run_json(capsys, "--model", "falcon-180b", "--gpu", "big", "--hardware-file", str(hw))
    assert doc["results"][0]["fits"] and doc["results"][0]["cost_per_million_tokens"] is None


def test_text_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "llama-3-70b", "--gpu", "a100,h100", "--precision", "fp8"]) == 0
    out = capsys.readouterr().out
    assert "recommendation:" in out and "tok/s (bound)" in out
    assert "no FP8 tensor cores" in out  # A100 fallback is said
    assert "estimate, not measured" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "llama-3-8b", "--gpu", "h900"], "GPU 'h900' is not known; use one of"),
        (["--model", "gpt-9"], "is not a preset; use one of 'llama-2-7b'"),
        (["--model", "qwen2.5-7b", "--tp", "8", "--gpu", "h100"], "does not divide"),
        (["--gpu", "h100"], "--model is required"),
        (["--model", "llama-3-8b", "--price-per-gpu-hour", "cheap"], "not a price"),
        (["--model", "llama-3-8b", "--gpu-memory-utilization", "1.5"], "gpu_memory_utilization"),
    ],
)
def test_bad_input_exits_2_without_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("membound plan: error:")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "int3"], "choose from 'bf16', 'fp16', 'fp8'"),
        (["--kv-dtype", "fp6"], "kv-dtype 'fp6' is not known; use one of"),
        (["--tp", "0"], "not a positive integer"),
        (["--target-tpot", "fast"], "not a duration"),
    ],
)
def test_bad_option_values_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", "--model", "llama-3-8b", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_add_parser_registers_plan_and_modes() -> None:
    parser = argparse.ArgumentParser(prog="membound")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["plan", "--model", "llama-3-8b", "--target-ttft", "500ms"])
    assert args.func is run_plan_command and args.target_ttft == pytest.approx(0.5)
    args = parser.parse_args(["plan", "calibrate", "a.json", "b.json"])
    assert args.func is run_calibrate_command and args.files == ["a.json", "b.json"]
    args = parser.parse_args(["plan", "--json", "audit", "claims.csv"])
    assert args.func is run_audit_command and args.json is True


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--list"]) == 0
    out = capsys.readouterr().out
    assert "h100-sxm" in out and "falcon-180b" in out


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "roofline.png"
    argv = ["plan", "--model", "llama-3-8b", "--gpu", "h100,l40s", "--plot", str(path)]
    assert main(argv) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_precision_defaults_to_the_checkpoint_quantization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from membound.planner.presets import PRESET_CONFIGS

    config = {**PRESET_CONFIGS["llama-3-70b"], "quantization_config": {"quant_method": "awq"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    doc = run_json(capsys, "--model", str(tmp_path), "--gpu", "h100")
    assert doc["results"][0]["precision"] == "int4-awq"
    assert (doc["results"][0]["tp"], doc["results"][0]["fits"]) == (1, True)


def test_module_entry_point_runs_and_fails_cleanly() -> None:
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "membound.planner.cli", "plan", "--model", "llama-3-8b",
         "--gpu", "h100", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0 and json.loads(ok.stdout)["results"][0]["fits"]
    bad = subprocess.run(
        [sys.executable, "-m", "membound.planner.cli", "plan", "--model", "llama-3-8b",
         "--gpu", "rtx9090"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "GPU 'rtx9090' is not known; use one of" in bad.stderr


def test_planner_depends_on_config_only() -> None:
    """planner -> config only: no torch, no matplotlib, no engine modules at import."""
    import subprocess
    import sys

    code = (
        "import sys, membound.planner.cli, membound.planner.plan, membound.planner.report\n"
        "mods = [m for m in sys.modules if m.split('.')[0] in ('torch', 'triton', 'matplotlib')"
        " or m.startswith(('membound.engine', 'membound.worker', 'membound.core',"
        " 'membound.models', 'membound.layers'))]\n"
        "print(mods)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
