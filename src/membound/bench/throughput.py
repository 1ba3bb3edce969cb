"""``membound bench throughput``: offline throughput of the engine, all requests at once.

Every request is submitted before the clock starts (as vLLM's throughput benchmark does);
the engine steps until all have finished. Reported: requests/s, total (prompt + output)
tokens/s, output tokens/s and output tokens/s per GPU (output tokens / elapsed / GPUs),
with measured energy (NVML) and cost per million output tokens. Requests use
``ignore_eos`` and greedy sampling, so each produces exactly its output length.

Each step's batch (sequences running) and output tokens/s are recorded, which draws
throughput against batch size from a single run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from membound.bench import offline
from membound.bench.cost import cost_figures, resolve_price
from membound.bench.energy import EnergyMeter, EnergyReading, torch_device_nvml_ids
from membound.bench.results import build_result
from membound.bench.stats import flat_summary


@dataclass
class ThroughputRun:
    elapsed_s: float
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    num_steps: int
    num_preemptions: int
    prefix_cache_hit_rate: float | None = None
    energy: EnergyReading | None = None
    e2e_ms: list[float] = field(default_factory=list)  # per request, from submission
    ttft_ms: list[float] = field(default_factory=list)  # per request, queueing included
    step_batch: list[int] = field(default_factory=list)  # sequences running in each step
    step_tokens_per_s: list[float] = field(default_factory=list)

    def figures(self, num_gpus: int = 1) -> dict[str, Any]:
        t = max(self.elapsed_s, 1e-12)
        out_tps = self.output_tokens / t
        figs: dict[str, Any] = {
            "elapsed_s": self.elapsed_s,
            "num_requests": self.num_requests,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "requests_per_s": self.num_requests / t,
            "total_tokens_per_s": (self.prompt_tokens + self.output_tokens) / t,
            "output_tokens_per_s": out_tps,
            "output_tokens_per_s_per_gpu": out_tps / num_gpus,
            "num_gpus": num_gpus,
            "num_steps": self.num_steps,
            "max_batch": max(self.step_batch, default=0),
            "num_preemptions": self.num_preemptions,
            "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
        }
        figs.update(flat_summary("e2e_ms", self.e2e_ms))
        if self.energy is not None:
            figs.update(self.energy.figures(self.output_tokens))
        return figs


def _warm_up(engine: Any) -> None:
    """One short request first, so kernels compile outside the clock. Its prompt shares no
    prefix with the workload's random ones (no prefix-cache help)."""
    from membound.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    token = min(10, engine.config.model_config.vocab_size - 1)
    engine.add_request(engine.new_request_id(), [token] * 16, params)
    while engine.has_unfinished_requests():
        engine.step()


def run_throughput(
    engine: Any, prompts: list[list[int]], output_lens: list[int], *,
    progress: bool = True, warmup: bool = True,
) -> ThroughputRun:  # fmt: skip
    """Submit every request, then step the engine until all have finished."""
    from membound.sampling_params import SamplingParams

    if warmup:
        _warm_up(engine)
    sync = offline.synchronizer(engine.config.device)
    start_stats = engine.stats()
    meter = EnergyMeter(torch_device_nvml_ids(engine.config.device)).start()
    sync()
    t0 = time.monotonic()
    for ids, n_out in zip(prompts, output_lens, strict=True):
        params = SamplingParams(temperature=0.0, max_tokens=n_out, ignore_eos=True)
        engine.add_request(engine.new_request_id(), ids, params, arrival_time=t0)
    run = ThroughputRun(0.0, len(prompts), sum(map(len, prompts)), 0, 0, 0)
    with offline.progress_bar(len(prompts), "throughput", not progress) as bar:
        while engine.has_unfinished_requests():
            before = engine.stats().generation_tokens_total
            s0 = time.monotonic()
            outs = engine.step()
            s1 = time.monotonic()
            after = engine.stats()
            finished = [o for o in outs if o.finished]
            # sequences in this step: still running after it, plus those it finished
            run.step_batch.append(after.num_running + len(finished))
            made = after.generation_tokens_total - before
            run.step_tokens_per_s.append(made / max(s1 - s0, 1e-12))
            run.num_steps += 1
            for out in finished:
                _record(run, out, t0)
                bar.update(1)
    sync()
    run.elapsed_s = time.monotonic() - t0
    run.energy = meter.stop()
    end_stats = engine.stats()
    run.num_preemptions = end_stats.num_preemptions - start_stats.num_preemptions
    run.prefix_cache_hit_rate = offline.prefix_cache_hit_rate(start_stats, end_stats)
    return run


