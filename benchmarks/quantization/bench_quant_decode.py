"""Decode tokens/s at batch 1 and offline throughput for BF16, FP8 and INT4 (GPU; not yet run).

An 8B-shaped (Llama-3-8B) dummy model, quantized while "loading" its random weights
(``load_format="dummy"``, ``quantization=...``), so no checkpoint download is needed:

- decode: one request, 128 prompt tokens, the time per output token over ``--decode-steps``
  steps after warm-up; achieved weight bandwidth = weight bytes read per step / TPOT, against
  the measured copy bandwidth (a batch-1 step reads every layer weight and the LM head once,
  of the embedding only the looked-up row: common.weight_bytes_read_per_step);
- offline: ``--num-prompts`` requests of ``--input-len`` random tokens, ``--output-len`` each,
  all submitted at once; output tokens/s and total tokens/s.

Writes benchmarks/results/quant-decode-<device>.json and .log.

    PYTHONPATH=src python benchmarks/quantization/bench_quant_decode.py
    PYTHONPATH=src python benchmarks/quantization/bench_quant_decode.py --formats bf16 int4
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from common import (  # noqa: E402
    GB,
    Report,
    copy_bandwidth_gbs,
    require_cuda,
    weight_bytes_read_per_step,
)

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}
FORMATS = {"bf16": None, "fp8": "fp8", "int4": "int4"}


def make_engine(folder: Path, quantization: str | None, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine

    return LLMEngine.from_engine_args(EngineArgs(
        model=str(folder), load_format="dummy", quantization=quantization, dtype="bfloat16",
        max_model_len=max(args.input_len + args.output_len, 128 + args.decode_steps + 16) + 8,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization))


def decode_tpot(engine, steps: int) -> float:  # type: ignore[no-untyped-def]
    from membound.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=steps + 16, ignore_eos=True)
    engine.add_request("decode", list(range(1, 129)), params)
    for _ in range(8):  # prefill, warm-up (and CUDA graph capture, if any)
        engine.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    tpot = (time.perf_counter() - t0) / steps
    while engine.has_unfinished_requests():
        engine.step()
    return tpot


def offline(engine, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    from membound.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    for i in range(args.num_prompts):
        vocab = engine.config.model_config.vocab_size
        ids = torch.randint(1, vocab, (args.input_len,), generator=gen).tolist()
        engine.add_request(f"offline-{i}", ids, params)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out_tokens = args.num_prompts * args.output_len
    return {"elapsed_s": elapsed, "output_tokens_per_s": out_tokens / elapsed,
            "total_tokens_per_s": (out_tokens + args.num_prompts * args.input_len) / elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--decode-steps", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/)")
    args = p.parse_args()
    require_cuda()
    report = Report("quant-decode", {"model": "llama-3-8b-shaped dummy", **vars(args)},
                    args.output)
    copy_gbs = copy_bandwidth_gbs()
    report.log(f"measured copy bandwidth {copy_gbs:.0f} GB/s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(LLAMA3_8B))
        for fmt in args.formats:
            engine = make_engine(folder, FORMATS[fmt], args)
            wbytes = weight_bytes_read_per_step(engine, batch=1)
            tpot = decode_tpot(engine, args.decode_steps)
            thr = offline(engine, args)
            row = {"format": fmt, "weight_bytes": engine.info.weights_bytes,
                   "weight_bytes_read_per_step": wbytes, "tpot_ms": tpot * 1e3,
                   "decode_tokens_per_s": 1 / tpot,
                   "achieved_weight_bandwidth_gbs": wbytes / tpot / GB, **thr}  # fmt: skip
            report.row(row, f"{fmt:5s} reads {wbytes / 2**30:6.2f} GiB/step  batch-1 decode "
                       f"{1 / tpot:7.1f} tok/s ({tpot * 1e3:.2f} ms/token, "
                       f"{row['achieved_weight_bandwidth_gbs']:.0f} GB/s = "
                       f"{100 * row['achieved_weight_bandwidth_gbs'] / copy_gbs:.0f}% of copy)  "
                       f"offline {thr['output_tokens_per_s']:8.0f} output tok/s")
            del engine
            gc.collect()
            torch.cuda.empty_cache()
    rows = {r["format"]: r for r in report.doc["rows"]}
    base = rows.get("bf16")
    report.write({
        "copy_bandwidth_gbs": copy_gbs,
        "decode_speedup_vs_bf16": {f: r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
                                   for f, r in rows.items()} if base else None,
        "offline_speedup_vs_bf16": {f: r["output_tokens_per_s"] / base["output_tokens_per_s"]
                                    for f, r in rows.items()} if base else None,
    })


if __name__ == "__main__":
    main()
