"""CPU data plane: the CPU backend's kernels against the plain references, on this machine.

1. Paged decode attention (kernels/cpu_attention.py, bucketed by length) against
   ``paged_decode_attention_ref`` (padded to the longest sequence): a batch of decodes with
   lengths uniform in the given range, block tables shuffled over the cache. The bucket plan
   is built once per step in the engine and reused by every layer: timed separately.
2. Linear weight layout (kernels/cpu_linear.py): ``F.linear`` with the weight stored
   row-major (``[out, in]`` contiguous) and column-major (the same shape over a contiguous
   ``[in, out]``), for the shapes of the CPU benchmark model and Llama-3-8B, a few token
   counts. Reports achieved GB/s of weight streamed at 1 token (a matrix-vector product is
   bound by memory) and the row/col time ratio (> 1: column-major is faster).
3. bf16 linear (``--bf16``): ``F.linear`` on a plain bf16 weight against the oneDNN-prepacked
   weight (kernels/cpu_linear.py ``linear_prepacked``), SmolLM2-135M and TinyLlama-1.1B shapes.
4. Weight-only INT8 / INT4 (``--quant``, kernels/cpu_quant_linear.py): torch's packed CPU
   kernels against the prepacked bf16 GEMM, same shapes; GB/s of the bytes each streams.

    python benchmarks/kernels/bench_cpu_kernels.py --output-json benchmarks/results/cpu_kernels.json

Medians of repeated timings; the machine should be otherwise idle (2 shared cores vary 3x
under load).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import git_commit

from membound.kernels.cpu_attention import (
    decode_bytes_per_token,
    paged_decode_attention_cpu,
    plan_decode,
)
from membound.kernels.cpu_linear import linear_prepacked, prefers_column_major, prepack_weight
from membound.kernels.cpu_quant_linear import (
    int4_cpu_linear,
    int8_weight_only_linear,
    pack_int4_cpu,
)
from membound.kernels.paged_attention import paged_decode_attention_ref

SHAPES = [  # (out, in): the ~150M CPU benchmark model, then Llama-3-8B
    (1280, 768), (768, 768), (5120, 768), (768, 2560), (32000, 768),
    (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336),
]


def median_ms(fn: Callable[[], Any], reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def bench_decode(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    h, kvh, d, bs = args.heads, args.kv_heads, args.head_dim, 16
    for batch in args.batch:
        rng = random.Random(batch)
        lens = [rng.randint(*args.context) for _ in range(batch)]
        per_seq = [-(-n // bs) for n in lens]
        num_blocks = sum(per_seq) + 64
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(batch))
        width, tables, start = max(per_seq), [], 0
        for n in per_seq:
            tables.append(perm[start:start + n].tolist() + [0] * (width - n))
            start += n
        cache = torch.randn(2, num_blocks, bs, kvh, d)
        block_tables = torch.tensor(tables)
        seq_lens = torch.tensor(lens, dtype=torch.int32)
        q = torch.randn(batch, h, d)
        inputs = (q, cache, block_tables, seq_lens, d**-0.5)
        plan_args = (block_tables, seq_lens, bs, None, decode_bytes_per_token(cache))
        plan = plan_decode(*plan_args)
        ref = median_ms(lambda inputs=inputs: paged_decode_attention_ref(*inputs), args.reps)
        # as in the engine: the plan is built once per step and shared by every layer
        cpu = median_ms(lambda i=inputs, p=plan: paged_decode_attention_cpu(*i, plan=p), args.reps)
        plan_ms = median_ms(lambda a=plan_args: plan_decode(*a), args.reps)
        kv_bytes = 2 * sum(lens) * kvh * d * 4
        row = {"batch": batch, "mean_context": sum(lens) / batch, "ref_ms": ref, "cpu_ms": cpu,
               "plan_ms_once_per_step": plan_ms, "speedup": ref / cpu,
               "cpu_kv_gbs": kv_bytes / (cpu / 1e3) / 1e9}  # fmt: skip
        print("decode", json.dumps(row), flush=True)
        rows.append(row)
    return rows


def bench_linear(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for out_f, in_f in SHAPES:
        copies = max(2, int(64e6 // (out_f * in_f * 4)))  # cycle > the caches
        row_major = [torch.randn(out_f, in_f) for _ in range(copies)]
        col_major = [w.t().contiguous().t() for w in row_major]
        for tokens in args.tokens:
            x = torch.randn(tokens, in_f)
            reps = max(3, int(args.reps * 2e6 / (tokens * out_f * in_f)) + 3)
            def run(ws: list[torch.Tensor], x: torch.Tensor = x) -> list[torch.Tensor]:
                return [F.linear(x, w) for w in ws]

            t_row = median_ms(lambda: run(row_major), reps) / copies  # noqa: B023 (called here)
            t_col = median_ms(lambda: run(col_major), reps) / copies  # noqa: B023
            row = {"out": out_f, "in": in_f, "tokens": tokens, "row_major_ms": t_row,
                   "col_major_ms": t_col, "row_over_col": t_row / t_col,
                   "rule_picks_col_major": prefers_column_major(row_major[0])}  # fmt: skip
            if tokens == 1:
                size = out_f * in_f * 4
                row["row_major_gbs"] = size / (t_row / 1e3) / 1e9
                row["col_major_gbs"] = size / (t_col / 1e3) / 1e9
            print("linear", json.dumps(row), flush=True)
            rows.append(row)
    return rows


MODEL_SHAPES = [  # (out, in): SmolLM2-135M (qkv, o, gate_up, down, head), TinyLlama-1.1B
    (960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576),
    (2560, 2048), (11264, 2048), (2048, 5632), (32000, 2048),
]


def bench_bf16_linear(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for out_f, in_f in MODEL_SHAPES:
        w = torch.randn(out_f, in_f).bfloat16()
        packed = prepack_weight(w)
        for tokens in args.tokens:
            x = torch.randn(tokens, in_f).bfloat16()
            reps = max(3, int(args.reps * 2e6 / (tokens * out_f * in_f)) + 3)
            plain = median_ms(lambda x=x, w=w: F.linear(x, w), reps)
            pp = median_ms(lambda x=x, p=packed: linear_prepacked(x, p), reps)
            row = {"out": out_f, "in": in_f, "tokens": tokens, "f_linear_ms": plain,
                   "prepacked_ms": pp, "speedup": plain / pp,
                   "prepacked_gbs": out_f * in_f * 2 / (pp / 1e3) / 1e9}  # fmt: skip
            print("bf16_linear", json.dumps(row), flush=True)
            rows.append(row)
    return rows


def bench_quant_linear(args: argparse.Namespace) -> list[dict[str, Any]]:
    from membound.layers.quantization.int4_rtn import quantize_int4_rtn
    from membound.layers.quantization.int8 import quantize_int8

    rows = []
    for out_f, in_f in MODEL_SHAPES:
        w = torch.randn(out_f, in_f)
        packed_bf16 = prepack_weight(w.bfloat16())
        q8, s8 = quantize_int8(w)
        s8 = s8.reshape(-1).bfloat16()
        g = 64 if in_f % 64 == 0 else 32
        q4, s4, z4 = quantize_int4_rtn(w, g)
        p4, sz4 = pack_int4_cpu(q4.t(), s4.t(), z4.t())
        for tokens in args.tokens:
            x = torch.randn(tokens, in_f).bfloat16()
            reps = max(3, int(args.reps * 2e6 / (tokens * out_f * in_f)) + 3)
            bf = median_ms(lambda: linear_prepacked(x, packed_bf16), reps)  # noqa: B023
            i8 = median_ms(lambda: int8_weight_only_linear(x, q8, s8), reps)  # noqa: B023
            i4 = median_ms(lambda: int4_cpu_linear(x, p4, sz4, g), reps)  # noqa: B023
            n = out_f * in_f
            row = {"out": out_f, "in": in_f, "tokens": tokens, "group_size": g,
                   "bf16_prepacked_ms": bf, "int8_ms": i8, "int4_ms": i4,
                   "int8_speedup": bf / i8, "int4_speedup": bf / i4,
                   "int8_gbs": n / (i8 / 1e3) / 1e9, "int4_gbs": n / 2 / (i4 / 1e3) / 1e9}  # fmt: skip
            print("quant_linear", json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--context", type=int, nargs=2, default=[16, 768])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 512])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--output-json", default=None)
    p.add_argument("--only", nargs="+", default=["decode", "linear", "bf16", "quant"],
                   choices=["decode", "linear", "bf16", "quant"])
    args = p.parse_args()
    from membound.entrypoints.sysinfo import collect_info

    run = set(args.only)
    decode = bench_decode(args) if "decode" in run else []
    linear = bench_linear(args) if "linear" in run else []
    bf16 = bench_bf16_linear(args) if "bf16" in run else []
    quant = bench_quant_linear(args) if "quant" in run else []
    figures: dict[str, Any] = {}
    if decode:
        figures["decode_speedup_batch_max"] = max(decode, key=lambda r: r["batch"])["speedup"]
    if linear:
        one = [r for r in linear if r["tokens"] == 1]
        chosen = [r for r in one if r["rule_picks_col_major"]]
        figures["linear_1_token_speedup_where_rule_picks_col_major"] = (
            statistics.geometric_mean([r["row_over_col"] for r in chosen]) if chosen else None
        )
        figures["linear_1_token_row_over_col_where_rule_keeps_row_major"] = [
            round(r["row_over_col"], 3) for r in one if not r["rule_picks_col_major"]
        ]
    for name, rows, keys in (("bf16_prepacked", bf16, ["speedup"]),
                             ("quant", quant, ["int8_speedup", "int4_speedup"])):  # fmt: skip
        for tokens in args.tokens:
            for key in keys:
                vals = [r[key] for r in rows if r["tokens"] == tokens]
                if vals:
                    figures[f"{name}_{key}_geomean_{tokens}_tokens"] = statistics.geometric_mean(vals)
    report = {"benchmark": "cpu_kernels", "commit": git_commit(), "machine": collect_info(),
              "torch_threads": torch.get_num_threads(), "load": open("/proc/loadavg").read(),
              "config": vars(args), "figures": figures, "decode_attention": decode,
              "linear_layout": linear, "bf16_linear": bf16, "quant_linear": quant}  # fmt: skip
    print(json.dumps(figures, indent=1))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
