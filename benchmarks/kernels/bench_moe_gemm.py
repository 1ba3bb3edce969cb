"""MoE experts (two grouped GEMMs around SiLU-and-mul): achieved GB/s of expert weights and
TFLOP/s, Triton ``moe_gemm`` against the per-expert torch loop (``moe_gemm_ref``).

Mixtral-8x7B expert shape by default (8 experts, top-2, hidden 4096, inter 14336), bf16,
random routing. Small batches are memory-bound: bytes = the weights of the experts the batch
touches (+ activations); large batches compute-bound: FLOPs = 2 x 3 x hidden x inter per
(token, expert) pair.

    python benchmarks/kernels/bench_moe_gemm.py                      # tokens 1..4096
    python benchmarks/kernels/bench_moe_gemm.py --tokens 1 16 --experts 64 --top-k 8 \\
        --hidden 2048 --inter 1408                                    # Qwen-MoE-like
"""

from __future__ import annotations

import argparse

import torch
from common import GB, Report, copy_bandwidth_gbs, require_cuda, time_ms

from membound.kernels.contract import TORCH_OPS, TRITON_OPS
from membound.layers.moe import fused_experts, select_experts

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]


def run_one(args: argparse.Namespace, tokens: int, dev: torch.device) -> dict:
    e, h, i, dt = args.experts, args.hidden, args.inter, args.torch_dtype
    w13 = torch.randn(e, 2 * i, h, dtype=dt, device=dev) * 0.02
    w2 = torch.randn(e, h, i, dtype=dt, device=dev) * 0.02
    x = torch.randn(tokens, h, dtype=dt, device=dev)
    weights, ids = select_experts(torch.randn(tokens, e, device=dev), args.top_k, True)
    touched = int(torch.unique(ids).numel())
    elem = torch.empty((), dtype=dt).element_size()
    moved = touched * 3 * h * i * elem + 2 * tokens * h * elem
    flops = 2 * 3 * h * i * tokens * args.top_k
    row: dict = {"tokens": tokens, "experts_touched": touched, "bytes": moved, "flops": flops}
    for name, ops in (("triton", TRITON_OPS), ("torch", TORCH_OPS)):
        ms = time_ms(lambda ops=ops: fused_experts(x, w13, w2, weights, ids, ops))
        row[f"{name}_us"] = ms * 1e3
        row[f"{name}_gbs"] = moved / (ms / 1e3) / GB
        row[f"{name}_tflops"] = flops / (ms / 1e3) / 1e12
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=TOKENS)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--inter", type=int, default=14336)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args()
    args.torch_dtype = getattr(torch, args.dtype)
    dev = require_cuda()
    config = {k: v for k, v in vars(args).items() if k not in ("torch_dtype", "output")}
    report = Report("moe_gemm", config, args.output)
    copy_gbs = copy_bandwidth_gbs()
    report.log(f"measured copy bandwidth: {copy_gbs:.0f} GB/s")
    for tokens in args.tokens:
        row = run_one(args, tokens, dev)
        row["triton_fraction_of_copy"] = row["triton_gbs"] / copy_gbs
        report.row(row, f"tokens {tokens:5d} experts {row['experts_touched']:3d}: triton "
                        f"{row['triton_us']:9.1f} us {row['triton_gbs']:6.0f} GB/s "
                        f"{row['triton_tflops']:6.1f} TFLOP/s | torch loop {row['torch_us']:9.1f} us")  # fmt: skip
        torch.cuda.empty_cache()
    report.write({"copy_bandwidth_gbs": copy_gbs})


if __name__ == "__main__":
    with torch.inference_mode():
        main()
