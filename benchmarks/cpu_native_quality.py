"""Does the native CPU path change what the model says? Greedy decodes of SmolLM2 in bf16
with the native kernels on and off (``MEMBOUND_CPU_NATIVE``), each against float32 (the
references, token-identical to transformers), on prompts cut from real text.

    python benchmarks/cpu_native_quality.py /path/to/SmolLM2-135M-Instruct \\
        --output-json benchmarks/results/cpu_native_quality_smollm2.json

Reports, per bf16 variant: the share of output positions equal to float32's, and the mean
number of tokens before the first difference (greedy decoding diverges for good after one
flipped token, so the first is the informative one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from membound import LLM, SamplingParams


def decode(model: str, dtype: str, native: bool, prompts: list[list[int]], n: int):
    os.environ["MEMBOUND_CPU_NATIVE"] = "1" if native else "0"
    llm = LLM(model, dtype=dtype, max_model_len=1024, seed=0)
    sp = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    del llm
    return [list(o.outputs[0].token_ids) for o in outs]


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    equal = sum(a == b for r, g in zip(ref, got, strict=True) for a, b in zip(r, g, strict=True))
    total = sum(len(r) for r in ref)
    first = []
    for r, g in zip(ref, got, strict=True):
        k = next((i for i, (a, b) in enumerate(zip(r, g, strict=True)) if a != b), len(r))
        first.append(k)
    return {"positions_equal": round(equal / total, 4),
            "mean_tokens_before_first_difference": statistics.mean(first),
            "sequences_identical": sum(k == len(r) for k, r in zip(first, ref, strict=True))}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--text", default=str(Path(__file__).parent / "data" / "eval_text.txt"))
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(a.model)(Path(a.text).read_text())["input_ids"]
    step = max(1, (len(ids) - a.prompt_len) // a.num_prompts)
    prompts = [ids[i * step : i * step + a.prompt_len] for i in range(a.num_prompts)]
    ref = decode(a.model, "float32", False, prompts, a.output_len)
    report = {"benchmark": "cpu_native_quality", "model": a.model, "threads": a.threads,
              "num_prompts": a.num_prompts, "prompt_len": a.prompt_len,
              "output_len": a.output_len, "reference": "float32 (torch kernels)"}  # fmt: skip
    for native in (True, False):
        got = decode(a.model, "bfloat16", native, prompts, a.output_len)
        key = f"bf16 native={'on' if native else 'off'} vs float32"
        report[key] = agreement(ref, got)
        print(key, json.dumps(report[key]), flush=True)
    if a.output_json:
        Path(a.output_json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
