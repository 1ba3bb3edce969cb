"""Paged decode attention: achieved GB/s against the device's measured copy bandwidth.

Llama-3-8B attention shape (32 query heads, 8 KV heads, head_dim 128), bf16, block size 16,
every sequence at the same context, block tables shuffled over the cache (as after hours of
serving). Bytes moved per call = the K and V of every sequence (read once, thanks to GQA)
+ queries + outputs + block tables. Target (issue 5): >= 80% of copy bandwidth at long
context.

    python benchmarks/kernels/bench_decode_attention.py            # batch 1..256 x 1K..32K
    python benchmarks/kernels/bench_decode_attention.py --batch 1 8 --context 4096
"""

from __future__ import annotations

import argparse

import torch
from common import GB, Report, copy_bandwidth_gbs, require_cuda, time_ms

from membound.kernels.paged_attention import choose_num_splits, paged_decode_attention
from membound.kernels.triton_utils import num_sms

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
CONTEXTS = [1024, 2048, 4096, 8192, 16384, 32768]


def bytes_moved(batch: int, context: int, heads: int, kv_heads: int, head_dim: int,
                elem: int, max_blocks: int) -> int:  # fmt: skip
    kv = 2 * batch * context * kv_heads * head_dim * elem
    q_and_out = 2 * batch * heads * head_dim * elem
    return kv + q_and_out + batch * max_blocks * 8 + batch * 4


def run_one(args: argparse.Namespace, batch: int, context: int, dev: torch.device) -> dict | None:
    bs, h, kvh, d = args.block_size, args.heads, args.kv_heads, args.head_dim
    blocks_per_seq = -(-context // bs)
    num_blocks = batch * blocks_per_seq
    elem = torch.empty((), dtype=args.torch_dtype).element_size()
    cache_bytes = 2 * num_blocks * bs * kvh * d * elem
    if cache_bytes > 0.7 * torch.cuda.mem_get_info()[0]:
        return None
    cache = torch.randn(2, num_blocks, bs, kvh, d, dtype=args.torch_dtype, device=dev)
    tables = torch.randperm(num_blocks, device=dev).view(batch, blocks_per_seq)  # int64
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
    q = torch.randn(batch, h, d, dtype=args.torch_dtype, device=dev)
    out = torch.empty_like(q)
    ms = time_ms(lambda: paged_decode_attention(q, cache, tables, seq_lens, d**-0.5, out=out))
    moved = bytes_moved(batch, context, h, kvh, d, elem, blocks_per_seq)
    splits = choose_num_splits(batch, kvh, blocks_per_seq * bs, num_sms(dev))
    return {"batch": batch, "context": context, "num_splits": splits, "time_us": ms * 1e3,
            "bytes": moved, "gbs": moved / (ms / 1e3) / GB}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=BATCHES)
    p.add_argument("--context", type=int, nargs="+", default=CONTEXTS)
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
    report = Report("decode_attention", config, args.output)
    copy_gbs = copy_bandwidth_gbs()
    report.log(f"measured copy bandwidth: {copy_gbs:.0f} GB/s")
    best_long = 0.0
    for context in args.context:
        for batch in args.batch:
            row = run_one(args, batch, context, dev)
            torch.cuda.empty_cache()  # the previous cache is gone with run_one's frame
            if row is None:
                report.log(f"batch {batch:4d} context {context:6d}: skipped (KV cache does not fit)")
                continue
            row["fraction_of_copy"] = row["gbs"] / copy_gbs
            if context >= 16384:
                best_long = max(best_long, row["fraction_of_copy"])
            report.row(row, f"batch {batch:4d} context {context:6d} splits {row['num_splits']:2d}: "
                            f"{row['time_us']:9.1f} us {row['gbs']:7.0f} GB/s "
                            f"({100 * row['fraction_of_copy']:5.1f}% of copy)")  # fmt: skip
    report.write({"copy_bandwidth_gbs": copy_gbs,
                  "best_fraction_of_copy_at_16k_plus": best_long or None,
                  "target_fraction_at_long_context": 0.8})  # fmt: skip


if __name__ == "__main__":
    with torch.inference_mode():
        main()
