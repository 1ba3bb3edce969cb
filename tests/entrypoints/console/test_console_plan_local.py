"""The console's planner route with ``gpu: local``: it reads the cached record of this machine
and never runs the device probe inside the server (that takes minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from membound.entrypoints.openai.console.plan_api import run_web_plan  # noqa: E402
from membound.planner import local_device as ld  # noqa: E402
from membound.planner.errors import PlannerError  # noqa: E402

RECORD = {
    "probe_version": 1, "created": "2026-12-06T00:00:00Z", "device_type": "cpu",
    "device_name": "cpu: Test CPU", "memory_bytes": 24 << 30, "bandwidth_gbs": 10.0,
    "copy_gbs": 9.0, "read_gbs": 10.0, "matmul_tflops": {"float32": 0.15, "bfloat16": 1.0},
    "overlap": False, "engine_dtype": "float32", "cores": 2, "threads": 1,
}  # fmt: skip


def test_plan_local_uses_only_the_cached_record(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MEMBOUND_CACHE_DIR", str(tmp_path))

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the console ran the device probe")

    monkeypatch.setattr(ld, "measure_local_device", no_probe)
    body = {"model": "llama-3-8b", "gpu": "local,h100", "precision": "bf16"}
    with pytest.raises(PlannerError, match="membound plan --gpu local"):
        run_web_plan(body)
    (tmp_path / "local_device.json").write_text(json.dumps(RECORD))
    doc = run_web_plan(body)
    assert [r["gpu"] for r in doc["plan"]["results"]][:1] == ["local"]
