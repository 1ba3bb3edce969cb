"""Prefill / extend attention over the paged KV cache: achieved TFLOP/s.

Llama-3-8B attention shape (32 query heads, 8 KV heads, head_dim 128), bf16, block size 16.
Two workloads: fresh prompts (batch x prompt length, about 16K tokens per call) and extend
chunks (a 2048-token chunk over a cached prefix, chunked prefill / prefix-cache hits).
FLOPs count the attended (query, key) pairs only: 4 * heads * head_dim per pair (QK^T and
PV), causal. Fresh prompts are also timed with torch's scaled_dot_product_attention
(is_causal, contiguous K/V: no paging) as a point of comparison.

    python benchmarks/kernels/bench_prefill_attention.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import Report, require_cuda, time_ms

from membound.kernels.prefill_attention import prefill_attention

FRESH = [(32, 512), (16, 1024), (8, 2048), (4, 4096), (2, 8192), (1, 16384)]  # (batch, len)
EXTEND = [(2048, 2048), (2048, 8192), (2048, 30720)]  # (chunk, cached context)


def attended_pairs(q_lens: list[int], ctx: list[int]) -> int:
    return sum(q * c + q * (q + 1) // 2 for q, c in zip(q_lens, ctx, strict=True))


def paged_inputs(args: argparse.Namespace, q_lens: list[int], ctx: list[int],
                 dev: torch.device) -> dict:  # fmt: skip
    bs, h, kvh, d, dt = args.block_size, args.heads, args.kv_heads, args.head_dim, args.torch_dtype
    seq_lens = [q + c for q, c in zip(q_lens, ctx, strict=True)]
    max_blocks = max(-(-s // bs) for s in seq_lens)
    num_blocks = len(q_lens) * max_blocks
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "query": torch.randn(sum(q_lens), h, d, dtype=dt, device=dev),  # [T, H, D]
        "kv_cache": torch.randn(2, num_blocks, bs, kvh, d, dtype=dt, device=dev),
        "block_tables": torch.randperm(num_blocks, device=dev).view(len(q_lens), max_blocks),
        "query_start_loc": qsl.to(dev),
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        "scale": d**-0.5,
        "max_query_len": max(q_lens),
    }


def sdpa_ms(args: argparse.Namespace, batch: int, length: int, dev: torch.device) -> float:
    h, kvh, d, dt = args.heads, args.kv_heads, args.head_dim, args.torch_dtype
    q = torch.randn(batch, h, length, d, dtype=dt, device=dev)
    k = torch.randn(batch, kvh, length, d, dtype=dt, device=dev)
    v = torch.randn_like(k)
    return time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                          enable_gqa=True))  # fmt: skip


def measure(report: Report, args: argparse.Namespace, kind: str, q_lens: list[int],
            ctx: list[int], dev: torch.device) -> float:  # fmt: skip
    inputs = paged_inputs(args, q_lens, ctx, dev)
    out = torch.empty_like(inputs["query"])
    ms = time_ms(lambda: prefill_attention(**inputs, out=out))
    flops = 4 * args.heads * args.head_dim * attended_pairs(q_lens, ctx)
    tflops = flops / (ms / 1e3) / 1e12
    row = {"kind": kind, "batch": len(q_lens), "q_len": q_lens[0], "context": ctx[0],
           "time_ms": ms, "flops": flops, "tflops": tflops}  # fmt: skip
    line = f"{kind:6s} batch {len(q_lens):3d} q_len {q_lens[0]:6d} ctx {ctx[0]:6d}: " \
           f"{ms:8.3f} ms {tflops:6.1f} TFLOP/s"
    if kind == "fresh":
        ref = sdpa_ms(args, len(q_lens), q_lens[0], dev)
        row["sdpa_time_ms"] = ref
        row["sdpa_tflops"] = flops / (ref / 1e3) / 1e12
        line += f"   (torch SDPA, unpaged: {row['sdpa_tflops']:6.1f})"
    report.row(row, line)
    return tflops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args()
    args.torch_dtype = getattr(torch, args.dtype)
    dev = require_cuda()
    config = {k: v for k, v in vars(args).items() if k not in ("torch_dtype", "output")}
    report = Report("prefill_attention", config, args.output)
    fresh, extend = [], []
    for b, n in FRESH:
        fresh.append(measure(report, args, "fresh", [n] * b, [0] * b, dev))
        torch.cuda.empty_cache()
    for q, c in EXTEND:
        extend.append(measure(report, args, "extend", [q], [c], dev))
        torch.cuda.empty_cache()
    report.write({"best_fresh_tflops": max(fresh), "best_extend_tflops": max(extend)})


if __name__ == "__main__":
    with torch.inference_mode():
        main()
