"""GGUF quality: a file held quantized in memory against the same file loaded dense.

The quantized load keeps int4 blocks exact (Q4_0/Q4_1/Q4_K) and requantizes the other block
types per row to int8 (the token embedding shared with a tied head, Q8_0/Q5/Q6_K linears),
which is lossy; the dense load (``load_format="gguf_dequantized"``) holds every tensor
dequantized at the dtype. For each dtype this reports, over the same text:

- ``membound eval compare``'s figures (entrypoints/eval.py: sliding windows): mean KL
  divergence per token, top-1 agreement, perplexity dense -> quantized;
- greedy agreement through the engine (KV cache, decode kernels): chat prompts, ``--new-tokens``
  greedy tokens each, the fraction of positions equal and of prompts fully equal.

``--requantize Q8_0,Q5_0`` adds rows for the file's 2-D tensors re-encoded in those types
(benchmarks/gguf_requantize.py; at ``--requantize-dtypes``), whose linears take the int8 path.

    OMP_NUM_THREADS=1 python benchmarks/gguf_quality.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --requantize Q8_0,Q5_1 --output-json benchmarks/results/gguf/smollm2_q4_1_quantized_vs_dense.json \
        --output-log benchmarks/results/gguf/smollm2_q4_1_quantized_vs_dense.log
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from gguf_requantize import requantize

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "src/membound/assets/default_model/heldout.txt"
QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers greater than 10.",
    "How do I reverse a list in Python?",
    "What is the boiling point of water in Fahrenheit?",
    "Translate 'good morning' into Spanish and German.",
    "Give me one tip for sleeping better.",
)


def load(path: str, dtype: str, load_format: str, window: int) -> Any:
    from membound.engine.engine_args import EngineArgs, torch_dtype
    from membound.kernels.contract import select_kernel_ops
    from membound.worker.weight_loader import load_model

    cfg = EngineArgs(model=path, dtype=dtype, load_format=load_format).create_engine_config()
    device = torch.device(cfg.device)
    return load_model(cfg.model_config, cfg.model, dtype=torch_dtype(cfg.dtype), device=device,
                      max_positions=window, ops=select_kernel_ops(device))  # fmt: skip


def perplexity_compare(path: str, dtype: str, ids: list[int], window: int) -> dict[str, Any]:
    from membound.entrypoints.eval import compare

    dense = load(path, dtype, "gguf_dequantized", window)
    quantized = load(path, dtype, "auto", window)
    result = compare(dense, quantized, ids, window, window // 2, torch.device("cpu"), "gguf")
    return asdict(result)


def greedy(path: str, dtype: str, load_format: str, new_tokens: int) -> list[list[int]]:
    from membound import LLM, SamplingParams

    llm = LLM(path, dtype=dtype, load_format=load_format, max_model_len=512, num_kv_blocks=128)
    tok = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tok.encode_chat([{"role": "user", "content": q}])}
               for q in QUESTIONS]  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def greedy_agreement(path: str, dtype: str, new_tokens: int) -> dict[str, Any]:
    dense = greedy(path, dtype, "gguf_dequantized", new_tokens)
    quantized = greedy(path, dtype, "auto", new_tokens)
    same = sum(a == b for d, q in zip(dense, quantized) for a, b in zip(d, q))
    total = sum(len(d) for d in dense)
    prefix = []
    for d, q in zip(dense, quantized):
        n = next((i for i, (a, b) in enumerate(zip(d, q)) if a != b), min(len(d), len(q)))
        prefix.append(n)
    return {
        "prompts": len(dense),
        "new_tokens": new_tokens,
        "positions_equal": same / total,
        "prompts_fully_equal": sum(d == q for d, q in zip(dense, quantized)) / len(dense),
        "mean_common_prefix": sum(prefix) / len(prefix),
        "common_prefix_per_prompt": prefix,
    }


def main() -> int:
    from membound.bench.provenance import source_commit
    from membound.engine.tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--dataset", default=str(DATASET))
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--requantize", default="", help="e.g. Q8_0,Q5_1 (see the docstring)")
    ap.add_argument("--requantize-dtypes", default="float32")
    ap.add_argument("--output-json", required=True)
    ap.add_argument("--output-log", required=True)
    args = ap.parse_args()

    text = Path(args.dataset).read_text(encoding="utf-8")
    ids = Tokenizer.from_pretrained(args.gguf).encode(text)[: args.max_tokens]
    runs = [(args.gguf, "as shipped", d) for d in args.dtypes.split(",")]
    scratch = tempfile.TemporaryDirectory()
    for kind in filter(None, args.requantize.split(",")):
        path = str(Path(scratch.name) / f"{kind}.gguf")
        requantize(args.gguf, path, kind)
        runs += [(path, f"re-encoded {kind}", d) for d in args.requantize_dtypes.split(",")]
    rows = []
    for path, file, dtype in runs:
        start = time.perf_counter()
        row = {"file": file, "dtype": dtype, **perplexity_compare(path, dtype, ids, args.window)}
        row["greedy"] = greedy_agreement(path, dtype, args.new_tokens)
        row["perplexity_change"] = row["perplexity_quantized"] / row["perplexity_float"] - 1
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    scratch.cleanup()
    commit, dirty = source_commit()
    result = {
        "benchmark": "gguf_quality",
        "gguf": Path(args.gguf).name,
        "reference": "the same file, load_format='gguf_dequantized' (every tensor dense)",
        "dataset": str(Path(args.dataset).resolve().relative_to(ROOT)),
        "rows": rows,
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    lines = [
        f"# {result['gguf']}: held quantized in memory vs {result['reference']}",
        f"# text: {result['dataset']} (first {args.max_tokens} tokens), window {args.window}, "
        f"stride {args.window // 2}; greedy: {len(QUESTIONS)} chat prompts x "
        f"{args.new_tokens} tokens through the engine",
        f"# commit {commit}{' (dirty)' if dirty else ''}; torch {torch.__version__}; CPU "
        "(shared 2-core machine, OMP_NUM_THREADS=1)",
        f"# command: {result['command']}",
    ]
    for r in rows:
        g = r["greedy"]
        lines.append(
            f"{r['file']:>18}, {r['dtype']:>8}: {r['num_tokens']} tokens, KL {r['kl_divergence']:.6f} nats/token, "
            f"top-1 agreement {100 * r['top1_agreement']:.2f}%, perplexity "
            f"{r['perplexity_float']:.4f} -> {r['perplexity_quantized']:.4f} "
            f"({100 * r['perplexity_change']:+.3f}%); greedy positions equal "
            f"{100 * g['positions_equal']:.1f}%, prompts fully equal "
            f"{100 * g['prompts_fully_equal']:.0f}%, common prefix {g['common_prefix_per_prompt']}"
        )
    out = "\n".join(lines) + "\n"
    print(out, end="")
    Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Path(args.output_log).write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
