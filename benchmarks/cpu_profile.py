"""Where a CPU engine step goes: cProfile and torch.profiler over membound's offline workload.

Runs the engine on the CPU peers' offline workload (``cpu_peers.py``: prompts 32-512 tokens,
outputs 32-256, greedy, ``ignore_eos``; ``--num-prompts`` of them, all submitted at once) and
on one batch-1 request, under cProfile (Python functions, by own time) and torch.profiler
(operators, by self CPU time). Writes the top entries of both as text.

    python benchmarks/cpu_profile.py /work/cache/smollm2-hf --dtype bfloat16 \\
        --output benchmarks/results/cpu_profile_bf16.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import time
from pathlib import Path

import torch


def workload(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(3, vocab) for _ in range(rng.randint(32, 512))],
             rng.randint(32, 256)) for _ in range(n)]  # fmt: skip


def run(
    engine: object, reqs: list[tuple[list[int], int]], max_steps: int | None = None
) -> tuple[float, int]:
    """Submit ``reqs``, step until done (or ``max_steps``: then ``drain`` the rest); returns
    (seconds, output tokens) of the timed part."""
    from membound.sampling_params import SamplingParams

    for prompt, n_out in reqs:
        engine.add_request(
            engine.new_request_id(),
            prompt,  # type: ignore[attr-defined]
            SamplingParams(temperature=0, max_tokens=n_out, ignore_eos=True),
        )
    t0, n_tokens, steps = time.perf_counter(), 0, 0
    while engine.has_unfinished_requests():  # type: ignore[attr-defined]
        if max_steps is not None and steps == max_steps:
            break
        for out in engine.step():  # type: ignore[attr-defined]
            n_tokens += len(out.outputs[0].token_ids) if out.finished else 0
        steps += 1
    return time.perf_counter() - t0, n_tokens


def drain(engine: object) -> None:
    while engine.has_unfinished_requests():  # type: ignore[attr-defined]
        engine.step()  # type: ignore[attr-defined]


def profile(
    name: str, engine: object, reqs: list[tuple[list[int], int]], top: int, profiler_steps: int
) -> str:
    prof = cProfile.Profile()
    prof.enable()
    elapsed, tokens = run(engine, reqs)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    head = (
        f"=== {name}: {len(reqs)} requests, {tokens} output tokens, {elapsed:.2f} s under "
        f"cProfile ({tokens / elapsed:.1f} tok/s)\n"
    )
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        elapsed2, _ = run(engine, reqs, max_steps=profiler_steps)  # the trace grows per op
    drain(engine)
    ops = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    head2 = f"=== {name}: torch.profiler over the first {profiler_steps} steps, {elapsed2:.2f} s\n"
    return head + text[text.find("   ncalls") :] + "\n" + head2 + ops + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--profiler-steps",
        type=int,
        default=40,
        help="engine steps traced by torch.profiler (its trace grows per op)",
    )
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_engine_args(
        EngineArgs(
            model=args.model, dtype=args.dtype, quantization=args.quantization, max_model_len=1024
        )
    )
    vocab = engine.config.model_config.vocab_size
    run(engine, workload(2, 99, vocab))  # warm-up
    text = (
        f"model {args.model} dtype {engine.config.dtype} quantization {args.quantization} "
        f"threads {torch.get_num_threads()}\n"
    )
    text += profile(
        "offline", engine, workload(args.num_prompts, 0, vocab), args.top, args.profiler_steps
    )
    text += profile(
        "batch 1 (prompt 128, 64 out)",
        engine,
        [(workload(1, 1, vocab)[0][0][:128], 64)],
        args.top,
        args.profiler_steps,
    )
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
