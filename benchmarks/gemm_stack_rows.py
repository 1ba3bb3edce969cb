"""SmolLM2-135M's GEMM stack on one CPU thread: from DRAM at 1, 16 and 128 rows, and the same
shapes' rate with the weight in cache. The evidence for the planner's CPU step model
(compute + memory, docs/planner.md); the output of the recorded runs is
benchmarks/results/planner_local_cpu/gemm_stack_rows.log (run at commit dc55ff5 as an
unformatted copy of this script; same shapes, sizes and timing)."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

ROWS = (1, 16, 128)
LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (3072, 576), (576, 1536)]


def stream_s(weights: list[torch.Tensor], m: int) -> float:
    """Seconds to multiply ``m`` rows through every weight (each read from DRAM)."""
    xs = [torch.randn(m, w.shape[1]) for w in weights]
    t0 = time.perf_counter()
    for x, w in zip(xs, weights, strict=True):
        F.linear(x, w)
    return time.perf_counter() - t0


def in_cache_gflops(w: torch.Tensor, m: int, reps: int = 20) -> float:
    x = torch.randn(m, w.shape[1])
    F.linear(x, w)
    t0 = time.perf_counter()
    for _ in range(reps):
        F.linear(x, w)
    return 2 * m * w.numel() * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    torch.set_num_threads(1)
    weights = [torch.randn(o, i) for _ in range(30) for o, i in LAYER]
    weights.append(torch.randn(49152, 576))  # tied lm_head
    flops_per_row = sum(2 * w.numel() for w in weights)
    cached = torch.randn(1024, 1024)
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(3):
        for m in ROWS:
            samples.setdefault(("s", m), []).append(stream_s(weights, m))
            samples.setdefault(("c", m), []).append(in_cache_gflops(cached, m))
    print("load", os.getloadavg())
    for m in ROWS:
        t = sorted(samples[("s", m)])[1]
        rate = sorted(samples[("c", m)])[1]
        print(m, f"stream {t * 1e3:.0f} ms", f"incache GFLOP/s {rate:.1f}",
              f"compute-only {m * flops_per_row / rate / 1e6:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
