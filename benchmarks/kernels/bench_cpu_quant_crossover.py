"""Where torch's weight-only CPU kernels stop paying (kernels/cpu_quant_linear.py): the packed
INT8 / INT4 kernel against dequantize-to-bf16 + GEMM (what the layer does above its row
threshold), SmolLM2's gate_up (3072 x 576) and down (576 x 1536) shapes, 8-256 rows.

    python benchmarks/kernels/bench_cpu_quant_crossover.py --threads 1 \\
        --output-json benchmarks/results/cpu_quant_crossover.json

Times are process CPU ms per call (robust to other processes at one thread), medians of 5.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_ms_per_call, git_commit

from membound.kernels import cpu_quant_linear as q

SHAPES = [(3072, 576), (576, 1536)]
ROWS = [8, 16, 32, 64, 96, 128, 256]
GROUP = 64


def ms(fn: Callable[[], object], reps: int = 10) -> float:
    return cpu_ms_per_call(fn, reps, warmup=2)


def int8_dequant_gemm(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w.to(torch.bfloat16) * s[:, None])


def int4_dequant_gemm(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    return F.linear(x, q.dequantize_int4_cpu(packed, sz, GROUP))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for n, k in SHAPES:
        w8 = torch.randint(-127, 128, (n, k)).to(torch.int8)
        s8 = (torch.rand(n) + 0.01).to(torch.bfloat16)
        q4 = torch.randint(0, 16, (k, n))
        packed, sz = q.pack_int4_cpu(q4, torch.rand(k // GROUP, n) + 0.01,
                                     torch.randint(0, 16, (k // GROUP, n)).to(torch.uint8))  # fmt: skip
        for m in ROWS:
            x = torch.randn(m, k).to(torch.bfloat16)
            row = {"shape": [n, k], "rows": m}
            calls = {
                "int8_kernel_ms": partial(torch.ops.aten._weight_int8pack_mm, x, w8, s8),
                "int8_dequant_gemm_ms": partial(int8_dequant_gemm, x, w8, s8),
                "int4_kernel_ms": partial(torch.ops.aten._weight_int4pack_mm_for_cpu, x, packed,
                                          GROUP, sz),
                "int4_dequant_gemm_ms": partial(int4_dequant_gemm, x, packed, sz),
            }  # fmt: skip
            row.update({key: ms(fn) for key, fn in calls.items()})
            print(json.dumps({k2: round(v, 3) if isinstance(v, float) else v
                              for k2, v in row.items()}), flush=True)  # fmt: skip
            rows.append(row)
    if a.output_json:
        Path(a.output_json).write_text(json.dumps(
            {"benchmark": "cpu_quant_crossover", "commit": git_commit(), "threads": a.threads,
             "rows": rows}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
