"""The benchmark JSON every ``membound bench`` command writes with ``--output-json``.

One document per run (``schema_version`` 1)::

    {"schema_version": 1, "kind": "throughput" | "latency" | "serve",
     "created": "2026-04-01T12:00:00Z", "command": "membound bench latency ...",
     "commit": "<git sha>" | null, "commit_dirty": bool | null,
     "machine": {...membound info...}, "versions": {"membound", "torch", "triton", "python"},
     "device": {"name", "type", "count", "driver", "datasheet": {...} | null},
     "model": {"name", "path", "config": {...HF config.json...}, "num_params", "weight_bytes"},
     "config": {"precision", "kv_dtype", "tp", "batch_size", "input_len", "output_len", ...},
     "figures": {...}, "energy": {...}, "cost": {...}, "samples": {"tpot_ms": [...], ...},
     "notes": [...]}

The planner's calibration (``membound plan calibrate``, docs/planner.md) reads
``device.name``, ``model.name``/``model.config``, ``config.{precision, kv_dtype, tp,
batch_size, input_len, output_len}`` and ``figures.{achieved_weight_bandwidth_gbs,
tpot_ms_mean, ttft_ms_mean, avg_power_w, energy_j_per_token, output_tokens_per_s}``.
Figures that were not measured are JSON null or the string "not measured", never estimates.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
KINDS = ("throughput", "latency", "serve")

_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def precision_name(dtype: str) -> str:
    """Engine dtype name -> the planner's precision name (``bfloat16`` -> ``bf16``)."""
    return _PRECISION.get(dtype, dtype)


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the source membound runs from (bench/provenance.py: the
    MEMBOUND_COMMIT variable, a COMMIT file, then git); (None, None) when none answers."""
    from membound.bench.provenance import source_commit

    return source_commit()


def command_line(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    prog = "membound" if argv and os.path.basename(argv[0]) == "membound" else argv[0]
    return shlex.join([prog, *argv[1:]]) if argv else ""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def datasheet(device_name: str) -> dict[str, Any] | None:
    """The planner table's entry for a device name, as the ceilings a benchmark compares
    against (dense peaks), or None ("no datasheet figure")."""
    from membound.planner.hardware import load_hardware

    gpu = load_hardware().match_device(device_name)
    if gpu is None:
        return None
    return {
        "table_name": gpu.name,
        "bandwidth_gbs": gpu.bandwidth_gbs,
        "dense_bf16_tflops": gpu.dense_bf16_tflops,
        "dense_fp8_tflops": gpu.dense_fp8_tflops,
        "dense_int8_tops": gpu.dense_int8_tops,
        "tdp_w": gpu.tdp_w,
        "source": gpu.spec_source,
    }


def device_info(device: str) -> dict[str, Any]:
    """Name, type, count and driver of a torch device string ("cuda", "cuda:1", "cpu")."""
    from membound.bench.energy import nvml_driver_version

    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        name = torch.cuda.get_device_name(index)
        return {"name": name, "type": "cuda", "index": index, "count": 1,
                "driver": nvml_driver_version(), "cuda_runtime": torch.version.cuda,
                "datasheet": datasheet(name)}  # fmt: skip
    return {"name": f"cpu: {cpu_name()}", "type": "cpu", "count": 1, "driver": None,
            "cores": os.cpu_count(), "datasheet": None}  # fmt: skip


def versions() -> dict[str, str]:
    import importlib.metadata

    out = {"python": platform.python_version()}
    for pkg in ("membound", "torch", "triton", "transformers", "aiohttp", "nvidia-ml-py"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine_info() -> dict[str, str]:
    try:
        from membound.entrypoints.sysinfo import collect_info

        return collect_info()
    except Exception as e:  # torch missing in a client-only environment
        return {"error": f"could not collect machine info: {e}"}


def read_model_config(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def build_result(
    kind: str,
    *,
    device: dict[str, Any],
    model: dict[str, Any],
    config: dict[str, Any],
    figures: dict[str, Any],
    energy: dict[str, Any] | None = None,
    cost: dict[str, Any] | None = None,
    samples: dict[str, list[float]] | None = None,
    notes: list[str] | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Assemble one result document (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    commit, dirty = git_commit()
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command_line(argv),
        "commit": commit,
        "commit_dirty": dirty,
        "machine": machine_info(),
        "versions": versions(),
        "device": device,
        "model": model,
        "config": config,
        "figures": figures,
        "energy": energy or {},
        "cost": cost or {},
        "samples": samples or {},
        "notes": notes or [],
    }


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as null (or "inf" for a request rate)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "figures" not in doc:
        raise ValueError(f"{os.fspath(path)} is not a membound benchmark result (no 'figures')")
    return doc


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for a terminal table: numbers with thousands separators, '-' for null."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.{digits}f}"
    return f"{value:.3g}"
