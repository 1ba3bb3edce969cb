"""CPU prefill attention, bf16 (or ``--dtype float16``): torch's SDPA (the CPU flash
kernel) against materialised scores, one sequence at a time as ``kernels/cpu_attention.py``'s
``_attend`` runs it.

Candidates (query [q_len, H, D], key/value [kv_len, KVH, D], bf16/fp16 in and out):

- ``sdpa_gqa``: ``_attend_sdpa`` (SDPA with ``enable_gqa``): the float32 path, and the bf16
  path before materialised scores.
- ``sdpa_repeat``: SDPA with K/V repeated to the query heads.
- ``mat_f32``: q, K, V upcast to float32, S = q @ K^T per KV head (its G query heads stacked
  as rows), masked, softmax in place, @ V, cast back; the whole score matrix at once.
- ``mat_half``: the same with bf16 (fp16) GEMMs: half-precision scores, float32 softmax,
  half-precision P @ V.
- ``tiled_<MB>``: ``_attend_materialised`` (float32), query rows in tiles whose scores stay
  under <MB> (but of at least ``MIN_TILE_GEMM_ROWS`` GEMM rows), each tile reading only the
  keys it sees (causal end, window start).
- ``shipped``: ``_attend`` as the engine runs it (bf16/fp16: ``tiled_4mb``).

Sizes: q_len = kv_len in 32..2048 (a fresh prompt) and a chunk of 256 new tokens over 1024
(chunked prefill), SmolLM2-135M heads (9/3, D 64) and Llama-3-8B heads (32/8, D 128).
CPU time per call (``time.process_time``), median of repeats, ``--threads 1`` by default.

    OMP_NUM_THREADS=1 python benchmarks/kernels/bench_cpu_prefill_attention.py \\
        --output-json benchmarks/results/cpu_prefill_attention.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import git_commit

from membound.kernels.cpu_attention import (
    MIN_TILE_GEMM_ROWS,
    SCORE_TILE_BYTES,
    _attend,
    _attend_materialised,
    _attend_sdpa,
)

SHAPES = {"smollm2-135m": (9, 3, 64), "llama-3-8b": (32, 8, 128)}  # (H, KVH, D)
CASES = [(n, n) for n in (32, 128, 272, 512, 1024, 2048)]  # (q_len, kv_len): fresh prompts
CASES += [(256, 1024), (256, 4096), (64, 8192), (1, 2048)]  # chunks over cached context
UNTILED_MAX_BYTES = 160 << 20  # the untiled candidates are skipped above these score bytes

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, int | None], torch.Tensor]


def hidden_mask(q_len: int, kv_len: int) -> torch.Tensor:
    """[q_len, kv_len] bool, True = masked (the key is after the query)."""
    q_pos = torch.arange(kv_len - q_len, kv_len)[:, None]
    return torch.arange(kv_len)[None, :] > q_pos


def sdpa_repeat(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                window: int | None) -> torch.Tensor:  # fmt: skip
    group = q.shape[1] // k.shape[1]
    kr = k.transpose(0, 1).repeat_interleave(group, dim=0)
    vr = v.transpose(0, 1).repeat_interleave(group, dim=0)
    qt = q.transpose(0, 1)
    if q.shape[0] == k.shape[0]:
        o = F.scaled_dot_product_attention(qt, kr, vr, is_causal=True, scale=scale)
    else:
        mask = ~hidden_mask(q.shape[0], k.shape[0])
        o = F.scaled_dot_product_attention(qt, kr, vr, attn_mask=mask, scale=scale)
    return o.transpose(0, 1)


def materialised(dtype: torch.dtype) -> Attend:
    """The whole [KVH, G*q_len, kv_len] score matrix at once, GEMMs in ``dtype``."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               window: int | None) -> torch.Tensor:  # fmt: skip
        q_len, h, d = q.shape
        kv_len, kvh = k.shape[:2]
        g = h // kvh
        qs = (q.to(dtype) * scale).view(q_len, kvh, g, d).permute(1, 2, 0, 3)
        s = torch.bmm(qs.reshape(kvh, g * q_len, d), k.to(dtype).permute(1, 2, 0)).float()
        s.view(kvh, g, q_len, kv_len).masked_fill_(hidden_mask(q_len, kv_len), float("-inf"))
        torch.ops.aten._softmax.out(s, -1, False, out=s)
        o = torch.bmm(s.to(dtype), v.to(dtype).transpose(0, 1))
        return o.view(kvh, g, q_len, d).permute(2, 0, 1, 3).reshape(q_len, h, d).to(q.dtype)

    return attend