def _record(run: ThroughputRun, out: Any, t0: float) -> None:
    run.output_tokens += sum(len(c.token_ids) for c in out.outputs)
    m = out.metrics
    if m is not None and m.finished_time is not None:
        run.e2e_ms.append((m.finished_time - t0) * 1e3)
    if m is not None and m.first_token_time is not None:
        run.ttft_ms.append((m.first_token_time - t0) * 1e3)


def _requests(engine: Any, args: argparse.Namespace) -> tuple[list[list[int]], list[int]]:
    from membound.bench.datasets import load_dataset, random_requests, token_id_prompts

    if args.dataset:
        reqs = load_dataset(args.dataset, args.num_prompts, tokenizer=engine.tokenizer,
                            output_len=args.output_len)  # fmt: skip
    else:
        reqs = random_requests(
            args.num_prompts,
            args.input_len,
            args.output_len or 128,
            engine.config.model_config.vocab_size,
            seed=args.seed,
            range_ratio=args.random_range_ratio,
        )
    return token_id_prompts(reqs, engine.tokenizer), [r.output_len for r in reqs]


def main(args: argparse.Namespace) -> int:
    """Run ``bench throughput`` from parsed arguments; prints, writes JSON and plot."""
    engine = offline.create_engine(args)
    prompts, output_lens = _requests(engine, args)
    run = run_throughput(engine, prompts, output_lens, progress=not args.disable_tqdm)
    counts = offline.model_bytes(engine)
    device = offline.engine_device(engine)
    price = resolve_price(args.price_per_gpu_hour, device["name"])
    figures = run.figures(num_gpus=1)
    figures.update(cost_figures(price, 1, figures["output_tokens_per_s"]))
    config = offline.engine_config_section(engine, args)
    config.update({
        "batch_size": figures["max_batch"], "num_prompts": len(prompts),
        "input_len": round(sum(map(len, prompts)) / len(prompts)),
        "output_len": round(sum(output_lens) / len(output_lens)),
        "dataset": args.dataset or "random", "random_range_ratio": args.random_range_ratio,
    })  # fmt: skip
    doc = build_result(
        "throughput", device=device, model=offline.model_section(engine, counts, args.model),
        config=config, figures=figures, energy=run.energy.to_dict(),
        cost={"label": price.label}, notes=_notes(run, device),
        samples={"e2e_ms": run.e2e_ms, "ttft_ms": run.ttft_ms, "step_batch": run.step_batch,
                 "step_tokens_per_s": run.step_tokens_per_s},
    )  # fmt: skip
    print(format_report(doc))
    from membound.bench.cli import finish

    return finish(doc, args)


def _notes(run: ThroughputRun, device: dict[str, Any]) -> list[str]:
    notes = ["every request submitted at once; ttft_ms samples include queueing"]
    if not run.energy.measured:
        notes.append(f"energy {run.energy.label}")
    if device["type"] == "cpu":
        notes.append("CPU run: figures describe this machine, not a GPU")
    return notes


def format_report(doc: dict[str, Any]) -> str:
    from membound.bench.results import fmt

    f, c = doc["figures"], doc["config"]
    lines = [
        f"=== bench throughput: {doc['model']['name']} on {doc['device']['name']} "
        f"({c['precision']}, {c['num_prompts']} prompts, ~{c['input_len']} in / "
        f"~{c['output_len']} out) ===",
        f"{'elapsed (s)':<34}{fmt(f['elapsed_s'], 2)}",
        f"{'requests/s':<34}{fmt(f['requests_per_s'], 2)}",
        f"{'total tokens/s':<34}{fmt(f['total_tokens_per_s'])}",
        f"{'output tokens/s':<34}{fmt(f['output_tokens_per_s'])}",
        f"{'output tokens/s per GPU':<34}{fmt(f['output_tokens_per_s_per_gpu'])}",
        f"{'largest batch (sequences)':<34}{f['max_batch']}",
        f"{'energy (J/output token)':<34}{fmt(f['energy_j_per_token'], 3)}",
        f"{'mean power (W)':<34}{fmt(f['avg_power_w'])}",
        f"{'$ / M output tokens':<34}{fmt(f['cost_per_million_output_tokens'], 2)}",
        f"{'output tokens / $':<34}{fmt(f['output_tokens_per_dollar'])}",
        f"{'price':<34}{doc['cost']['label']}",
        f"{'energy':<34}{doc['energy']['label']}",
    ]
    return "\n".join(lines)
