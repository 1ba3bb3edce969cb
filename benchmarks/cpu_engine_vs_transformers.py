"""CPU benchmark: membound's engine against transformers' batched generate().

Workload (the engine-core issue's): a ~150M-parameter Llama-shaped random checkpoint in fp32
(``--shape 150m``; ``--shape 40m`` is a ~40M-parameter one, where per-step host overhead
weighs most); 64 requests with prompt lengths uniform in 16..512 and output lengths uniform
in 16..256 (ignore_eos), all submitted at once. Reports output tokens/s for both and their
ratio, the same at batch 1, and the KV memory efficiency at peak (tokens stored / slots
allocated).

transformers runs the batch as its users do: left-padded to the longest prompt, one
generate() call with max_new_tokens = the longest requested output. Its "useful" tokens/s
counts only the tokens each request asked for; its raw rate counts every generated token.

    python benchmarks/cpu_engine_vs_transformers.py --output-json benchmarks/results/cpu_engine_vs_transformers.json
    python benchmarks/cpu_engine_vs_transformers.py --shape 40m --output-json benchmarks/results/cpu_engine_vs_transformers_40m.json
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SHAPE_150M: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 2560,
    "num_hidden_layers": 14,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
SHAPE_40M: dict[str, Any] = {
    **SHAPE_150M,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}
SHAPES = {"150m": SHAPE_150M, "40m": SHAPE_40M}


def make_checkpoint(folder: Path, shape: dict[str, Any]) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in shape.items() if k != "architectures"},
                      eos_token_id=2, bos_token_id=1, initializer_range=0.02)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def workload(n: int, seed: int, in_range: tuple[int, int], out_range: tuple[int, int],
             vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        plen = rng.randint(*in_range)
        reqs.append(([rng.randrange(3, vocab) for _ in range(plen)], rng.randint(*out_range)))
    return reqs


def run_membound(folder: Path, reqs: list[tuple[list[int], int]], max_len: int) -> dict[str, Any]:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine
    from membound.sampling_params import SamplingParams

    engine = LLMEngine.from_engine_args(
        EngineArgs(model=str(folder), max_model_len=max_len, dtype="float32"))
    t0 = time.perf_counter()
    for prompt, n_out in reqs:
        engine.add_request(engine.new_request_id(), prompt,
                           SamplingParams(temperature=0, max_tokens=n_out, ignore_eos=True))
    n_tokens, peak_alloc, stored_at_peak, steps = 0, 0, 0, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                n_tokens += len(out.outputs[0].token_ids)
        steps += 1
        alloc = engine.kv_manager.num_slots_allocated()
        if alloc > peak_alloc:
            peak_alloc = alloc
            stored_at_peak = sum(r.num_computed_tokens for r in engine.scheduler.running)
    elapsed = time.perf_counter() - t0
    return {
        "elapsed_s": elapsed,
        "output_tokens": n_tokens,
        "output_tokens_per_s": n_tokens / elapsed,
        "steps": steps,
        "kv_peak_slots_allocated": peak_alloc,
        "kv_tokens_stored_at_peak": stored_at_peak,
        "kv_memory_efficiency_at_peak": stored_at_peak / peak_alloc if peak_alloc else None,
        "preemptions": engine.scheduler.num_preemptions,
    }


@torch.inference_mode()
def run_transformers(folder: Path, reqs: list[tuple[list[int], int]]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    longest = max(len(p) for p, _ in reqs)
    max_new = max(n for _, n in reqs)
    ids = torch.zeros(len(reqs), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, _) in enumerate(reqs):  # left padding
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                         min_new_tokens=max_new, do_sample=False)
    elapsed = time.perf_counter() - t0
    useful = sum(n for _, n in reqs)
    generated = (out.shape[1] - longest) * len(reqs)
    return {
        "elapsed_s": elapsed,
        "output_tokens": useful,
        "output_tokens_per_s": useful / elapsed,
        "generated_tokens_incl_unrequested": generated,
        "raw_generated_tokens_per_s": generated / elapsed,
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="150m")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, nargs=2, default=[16, 512])
    ap.add_argument("--output-len", type=int, nargs=2, default=[16, 256])
    ap.add_argument("--batch1-input-len", type=int, default=128)
    ap.add_argument("--batch1-output-len", type=int, default=128)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="shrink the model for a quick smoke run (e.g. 0.25)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from membound.entrypoints.sysinfo import collect_info

    shape = dict(SHAPES[args.shape])
    if args.scale != 1.0:
        shape["num_hidden_layers"] = max(1, int(shape["num_hidden_layers"] * args.scale))
    max_len = args.input_len[1] + args.output_len[1] + 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = make_checkpoint(folder, shape)
        reqs = workload(args.num_prompts, 0, tuple(args.input_len), tuple(args.output_len),
                        shape["vocab_size"])
        one = workload(1, 1, (args.batch1_input_len,) * 2, (args.batch1_output_len,) * 2,
                       shape["vocab_size"])
        results: dict[str, Any] = {}
        for name, runner in (("membound", lambda r: run_membound(folder, r, max_len)),
                             ("transformers", lambda r: run_transformers(folder, r))):
            results[name] = {"batch": runner(reqs), "batch1": runner(one)}
            print(name, json.dumps(results[name], indent=1), flush=True)
    m, t = results["membound"], results["transformers"]
    figures = {
        "batch_speedup_vs_transformers": m["batch"]["output_tokens_per_s"]
        / t["batch"]["output_tokens_per_s"],
        "batch1_speedup_vs_transformers": m["batch1"]["output_tokens_per_s"]
        / t["batch1"]["output_tokens_per_s"],
        "kv_memory_efficiency_at_peak": m["batch"]["kv_memory_efficiency_at_peak"],
    }
    report = {
        "benchmark": "cpu_engine_vs_transformers",
        "commit": _git_commit(),
        "machine": collect_info(),
        "torch_threads": torch.get_num_threads(),
        "model": {"shape": shape, "parameters": params, "dtype": "float32"},
        "config": vars(args),
        "results": results,
        "figures": figures,
    }
    print(json.dumps(figures, indent=1))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