def tiled(tile_bytes: int) -> Attend:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               window: int | None) -> torch.Tensor:  # fmt: skip
        return _attend_materialised(q, k, v, scale, window, tile_bytes=tile_bytes)

    return attend


def candidates(dtype: torch.dtype) -> dict[str, Attend]:
    return {
        "sdpa_gqa": _attend_sdpa, "sdpa_repeat": sdpa_repeat,
        "mat_f32": materialised(torch.float32), "mat_half": materialised(dtype),
        "tiled_1mb": tiled(1 << 20), "tiled_4mb": tiled(4 << 20), "tiled_16mb": tiled(16 << 20),
        "shipped": _attend,
    }


def median_cpu_ms(fn: Callable[[], Any], budget_s: float) -> tuple[float, int]:
    """Median CPU milliseconds per call (process time: the machine is shared), repeats
    sized to ``budget_s``; also the repeat count."""
    t = time.process_time()
    fn()  # warm-up, and a first estimate
    first = time.process_time() - t
    reps = int(min(50, max(3, budget_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times) * 1e3, reps


def flops(h: int, d: int, q_len: int, kv_len: int) -> float:
    """Useful causal FLOPs: two GEMMs over the (query, key) pairs the mask keeps."""
    ctx = kv_len - q_len
    pairs = q_len * ctx + q_len * (q_len + 1) / 2
    return 4 * h * d * pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=0.4, help="CPU seconds per candidate/case")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--cases", nargs="+", default=[f"{q}:{kv}" for q, kv in CASES],
                   help="q_len:kv_len pairs")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    load = os.getloadavg()
    log(f"cpu prefill attention, {args.dtype}, {args.threads} thread(s), torch {torch.__version__}, "
        f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} "
        "CPUs (a shared machine: CPU time, not wall time)")  # fmt: skip
    rows = []
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        h, kvh, d = SHAPES[shape]
        for q_len, kv_len in (tuple(map(int, c.split(":"))) for c in args.cases):
            q = torch.randn(q_len, h, d, generator=gen).to(dtype)
            k, v = (torch.randn(kv_len, kvh, d, generator=gen).to(dtype) for _ in range(2))
            ref = _attend_sdpa(q.float(), k.float(), v.float(), d**-0.5, None)
            row: dict[str, Any] = {"shape": shape, "heads": h, "kv_heads": kvh, "head_dim": d,
                                   "q_len": q_len, "kv_len": kv_len}  # fmt: skip
            for name, fn in candidates(dtype).items():
                if name.startswith("mat_") and h * q_len * kv_len * 4 > UNTILED_MAX_BYTES:
                    row[name] = None
                    continue
                call = (q, k, v, d**-0.5, None)
                ms, reps = median_cpu_ms(lambda fn=fn, call=call: fn(*call), args.budget_s)
                err = (fn(q, k, v, d**-0.5, None).float() - ref).abs().max().item()
                row[name] = {"ms": round(ms, 4), "reps": reps, "max_abs_err_vs_fp32": err,
                             "gflops": round(flops(h, d, q_len, kv_len) / ms / 1e6, 2)}  # fmt: skip
            base = row["sdpa_gqa"]["ms"]
            timed = {n: r["ms"] for n, r in row.items() if isinstance(r, dict)}
            row["speedup_vs_sdpa"] = {n: round(base / ms, 3) for n, ms in timed.items()}
            rows.append(row)
            log(f"{shape:13s} q {q_len:5d} kv {kv_len:5d} | "
                + " ".join(f"{n} {ms:8.2f}" for n, ms in timed.items())
                + f" | ms, shipped x{base / timed['shipped']:.2f} vs sdpa_gqa")  # fmt: skip
    load = os.getloadavg()
    log(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    doc = {
        "schema": "membound.kernel-bench/1", "benchmark": "cpu_prefill_attention",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__,
        "config": {"threads": args.threads, "budget_s": args.budget_s, "dtype": args.dtype,
                   "timer": "time.process_time, median", "shipped_tile_bytes": SCORE_TILE_BYTES,
                   "shipped_min_tile_gemm_rows": MIN_TILE_GEMM_ROWS},  # fmt: skip
        "rows": rows,
    }
    if args.output_json:
        path = Path(args.output_json)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        path.with_suffix(".log").write_text("\n".join(lines) + "\n")
        print(f"wrote {path} and {path.with_suffix('.log')}")


if __name__ == "__main__":
    main()
