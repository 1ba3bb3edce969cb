"""The CPU backend's bf16 prefill attention in the engine: materialised float32 scores
(``cpu_attention._attend``, what ships) against torch's SDPA (``_attend_sdpa``, what ran
before), on SmolLM2 with real text.

1. Quality: greedy decodes in bf16 with each path against float32 (token-identical to
   transformers): the share of output positions equal to float32's, sequences identical.
2. Speed: prefill only (``max_tokens=1``) of ``--prefill-prompts`` prompts of
   ``--prefill-len`` tokens, CPU seconds (``time.process_time``: the machine is shared).

The SDPA run swaps ``cpu_attention._attend`` for ``_attend_sdpa`` for its duration (an A/B
switch of this benchmark only; the engine has no such knob). Both runs turn the native C++
kernels off (``MEMBOUND_CPU_NATIVE=0``): with them, bf16 prefill goes to the native kernel
and neither torch path would run (that kernel is measured by
``benchmarks/kernels/bench_cpu_native.py`` and ``cpu_native_quality.py``).

    OMP_NUM_THREADS=1 python benchmarks/cpu_prefill_attention_e2e.py /path/to/SmolLM2-135M \\
        --output-json benchmarks/results/cpu_prefill_attention_e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from cpu_native_quality import agreement  # greedy agreement with float32

from membound import LLM, SamplingParams
from membound.kernels import cpu_attention


def generate(model: str, dtype: str, sdpa: bool, prompts: list[list[int]], n: int
             ) -> tuple[list[list[int]], float]:  # fmt: skip
    """Greedy outputs and the CPU seconds of the timed ``generate`` (after a warm-up)."""
    shipped = cpu_attention._attend
    os.environ["MEMBOUND_CPU_NATIVE"] = "0"  # the torch paths this compares (docstring)
    if sdpa:
        cpu_attention._attend = cpu_attention._attend_sdpa
    try:
        llm = LLM(model, dtype=dtype, max_model_len=1024, seed=0)
        llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=2),
                     use_tqdm=False)  # fmt: skip
        sp = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        t = time.process_time()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        cpu_s = time.process_time() - t
        del llm
    finally:
        cpu_attention._attend = shipped
    return [list(o.outputs[0].token_ids) for o in outs], cpu_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--text", default=str(Path(__file__).parent / "data" / "eval_text.txt"))
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--prefill-prompts", type=int, default=24)
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(a.model)(Path(a.text).read_text())["input_ids"]
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    def cut(n: int, length: int) -> list[list[int]]:
        if n * length > len(ids):
            raise SystemExit(f"--text has {len(ids)} tokens, fewer than {n} x {length}")
        return [ids[i * length:(i + 1) * length] for i in range(n)]

    log(f"load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"{a.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    doc: dict[str, Any] = {"benchmark": "cpu_prefill_attention_e2e", "config": vars(a),
                           "quality": {}, "prefill_cpu_s": {"sdpa": [], "materialised": []}}  # fmt: skip
    prompts = cut(a.num_prompts, a.prompt_len)
    ref, _ = generate(a.model, "float32", False, prompts, a.output_len)
    for name, sdpa in (("sdpa", True), ("materialised", False)):
        got, _ = generate(a.model, "bfloat16", sdpa, prompts, a.output_len)
        doc["quality"][name] = q = agreement(ref, got)
        log(f"quality bf16 {name}: {json.dumps(q)} ({a.num_prompts} prompts x {a.prompt_len}, "
            f"{a.output_len} greedy tokens)")  # fmt: skip
    prompts = cut(a.prefill_prompts, a.prefill_len)
    for rep in range(a.reps):
        for name, sdpa in (("sdpa", True), ("materialised", False)):
            _, cpu_s = generate(a.model, "bfloat16", sdpa, prompts, 1)
            doc["prefill_cpu_s"][name].append(round(cpu_s, 3))
            log(f"prefill {a.prefill_prompts} x {a.prefill_len} bf16 round {rep} {name}: "
                f"{cpu_s:.2f} CPU s")  # fmt: skip
    best = {n: min(v) for n, v in doc["prefill_cpu_s"].items()}
    doc["prefill_speedup"] = round(best["sdpa"] / best["materialised"], 3)
    log(f"prefill speedup (best of {a.reps}): {doc['prefill_speedup']:.2f}x; load average after "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    if a.output_json:
        path = Path(a.output_json)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        path.with_suffix(".log").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
