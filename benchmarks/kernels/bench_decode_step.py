"""Decode step of a Llama-3-8B-shaped model (dummy weights, bf16) at batch 1, and the weight
bandwidth it achieves: a batch-1 decode step streams every layer weight and the LM head once,
and of the embedding table only the looked-up row, so bytes_read / step_time
(common.weight_bytes_read_per_step) is the figure to hold against the measured copy
bandwidth.

Reported, with CUDA graphs (the default) and eagerly (--enforce-eager path):
  - forward:   the model's decode forward alone (graph replay / eager call), GPU time
  - step:      LLMEngine.step() wall time (metadata, forward, logits, sampling, bookkeeping)

    python benchmarks/kernels/bench_decode_step.py [--context 512] [--steps 128]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    GB,
    Report,
    copy_bandwidth_gbs,
    require_cuda,
    time_ms,
    weight_bytes_read_per_step,
)

from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.sampling_params import SamplingParams

LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}


def make_engine(folder: Path, eager: bool, max_len: int) -> LLMEngine:
    args = EngineArgs(model=str(folder), load_format="dummy", dtype="bfloat16",
                      max_model_len=max_len, max_num_seqs=8, enforce_eager=eager,
                      cuda_graph_sizes=[1], kv_cache_memory_bytes=4 * 1024**3,
                      enable_prefix_caching=False, skip_tokenizer_init=True)  # fmt: skip
    return LLMEngine.from_engine_args(args)


def step_times_ms(engine: LLMEngine, context: int, steps: int) -> list[float]:
    """Wall time of each decode step of one request (the prefill step excluded)."""
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(1000, 100000, (context,), generator=gen).tolist()
    params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
    engine.add_request(engine.new_request_id(), prompt, params)
    engine.step()  # prefill (one chunk when context <= the token budget)
    times = []
    while engine.has_unfinished_requests():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return times[5:]  # settle


@torch.inference_mode()
def forward_ms(engine: LLMEngine, context: int) -> float:
    """GPU time of the decode forward alone: the batch-1 graph's replay, or an eager call on
    the same static inputs (a sequence of ``context`` tokens in blocks 0.., slot -1)."""
    worker = engine.executor.driver  # rank 0's worker: its runner and model
    runner = worker.runner
    graphs = runner.cuda_graphs
    if graphs is not None:
        return time_ms(graphs.graphs[1].replay, warmup=3, iters=20)
    from membound.worker.cuda_graph import CUDAGraphRunner

    bs = engine.info.block_size
    static = CUDAGraphRunner(worker.model, runner.kv_caches, [1], context + 1, bs, None,
                             worker.device)  # fmt: skip
    static.seq_lens[0] = context
    static.block_tables[0] = torch.arange(static.max_blocks, device=worker.device)
    return time_ms(lambda: static.forward_static(1), warmup=3, iters=20)


def measure(folder: Path, eager: bool, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(folder, eager, args.context + args.steps + 16)
    steps = step_times_ms(engine, args.context, args.steps)
    fwd = forward_ms(engine, args.context)
    weights = weight_bytes_read_per_step(engine, batch=1)
    kv_read = args.context * engine.config.model_config.kv_bytes_per_token(2)
    result = {
        "mode": "eager" if eager else "cuda_graph",
        "weights_bytes": engine.info.weights_bytes,
        "weight_bytes_read_per_step": weights,
        "kv_bytes_read": kv_read,
        "forward_ms": fwd,
        "step_ms_median": statistics.median(steps),
        "step_ms_p90": sorted(steps)[int(0.9 * len(steps))],
        "forward_weight_gbs": weights / (fwd / 1e3) / GB,
        "step_weight_gbs": weights / (statistics.median(steps) / 1e3) / GB,
    }
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=512, help="prompt tokens before decoding")
    p.add_argument("--steps", type=int, default=128, help="decode steps timed")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args()
    require_cuda()
    report = Report("decode_step_llama3_8b", {"model": LLAMA3_8B, "batch": 1, "dtype": "bfloat16",
                                              "context": args.context, "steps": args.steps},
                    args.output)  # fmt: skip
    copy_gbs = copy_bandwidth_gbs()
    report.log(f"measured copy bandwidth: {copy_gbs:.0f} GB/s")
    figures: dict[str, Any] = {"copy_bandwidth_gbs": copy_gbs}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(LLAMA3_8B))
        for eager in (False, True):
            r = measure(folder, eager, args)
            r["forward_fraction_of_copy"] = r["forward_weight_gbs"] / copy_gbs
            report.row(r, f"{r['mode']:10s}: forward {r['forward_ms']:7.3f} ms "
                          f"({r['forward_weight_gbs']:6.0f} GB/s of weights, "
                          f"{100 * r['forward_fraction_of_copy']:5.1f}% of copy); "
                          f"engine step {r['step_ms_median']:7.3f} ms median")  # fmt: skip
            figures[r["mode"]] = r
    report.write(figures)


if __name__ == "__main__":
    main()
