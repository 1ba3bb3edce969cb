"""Native CPU kernels (kernels/cpu_native.py) against the torch paths they replace.

For SmolLM2-135M shapes (hidden 576, MLP 1536, 9 query / 3 KV heads of 64), bf16, at decode
and prefill token counts: RMSNorm fused with the residual add, SiLU-and-mul, rotary (q and k),
paged decode attention (the CPU backend's bucketed torch version, kernels/cpu_attention.py,
against the native kernel reading the cache in place; lengths uniform in a range, block tables
shuffled over a cache larger than the batch), and paged prefill attention (the torch path's
query-tiled materialised scores against the native flash-style kernel on the CPU's matrix
units; whole prompts, and chunks after cached context).

    python benchmarks/kernels/bench_cpu_native.py --threads 1 \\
        --output-json benchmarks/results/cpu_native_kernels.json

Times are CPU seconds of this process (``time.process_time``) per call, medians of repeats:
with one thread they are robust to other processes on a shared machine, unlike wall time.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import cpu_ms_per_call, git_commit

from membound.kernels.activation import silu_and_mul_ref
from membound.kernels.cpu_attention import (
    decode_bytes_per_token,
    paged_decode_attention_cpu,
    plan_decode,
    prefill_attention_cpu,
)
from membound.kernels.cpu_native import build_native_cpu_kernels
from membound.kernels.rms_norm import fused_add_rms_norm_ref
from membound.kernels.rotary import rotate_ref

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, BLOCK = 576, 1536, 9, 3, 64, 16


def per_call_us(fn: Callable[[], Any], reps: int) -> float:
    return cpu_ms_per_call(fn, reps) * 1e3


def rotate_both(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    return rotate_ref(q, cos, sin), rotate_ref(k, cos, sin)


def elementwise_rows(native: Any, tokens: list[int], dtype: torch.dtype) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    w = torch.randn(HIDDEN, generator=g).to(dtype)
    for n in tokens:
        reps = max(5, 2000 // n)
        x, r = (torch.randn(n, HIDDEN, generator=g).to(dtype) for _ in range(2))
        gu = torch.randn(n, 2 * INTER, generator=g).to(dtype)
        qkv = torch.randn(n, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=g).to(dtype)
        q = qkv[:, : HEADS * HEAD_DIM].view(n, HEADS, HEAD_DIM)
        k = qkv[:, HEADS * HEAD_DIM : (HEADS + KV_HEADS) * HEAD_DIM].view(n, KV_HEADS, HEAD_DIM)
        angles = torch.rand(n, HEAD_DIM // 2, generator=g) * 6.28  # real rotations: the
        cos, sin = angles.cos(), angles.sin()  # in-place repeats keep their magnitude
        cases = {
            "fused_add_rms_norm": (partial(fused_add_rms_norm_ref, x, r, w, 1e-5),
                                   partial(native.rms_norm, x, r, w, 1e-5)),
            "silu_and_mul": (partial(silu_and_mul_ref, gu), partial(native.silu_and_mul, gu)),
            "rotary_q_k": (partial(rotate_both, q, k, cos, sin),
                           partial(native.rotary_embedding, q, k, cos, sin)),
        }  # fmt: skip
        for op, (ref, nat) in cases.items():
            t_ref, t_nat = per_call_us(ref, reps), per_call_us(nat, reps)
            row = {"op": op, "tokens": n, "torch_us": round(t_ref, 2),
                   "native_us": round(t_nat, 2), "speedup": round(t_ref / t_nat, 2)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def attention_row(op: str, case: dict, t_ref: float, t_nat: float, **figures: float) -> dict:
    """One printed result row: the case, both times (us), the speedup, then ``figures``."""
    row = {"op": op, **case, "torch_us": round(t_ref, 1), "native_us": round(t_nat, 1),
           "speedup": round(t_ref / t_nat, 2), **figures}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def attention_rows(native: Any, batches: list[tuple[int, int, int]], dtype: torch.dtype):
    rows = []
    for n, lo, hi in batches:
        g = torch.Generator().manual_seed(n + hi)
        lens = torch.randint(lo, hi + 1, (n,), generator=g)
        max_blocks = -(-int(lens.max()) // BLOCK)
        num_blocks = 4 * n * max_blocks
        cache = torch.randn(2, num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=g).to(dtype)
        tables = torch.randperm(num_blocks, generator=g)[: n * max_blocks].view(n, max_blocks)
        q = torch.randn(n, HEADS, HEAD_DIM, generator=g).to(dtype)
        out = torch.empty_like(q)
        scale = HEAD_DIM**-0.5
        plan = plan_decode(tables, lens, BLOCK, None, decode_bytes_per_token(cache))
        reps = max(5, 400 // n)
        t_ref = per_call_us(partial(paged_decode_attention_cpu, q, cache, tables, lens, scale,
                                    out=out, plan=plan), reps)  # fmt: skip
        t_nat = per_call_us(partial(native.decode_attention, q, cache, tables, lens, scale, 0,
                                    out), reps)  # fmt: skip
        kv_bytes = int(lens.sum()) * KV_HEADS * HEAD_DIM * cache.element_size() * 2
        rows.append(attention_row("decode_attention", {"seqs": n, "len_range": [lo, hi]},
                                  t_ref, t_nat, native_kv_gbs=round(kv_bytes / t_nat / 1e3, 2)))
    return rows


def prefill_rows(native: Any, batches: list[tuple[int, int, int]], dtype: torch.dtype):
    """(sequences, new tokens each, cached context each): torch path vs native, with the
    attention FLOPs per second the native kernel reaches (causal: the new tokens' keys)."""
    rows = []
    for n, q_len, context in batches:
        g = torch.Generator().manual_seed(n + q_len + context)
        total = q_len + context
        max_blocks = -(-total // BLOCK)
        num_blocks = 2 * n * max_blocks
        cache = torch.randn(2, num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=g).to(dtype)
        tables = torch.randperm(num_blocks, generator=g)[: n * max_blocks].view(n, max_blocks)
        q = torch.randn(n * q_len, HEADS, HEAD_DIM, generator=g).to(dtype)
        starts = torch.arange(n + 1) * q_len
        lens = torch.full((n,), total)
        out, scale, reps = torch.empty_like(q), HEAD_DIM**-0.5, max(3, 64 // n)
        t_ref = per_call_us(partial(prefill_attention_cpu, q, cache, tables, starts, lens, scale,
                                    out=out), reps)  # fmt: skip
        t_nat = per_call_us(partial(native.prefill_attention, q, cache, tables, starts, lens,
                                    scale, 0, out), reps)  # fmt: skip
        pairs = n * (q_len * context + q_len * (q_len + 1) / 2)  # (query, key) pairs seen
        flops = 4 * HEADS * HEAD_DIM * pairs
        case = {"seqs": n, "new_tokens": q_len, "context": context}
        rows.append(attention_row("prefill_attention", case, t_ref, t_nat,
                                  native_gflops=round(flops / t_nat / 1e3, 1)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    native = build_native_cpu_kernels()
    report = {
        "benchmark": "cpu_native_kernels", "commit": git_commit(), "threads": args.threads,
        "dtype": args.dtype, "torch": torch.__version__,
        "timing": "process CPU time per call, median of 5 repeats",
        "elementwise": elementwise_rows(native, [1, 16, 512, 2048], dtype),
        "decode_attention": attention_rows(
            native, [(1, 100, 200), (1, 900, 1000), (16, 60, 140), (16, 100, 700),
                     (64, 100, 500)], dtype),
        "prefill_attention": prefill_rows(
            native, [(1, 64, 0), (1, 512, 0), (8, 256, 0), (1, 2048, 0), (2, 512, 1024)], dtype)
        if native.prefill_supported(HEAD_DIM) else "not supported on this CPU",
    }  # fmt: skip
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
