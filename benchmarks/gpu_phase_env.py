"""Phase env: the machine and the ceilings every later figure is held against.

nvidia-smi, package versions, the source commit (MEMBOUND_COMMIT, a COMMIT file, then git),
the measured device-to-device copy bandwidth, pinned host-to-device bandwidth and bf16 matmul
TFLOP/s (8192^3 on random data). Dry run: the CPU, fp32, small sizes; H2D not measured.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_phases import GB, PhaseResult, Target, copy_bandwidth_gbs, phase_args  # noqa: E402


def nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi not available: {e}"
    return out.stdout + out.stderr


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    found: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                             "cuda": torch.version.cuda}  # fmt: skip
    for name in ("triton", "transformers", "numpy", "safetensors"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def device_info(t: Target) -> dict[str, Any]:
    if not t.cuda:
        return {"name": "cpu (dry run)", "threads": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}",
            "sm_count": p.multi_processor_count, "memory_bytes": p.total_memory,
            "count": torch.cuda.device_count()}  # fmt: skip


def h2d_bandwidth_gbs(t: Target) -> float:
    """Pinned host -> device copies (what CPU offloading streams through)."""
    n = 1 << 30
    host = torch.empty(n, dtype=torch.uint8).pin_memory()
    dev = torch.empty(n, dtype=torch.uint8, device=t.device)
    ms = t.time_ms(lambda: dev.copy_(host, non_blocking=True), warmup=2, iters=5)
    return n / (ms / 1e3) / GB


def matmul_tflops(t: Target) -> float:
    n = t.pick(8192, 256)
    a = torch.randn(n, n, dtype=t.dtype, device=t.device)
    b = torch.randn(n, n, dtype=t.dtype, device=t.device)
    ms = t.time_ms(lambda: a @ b)
    return 2 * n**3 / (ms / 1e3) / 1e12


def main() -> int:
    _, t, res = phase_args("env", __doc__)
    run(t, res)
    return res.exit_code()


def run(t: Target, res: PhaseResult) -> None:
    """Every measurement of the phase, each recorded in ``res`` as it completes."""
    from membound.bench.provenance import source_commit

    smi = nvidia_smi()
    print(smi, flush=True)
    commit, dirty = source_commit()
    res.record("commit", {"commit": commit, "dirty": dirty}, f"commit {commit} dirty={dirty}")
    res.record("versions", versions(), f"versions {versions()}")
    res.record("device", device_info(t), f"device {device_info(t)}")
    res.record("nvidia_smi_found", not smi.startswith("nvidia-smi not available"))
    copy = res.attempt("copy bandwidth", lambda: copy_bandwidth_gbs(t))
    res.record("copy_bandwidth_gbs", copy, f"device copy bandwidth {copy} GB/s (read + write)")
    if t.cuda:
        h2d = res.attempt("pinned H2D", lambda: h2d_bandwidth_gbs(t))
        res.record("h2d_pinned_gbs", h2d, f"pinned host-to-device {h2d} GB/s")
    else:
        res.record("h2d_pinned_gbs", "not measured (no GPU in the dry run)")
    tf = res.attempt("matmul", lambda: matmul_tflops(t))
    res.record("matmul_tflops", tf, f"{t.dtype} matmul {tf} TFLOP/s")


if __name__ == "__main__":
    sys.exit(main())
