"""Shared pieces of the kernel benchmarks: GPU timing, the device's measured copy bandwidth,
and the JSON + log every run writes under benchmarks/results/.

Result document (one per run)::

    {"schema": "membound.kernel-bench/1", "benchmark": "<name>", "created": "...Z",
     "command": "python benchmarks/kernels/...", "commit": "<sha>", "commit_dirty": bool,
     "device": {"name", "capability", "sm_count", "memory_bytes", "driver"},
     "versions": {"torch", "triton", "cuda", "python"},
     "config": {...}, "figures": {...}, "rows": [{...}, ...]}
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from membound.bench.provenance import source_commit

RESULTS = Path(__file__).resolve().parents[1] / "results"
GB = 1e9


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (the kernels' CPU path is the interpreter)")
    return torch.device("cuda")


def time_ms(fn: Callable[[], Any], warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn`` on the current stream, with the L2 cache flushed before
    each timed call (so KV and weights really come from HBM)."""
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def cpu_ms_per_call(fn: Callable[[], Any], reps: int, warmup: int = 3, repeats: int = 5) -> float:
    """Median CPU milliseconds of this process per call of ``fn`` (``time.process_time``:
    at one thread, robust to other processes on a shared machine, unlike wall time)."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(reps):
            fn()
        samples.append((time.process_time() - start) / reps * 1e3)
    return statistics.median(samples)


# the CPU GEMM benchmarks' weight shapes (out, in): SmolLM2-135M (qkv, gate_up, down, LM
# head) and TinyLlama-1.1B (qkv, gate_up, down); the gate/up ones also run with SiLU fused
CPU_GEMM_SHAPES = {"smollm2": [(960, 576), (3072, 576), (576, 1536), (49152, 576)],
                   "tinyllama": [(2560, 2048), (11264, 2048), (2048, 5632)]}  # fmt: skip
CPU_GATE_UP_SHAPES = {(3072, 576), (11264, 2048)}


def best_over_copies_us(fn: Callable[[int], Any], copies: int) -> float:
    """Best of 3 passes of wall microseconds per call of ``fn(i)``, i over ``copies`` weight
    copies (after one warm-up pass): each call streams another copy from memory."""
    import time

    for i in range(copies):
        fn(i)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(copies):
            fn(i)
        best = min(best, (time.perf_counter() - t) / copies)
    return best * 1e6


def copy_bandwidth_gbs(num_bytes: int = 2 * 1024**3) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second): the
    ceiling a memory-bound kernel is compared against, rather than the datasheet peak."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup=3, iters=10)
    return 2 * num_bytes / (ms / 1e3) / GB


def git_commit() -> str | None:
    """The source's commit (MEMBOUND_COMMIT, a COMMIT file, then git: bench/provenance.py)."""
    return source_commit()[0]


def weight_bytes_read_per_step(engine: Any, batch: int = 1) -> int:
    """Weight bytes one decode step reads: every layer and the LM head, but of the embedding
    table only the ``batch`` looked-up rows (counting the whole table flatters the achieved
    bandwidth by its size: ~7% at BF16 for Llama-3-8B, more once the layers are quantized).
    The byte counts are ``membound.bench.offline.model_bytes``'s."""
    from membound.bench.offline import model_bytes

    counts = model_bytes(engine)
    mc = engine.config.model_config
    row_bytes = mc.hidden_size * torch.empty((), dtype=getattr(torch, engine.info.dtype)).element_size()
    return counts.weight_bytes_read_per_step + batch * row_bytes


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def environment() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = source_commit()
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "commit": commit,
        "commit_dirty": dirty,
        "device": {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "driver": _driver(),
        },
        "versions": {
            "torch": torch.__version__,
            "triton": triton_version,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
    }


class Report:
    """Collects rows, echoes each as a log line, writes ``<name>-<device>.json`` and
    ``.log`` under benchmarks/results/ (or ``--output`` when given)."""

    def __init__(self, name: str, config: dict[str, Any], output: str | None = None) -> None:
        self.name = name
        self.doc: dict[str, Any] = {"schema": "membound.kernel-bench/1", "benchmark": name,
                                    **environment(), "config": config, "figures": {}, "rows": []}  # fmt: skip
        device = self.doc["device"]["name"].replace(" ", "-").lower()
        self.path = Path(output) if output else RESULTS / f"{name}-{device}.json"
        self.lines: list[str] = []
        self.log(f"{name} on {self.doc['device']['name']} (torch {torch.__version__}, "
                 f"triton {self.doc['versions']['triton']}, commit {self.doc['commit']})")  # fmt: skip

    def log(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def row(self, row: dict[str, Any], line: str) -> None:
        self.doc["rows"].append(row)
        self.log(line)

    def write(self, figures: dict[str, Any]) -> None:
        self.doc["figures"] = figures
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=2) + "\n")
        self.path.with_suffix(".log").write_text("\n".join(self.lines) + "\n")
        print(f"wrote {self.path} and {self.path.with_suffix('.log')}")
