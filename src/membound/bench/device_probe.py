"""Measure the device at hand once, for ``membound plan --gpu local``.

The planner is pure Python (``planner -> config`` only), so it never measures anything
itself: it runs this module in a child process (``python -m membound.bench.device_probe
--output FILE``) and reads the plain JSON record it writes (``planner/local_device.py``
reads, validates and caches it). The record holds what the roofline needs:

    memory_bytes        device memory (CUDA: total_memory; CPU: MemTotal of /proc/meminfo)
    copy_gbs            a large copy, (bytes read + bytes written) / seconds of the fastest
                        repeat, as ``bench latency`` measures its ceiling
    read_gbs            a reduction over the same buffer: bytes read / seconds (a decode
                        step mostly reads; on a CPU this beats the copy's rate)
    bandwidth_gbs       the larger of the two: the planner's memory ceiling
    matmul_tflops       {dtype: 2 n^3 / seconds} for square matrices in each dtype measured:
                        the engine's default dtype on the device (engine_default_dtype) and
                        the other of float32 / bfloat16
    matmul_rows_tflops  CPU only: {dtype: {rows: TFLOP/s}} of [rows, 1024] x [1024, 1024]
                        products, rows 1 ... 512, the weight in cache: how fast a decode step
                        of B sequences (B rows) can multiply. A CPU core streams weights and
                        multiplies in turn, so the planner adds the two times
                        (benchmarks/results/planner_local_cpu/gemm_stack_rows.log)
    overlap             whether compute and memory traffic overlap within a pass (CUDA: yes,
                        CPU: no)
    cores, threads      CPU cores (os.cpu_count) and the torch threads the measurement used
                        (run with the OMP_NUM_THREADS the engine will use)

The device name is the one ``membound bench`` writes in its JSON (``device.name``), so a
benchmark run on this machine calibrates this record.

    python -m membound.bench.device_probe                 # print the record
    python -m membound.bench.device_probe --output f.json --copy-mib 8 --matmul-n 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from membound.bench.ceilings import best_seconds

PROBE_VERSION = 1
_SIZES = {"cpu": (256, 1024), "cuda": (1024, 8192)}  # copy MiB, matmul n
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ROWS_K = 1024  # inner and output size of the rows curve: a 4 MiB fp32 weight


def _memory_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _bandwidths(
    nbytes: int, device: str, sync: Callable[[], None], repeats: int
) -> tuple[float, float]:
    """(copy GB/s counting read + written bytes, read GB/s of a reduction)."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = best_seconds(lambda: dst.copy_(src), sync, repeats)
    floats = src.view(torch.float32)
    read_s = best_seconds(lambda: floats.sum(), sync, repeats)
    return 2 * nbytes / copy_s / 1e9, nbytes / read_s / 1e9


def _rows_curve(dtype: Any, repeats: int, rows: Sequence[int], k: int) -> dict[str, float]:
    """TFLOP/s of [m, k] x [k, k] products for each m in ``rows`` (weight in cache)."""
    import torch

    w = torch.randn(k, k).to(dtype)
    out = {}
    for m in rows:
        x = torch.randn(m, k).to(dtype)
        inner = max(1, 32 // m)  # enough work per timing on a small m

        def run(x: Any = x, inner: int = inner) -> None:
            for _ in range(inner):
                torch.nn.functional.linear(x, w)

        seconds = best_seconds(run, lambda: None, repeats) / inner
        out[str(m)] = 2 * m * k * k / seconds / 1e12
    return out


def engine_default_dtype(device: str) -> str:
    """What ``dtype="auto"`` gives on ``device`` (engine_args.resolve_dtype): on a CPU
    bfloat16 where it is native (kernels/cpu_features.py), else float32; on CUDA the
    checkpoint's, bfloat16 for the models that matter."""
    if device == "cuda":
        return "bfloat16"
    from membound.kernels.cpu_features import default_cpu_dtype, detect_cpu_features

    return default_cpu_dtype(detect_cpu_features())


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu")
    return device


def probe(
    device: str = "auto", *, copy_mib: int | None = None, matmul_n: int | None = None,
    repeats: int = 5, rows: Sequence[int] = ROWS, rows_k: int = ROWS_K,
) -> dict[str, Any]:  # fmt: skip
    """Measure ``device`` and return the plain record described in the module docstring."""
    import torch

    from membound.bench.results import device_info

    device = resolve_device(device)
    default_mib, default_n = _SIZES[device]
    copy_mib, matmul_n = copy_mib or default_mib, matmul_n or default_n
    if copy_mib < 1 or matmul_n < 1 or repeats < 1:
        raise ValueError("--copy-mib, --matmul-n and --repeats must be positive")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    nbytes = copy_mib << 20
    copy_gbs, read_gbs = _bandwidths(nbytes, device, sync, repeats)
    engine_dtype = engine_default_dtype(device)
    matmul, curves = {}, {}
    for name in dict.fromkeys((engine_dtype, "float32", "bfloat16")):
        dtype = getattr(torch, name)
        a = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
        b = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
        seconds = best_seconds(lambda a=a, b=b: a @ b, sync, repeats)
        matmul[name] = 2 * matmul_n**3 / seconds / 1e12
        if device == "cpu":
            curves[name] = _rows_curve(dtype, repeats, rows, rows_k)
    info = device_info(device)
    return {
        "probe_version": PROBE_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device_type": device,
        "device_name": info["name"],
        "memory_bytes": _memory_bytes(device),
        "bandwidth_gbs": max(copy_gbs, read_gbs),
        "copy_gbs": copy_gbs,
        "read_gbs": read_gbs,
        "copy_bytes": nbytes,
        "matmul_tflops": matmul,
        "matmul_n": matmul_n,
        "matmul_rows_tflops": curves,
        "matmul_rows_k": rows_k,
        "overlap": device == "cuda",
        "engine_dtype": engine_dtype,
        "cores": os.cpu_count() or 1,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m membound.bench.device_probe",
        description="Measure this machine's memory bandwidth, matmul rate, memory and cores "
        "for the planner (membound plan --gpu local).",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--output", metavar="FILE", help="write the JSON record here (else stdout)")
    p.add_argument("--copy-mib", type=int, default=None, help="copy size (CPU 256, CUDA 1024)")
    p.add_argument("--matmul-n", type=int, default=None, help="matrix side (CPU 1024, CUDA 8192)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the fastest counts")
    p.add_argument(
        "--rows",
        default=",".join(map(str, ROWS)),
        help="row counts of the CPU rows curve, comma-separated",
    )
    p.add_argument("--rows-k", type=int, default=ROWS_K,
                   help="inner and output size of the rows curve's weight")  # fmt: skip
    args = p.parse_args(argv)
    try:
        rows = tuple(int(r) for r in args.rows.split(",") if r.strip())
        if not rows or min(rows) < 1 or args.rows_k < 1:
            raise ValueError(f"--rows {args.rows!r}: give positive row counts, e.g. 1,16,128")
        record = probe(args.device, copy_mib=args.copy_mib, matmul_n=args.matmul_n,
                       repeats=args.repeats, rows=rows, rows_k=args.rows_k)  # fmt: skip
    except ValueError as e:
        print(f"device_probe: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(record, indent=2) + "\n"
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        tmp = f"{args.output}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
