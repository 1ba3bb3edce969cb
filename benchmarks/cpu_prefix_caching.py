"""CPU benchmark: prefix caching on vs off for requests sharing a long system prompt.

Workload (the KV-memory issue's): 64 requests that share a 1,024-token system prompt plus 64
unique tokens each, 64 output tokens (ignore_eos), all submitted at once, on a random
Llama-shaped checkpoint in fp32. Reports output throughput and time to first token (mean,
p50, p90) with prefix caching on and off, the ratios, and the prefix-cache hit rate.

    python benchmarks/cpu_prefix_caching.py --output-json benchmarks/results/cpu_prefix_caching.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from cpu_engine_vs_transformers import _git_commit, make_checkpoint

SHAPE: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}


def prompts(n: int, shared: int, unique: int, vocab: int) -> list[list[int]]:
    rng = random.Random(0)
    system = [rng.randrange(3, vocab) for _ in range(shared)]
    return [system + [rng.randrange(3, vocab) for _ in range(unique)] for _ in range(n)]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run(folder: Path, batch: list[list[int]], out_len: int, caching: bool) -> dict[str, Any]:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine
    from membound.sampling_params import SamplingParams

    eng = LLMEngine.from_engine_args(
        EngineArgs(model=str(folder), max_model_len=2048, enable_prefix_caching=caching,
                   dtype="float32")  # what the result records (auto is bf16 on AMX CPUs)
    )
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    t0 = time.perf_counter()
    start = time.monotonic()
    for p in batch:
        eng.add_request(eng.new_request_id(), p, params, arrival_time=start)
    ttft, n_out = [], 0
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                m = out.metrics
                assert m is not None and m.first_token_time is not None
                ttft.append(m.first_token_time - m.arrival_time)
                n_out += len(out.outputs[0].token_ids)
    elapsed = time.perf_counter() - t0
    stats = eng.stats()
    return {
        "prefix_caching": caching,
        "elapsed_s": elapsed,
        "output_tokens": n_out,
        "output_tokens_per_s": n_out / elapsed,
        "ttft_s_mean": statistics.fmean(ttft),
        "ttft_s_p50": pct(ttft, 0.5),
        "ttft_s_p90": pct(ttft, 0.9),
        "prefix_cache_hit_rate": stats.prefix_cache_hit_rate,
        "prompt_tokens": stats.prompt_tokens_total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--shared-len", type=int, default=1024)
    ap.add_argument("--unique-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    from membound.entrypoints.sysinfo import collect_info

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_params = make_checkpoint(folder, SHAPE)
        batch = prompts(args.num_prompts, args.shared_len, args.unique_len, SHAPE["vocab_size"])
        off = run(folder, batch, args.output_len, caching=False)
        print("off", json.dumps(off, indent=1), flush=True)
        on = run(folder, batch, args.output_len, caching=True)
        print("on", json.dumps(on, indent=1), flush=True)
    figures = {
        "ttft_mean_speedup": off["ttft_s_mean"] / on["ttft_s_mean"],
        "throughput_speedup": on["output_tokens_per_s"] / off["output_tokens_per_s"],
        "prefix_cache_hit_rate": on["prefix_cache_hit_rate"],
    }
    print(json.dumps(figures, indent=1))
    if args.output_json:
        report = {
            "benchmark": "cpu_prefix_caching",
            "commit": _git_commit(),
            "machine": collect_info(),
            "torch_threads": torch.get_num_threads(),
            "model": {"shape": SHAPE, "parameters": n_params, "dtype": "float32"},
            "config": vars(args),
            "results": {"off": off, "on": on},
            "figures": figures,
        }
        Path(args.output_json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
