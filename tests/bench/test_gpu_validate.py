"""benchmarks/gpu_validate.py and its phases, on the CPU (the dry run: tiny shapes, Triton in
its interpreter), so the prepared GPU run cannot rot before a GPU is available.

The default suite runs each phase's measurements in-process (no subprocess start-up), the
orchestrator's budget, timeout and summary logic, and one phase through the orchestrator;
the whole dry run, every phase in its own subprocess, is marked slow (40-90 s here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


EXPECTED = {  # phase -> results every dry run must produce
    "gpu_phase_env": ["commit", "versions", "copy_bandwidth_gbs", "matmul_tflops"],
    "gpu_phase_smoke": ["rms_norm", "paged_decode_attention/s4", "prefill_attention",
                        "paged_decode_attention/fp8kv",
                        "moe_gemm", "int4_gemm/m1", "int4_gemm/m20", "int8 torch._int_mm",
                        "fp8 torch._scaled_mm"],
    "gpu_phase_kernels": ["decode_attention/b1/ctx64", "prefill_attention/32", "moe_gemm/t6",
                          "quant_gemm/int4/m1", "quant_gemm/fp8/m20", "quant_gemm/int8/m20"],
    "gpu_phase_e2e": ["transformers", "bf16/batch1", "bf16/throughput", "fp8/batch1",
                      "fp8/throughput", "int4/batch1", "fp8/config"],
    "gpu_offload": ["fraction_0.0", "fraction_0.5", "fraction_0.9"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPECTED))
def test_phase_measures_everything_on_the_cpu(name: str, tmp_path: Path) -> None:
    phases = load("gpu_phases")
    module = load(name)
    target = phases.make_target(dry_run=True)
    res = phases.PhaseResult(name, tmp_path, target)
    module.run(target, res)
    assert res.failures == []
    assert [k for k in EXPECTED[name] if k not in res.results] == []
    if name == "gpu_phase_e2e":  # FP8 weights with an FP8 KV cache, as the anchors
        assert res.results["fp8/config"]["kv_cache_dtype"] == "fp8"
    written = json.loads((tmp_path / f"{name}.json").read_text())
    assert written["dry_run"] is True and set(EXPECTED[name]) <= set(written["results"])


def test_budget_too_small_skips_with_reasons(tmp_path: Path) -> None:
    validate = load("gpu_validate")
    assert validate.main(["--out", str(tmp_path), "--dry-run", "--budget-s", "1"]) == 0
    doc = summary(tmp_path)
    assert doc["complete"] and doc["dry_run"] and doc["schema"] == validate.SCHEMA
    names = [p["name"] for p in doc["phases"]]
    assert names == ["env", "smoke", "tests", "kernels", "e2e"]  # offload only when asked
    assert all(p["status"] == "skipped" and "budget" in p["reason"] for p in doc["phases"])
    with pytest.raises(SystemExit, match="unknown phase"):
        validate.main(["--out", str(tmp_path), "--phases", "env,nope"])


def test_a_phase_past_its_timeout_is_killed(tmp_path: Path) -> None:
    validate = load("gpu_validate")
    cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    status, rc = validate.run_phase(cmd, tmp_path / "x.log", 1.5, {})
    assert (status, rc) == ("timeout", None)
    log = (tmp_path / "x.log").read_text()
    assert "KeyboardInterrupt" in log and "stopped after its 2 s timeout" in log


def test_orchestrator_runs_a_phase_and_folds_its_results(tmp_path: Path) -> None:
    validate = load("gpu_validate")
    assert validate.main(["--out", str(tmp_path), "--dry-run", "--phases", "env"]) == 0
    doc = summary(tmp_path)
    (env,) = doc["phases"]
    assert env["status"] == "ok" and env["seconds"] > 0 and env["results"]["copy_bandwidth_gbs"]
    assert doc["device"]["name"] == "cpu (dry run)" and doc["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.log", "summary.json"]


def test_tests_phase_command_and_junit_counts(tmp_path: Path) -> None:
    """The tests phase itself (a pytest run, ~20 s of collection here) is in the slow test."""
    validate = load("gpu_validate")
    cmd = validate.tests_command(tmp_path, dry_run=False)
    assert cmd[1:5] == ["-m", "pytest", "-m", "gpu and not slow"]
    assert f"--junitxml={tmp_path / 'tests.xml'}" in cmd and cmd[-1].endswith("tests")
    assert validate.tests_command(tmp_path, dry_run=True)[-1].endswith(".py")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/>'
        '<testsuite tests="3" failures="0" errors="1" skipped="0"/></testsuites>'
    )
    counts = validate.junit_counts(tmp_path / "tests.xml")
    assert counts == {"tests": 8, "failures": 1, "errors": 1, "skipped": 2}
    assert validate.junit_counts(tmp_path / "missing.xml") is None


@pytest.mark.slow
def test_full_dry_run(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_validate.py"), "--out",
                           str(out), "--dry-run", "--offload"], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = summary(out)
    assert [(p["name"], p["status"]) for p in doc["phases"]] == [
        (n, "ok") for n in ("env", "smoke", "tests", "kernels", "e2e", "offload")]  # fmt: skip
    tests = next(p for p in doc["phases"] if p["name"] == "tests")
    assert tests["results"]["counts"]["tests"] > 0
    assert len(list(out.iterdir())) <= 8  # what a lent GPU machine sends back
