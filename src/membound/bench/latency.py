"""``membound bench latency``: one batch of B requests, timed step by step, in roofline units.

Each iteration submits ``batch_size`` fresh random prompts of ``input_len`` tokens asking for
``output_len`` tokens (greedy, ``ignore_eos``), then steps the engine:

* **TTFT** (per iteration) = from submission to the end of the step in which the last
  request of the batch got its first token: the prefill of the whole batch (several steps
  when it exceeds the token budget).
* **TPOT** (per step) = the time of each following step; every one decodes one token for
  each of the B requests.

Roofline figures, against the device's datasheet ceilings (planner table, matched by device
name; "no datasheet figure" on CPU) and ceilings measured here (``ceilings.py``):

* achieved bandwidth = (weight bytes read + KV bytes read) per decode step / TPOT, where the
  weights read are all parameters but the embedding table (only B rows of it are touched;
  a tied lm_head reads it whole) and the KV read is every sequence's context at that step;
* prefill TFLOP/s = (2 x linear params x B x input_len + 2 x lm_head params x B + attention
  4 x heads x head_dim x layers x sum of causal context lengths) / TTFT.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from typing import Any

from membound.bench import offline
from membound.bench.cost import cost_figures, resolve_price
from membound.bench.energy import EnergyMeter, EnergyReading, torch_device_nvml_ids
from membound.bench.results import build_result
from membound.bench.stats import flat_summary


@dataclass
class LatencyRun:
    batch_size: int
    input_len: int
    output_len: int
    ttft_s: list[float] = field(default_factory=list)  # per iteration
    e2e_s: list[float] = field(default_factory=list)  # per iteration
    tpot_s: list[float] = field(default_factory=list)  # per decode step
    tpot_context: list[int] = field(default_factory=list)  # context per sequence at that step
    prefix_cache_hit_rate: float | None = None
    num_preemptions: int = 0
    energy: EnergyReading | None = None

    @property
    def output_tokens(self) -> int:
        return self.batch_size * self.output_len * len(self.e2e_s)


def _submit(engine: Any, run: LatencyRun, rng: random.Random) -> None:
    from membound.sampling_params import SamplingParams

    vocab = engine.config.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=run.output_len, ignore_eos=True)
    for _ in range(run.batch_size):
        ids = [rng.randrange(min(10, vocab - 1), vocab) for _ in range(run.input_len)]
        engine.add_request(engine.new_request_id(), ids, params)


def _one_iteration(engine: Any, run: LatencyRun, rng: random.Random, record: bool) -> None:
    """Submit a batch and step it to the end; with ``record``, append its timings."""
    sync = offline.synchronizer(engine.config.device)
    sync()
    t0 = time.perf_counter()
    _submit(engine, run, rng)
    made, first_done, decode_steps = 0, None, 0
    ttft, tpot, ctx = None, [], []
    while engine.has_unfinished_requests():
        before = engine.stats().generation_tokens_total
        s0 = time.perf_counter()
        engine.step()
        sync()
        s1 = time.perf_counter()
        made += engine.stats().generation_tokens_total - before
        if first_done:
            decode_steps += 1
            tpot.append(s1 - s0)
            ctx.append(run.input_len + decode_steps)
        elif made >= run.batch_size:
            first_done, ttft = True, s1 - t0
    if record:
        run.ttft_s.append(ttft if ttft is not None else time.perf_counter() - t0)
        run.e2e_s.append(time.perf_counter() - t0)
        run.tpot_s.extend(tpot)
        run.tpot_context.extend(ctx)


def run_latency(
    engine: Any, batch_size: int, input_len: int, output_len: int, *,
    num_iters: int = 3, num_iters_warmup: int = 1, seed: int = 0, progress: bool = True,
) -> LatencyRun:  # fmt: skip
    """Warm up, then time ``num_iters`` iterations of one batch (see the module docstring)."""
    if min(batch_size, input_len, output_len, num_iters) < 1 or num_iters_warmup < 0:
        raise ValueError("--batch-size, --input-len, --output-len and --num-iters must be "
                         "positive and --num-iters-warmup not negative")  # fmt: skip
    max_seqs = engine.config.scheduler_config.max_num_seqs
    if batch_size > max_seqs:
        raise ValueError(f"--batch-size {batch_size} exceeds --max-num-seqs {max_seqs}: the "
                         "batch would not run together; raise --max-num-seqs")  # fmt: skip
    run = LatencyRun(batch_size, input_len, output_len)
    rng = random.Random(seed)
    for _ in range(num_iters_warmup):
        _one_iteration(engine, run, rng, record=False)
    start_stats = engine.stats()
    meter = EnergyMeter(torch_device_nvml_ids(engine.config.device)).start()
    with offline.progress_bar(num_iters, "latency iterations", not progress) as bar:
        for _ in range(num_iters):
            _one_iteration(engine, run, rng, record=True)
            bar.update(1)
    run.energy = meter.stop()
    end_stats = engine.stats()
    run.prefix_cache_hit_rate = offline.prefix_cache_hit_rate(start_stats, end_stats)
    run.num_preemptions = end_stats.num_preemptions - start_stats.num_preemptions
    return run


def kv_bytes_read(engine: Any, contexts: list[int], batch_size: int) -> float:
    """Mean KV bytes read per decode step: each sequence reads its context (capped by a
    sliding window) of K and V in every layer."""
    info = engine.info
    per_token = info.bytes_per_block / info.block_size  # K and V, every layer
    window = engine.config.model_config.sliding_window
    tokens = [min(c, window) if window else c for c in contexts]
    return batch_size * per_token * (sum(tokens) / len(tokens)) if tokens else 0.0


def prefill_flops(
    engine: Any, counts: offline.ModelBytes, batch_size: int, input_len: int
) -> float:
    mc = engine.config.model_config
    window = mc.sliding_window
    causal = sum(min(i, window) if window else i for i in range(1, input_len + 1))
    attention = 4 * mc.num_attention_heads * mc.head_dim * mc.num_hidden_layers * causal
    linear = 2 * counts.linear_params_per_token * input_len + 2 * counts.lm_head_params
    return batch_size * (linear + attention)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def roofline_figures(
    engine: Any, run: LatencyRun, counts: offline.ModelBytes, device: dict[str, Any],
    ceilings: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """Achieved GB/s and TFLOP/s beside datasheet and measured ceilings."""
    sheet = device.get("datasheet") or {}
    kv = kv_bytes_read(engine, run.tpot_context, run.batch_size)
    step_bytes = counts.weight_bytes_read_per_step + kv
    tpot = sum(run.tpot_s) / len(run.tpot_s) if run.tpot_s else None
    gbs = step_bytes / tpot / 1e9 if tpot else None
    flops = prefill_flops(engine, counts, run.batch_size, run.input_len)
    ttft = sum(run.ttft_s) / len(run.ttft_s)
    tflops = flops / ttft / 1e12
    precision, _ = offline.engine_precision(engine)
    compute = {"bf16": "dense_bf16_tflops", "fp16": "dense_bf16_tflops",
               "fp8": "dense_fp8_tflops", "int8": "dense_int8_tops"}.get(precision)  # fmt: skip
    peak = sheet.get(compute) if compute else None
    ceil = ceilings or {}
    return {
        "weight_bytes_read_per_step": counts.weight_bytes_read_per_step,
        "kv_bytes_read_per_step_mean": kv,
        "achieved_weight_bandwidth_gbs": gbs,
        "datasheet_bandwidth_gbs": sheet.get("bandwidth_gbs"),
        "bandwidth_fraction_of_datasheet": _ratio(gbs, sheet.get("bandwidth_gbs")),
        "measured_copy_gbs": ceil.get("copy_gbs"),
        "bandwidth_fraction_of_measured": _ratio(gbs, ceil.get("copy_gbs")),
        "prefill_flops": flops,
        "prefill_tflops": tflops,
        "datasheet_peak_tflops": peak,
        "prefill_fraction_of_peak": _ratio(tflops, peak),
        "measured_matmul_tflops": ceil.get("matmul_tflops"),
        "prefill_fraction_of_measured_matmul": _ratio(tflops, ceil.get("matmul_tflops")),
    }


def latency_figures(run: LatencyRun) -> dict[str, Any]:
    ms = 1e3
    figs: dict[str, Any] = {}
    figs.update(flat_summary("ttft_ms", [t * ms for t in run.ttft_s]))
    figs.update(flat_summary("tpot_ms", [t * ms for t in run.tpot_s]))
    figs.update(flat_summary("e2e_ms", [t * ms for t in run.e2e_s]))
    total = sum(run.e2e_s)
    figs["output_tokens_per_s"] = run.output_tokens / total if total else None
    tpot = figs["tpot_ms_mean"]
    figs["decode_tokens_per_s"] = run.batch_size / (tpot / ms) if tpot else None
    figs["output_tokens"] = run.output_tokens
    figs["num_iters"] = len(run.e2e_s)
    figs["prefix_cache_hit_rate"] = run.prefix_cache_hit_rate
    figs["num_preemptions"] = run.num_preemptions
    if run.energy is not None:
        figs.update(run.energy.figures(run.output_tokens))
    return figs


def main(args: argparse.Namespace) -> int:
    """Run ``bench latency`` from parsed arguments; prints, writes JSON and plot."""
    from membound.bench.ceilings import measure_ceilings
    from membound.engine.engine_args import torch_dtype

    engine = offline.create_engine(args)
    run = run_latency(
        engine,
        args.batch_size,
        args.input_len,
        args.output_len,
        num_iters=args.num_iters,
        num_iters_warmup=args.num_iters_warmup,
        seed=args.seed,
        progress=not args.disable_tqdm,
    )
    counts = offline.model_bytes(engine)
    device = offline.engine_device(engine)
    ceilings = None
    if not args.skip_ceilings:
        dtype = torch_dtype(engine.info.dtype)
        ceilings = measure_ceilings(engine.config.device, dtype).to_dict()
    figures = latency_figures(run)
    figures.update(roofline_figures(engine, run, counts, device, ceilings))
    price = resolve_price(args.price_per_gpu_hour, device["name"])
    figures.update(cost_figures(price, 1, figures["output_tokens_per_s"] or 0.0))
    config = offline.engine_config_section(engine, args)
    config.update({"batch_size": args.batch_size, "input_len": args.input_len,
                   "output_len": args.output_len, "num_iters": args.num_iters,
                   "num_iters_warmup": args.num_iters_warmup})  # fmt: skip
    if ceilings is not None:
        device = {**device, "measured": ceilings}
    doc = build_result(
        "latency", device=device, model=offline.model_section(engine, counts, args.model),
        config=config, figures=figures, energy=run.energy.to_dict() if run.energy else None,
        cost={"label": price.label}, notes=_notes(device, figures, run),
        samples={"ttft_ms": [t * 1e3 for t in run.ttft_s],
                 "tpot_ms": [t * 1e3 for t in run.tpot_s],
                 "e2e_ms": [t * 1e3 for t in run.e2e_s]},
    )  # fmt: skip
    print(format_report(doc))
    from membound.bench.cli import finish

    return finish(doc, args)


def _notes(device: dict[str, Any], figures: dict[str, Any], run: LatencyRun) -> list[str]:
    notes = []
    if not device.get("datasheet"):
        notes.append(f"no datasheet figure for {device['name']!r}: fractions of the datasheet "
                     "are null")  # fmt: skip
    elif figures["datasheet_peak_tflops"] is None:
        notes.append("no datasheet peak for this precision (fp32 has none in the planner table)")
    if run.num_preemptions:
        notes.append(f"{run.num_preemptions} preemption(s): the KV cache could not hold the "
                     "batch, so TTFT/TPOT include recomputation; give it more KV memory")  # fmt: skip
    if run.output_len == 1:
        notes.append("output_len 1: no decode step, so no TPOT or bandwidth figure")
    if run.energy is not None and not run.energy.measured:
        notes.append(f"energy {run.energy.label}")
    return notes


def _versus(f: dict[str, Any], ceiling: str, fraction: str, missing: str, digits: int = 1) -> str:
    """A ceiling and the achieved share of it: "3,350 (achieved 74.1 %)", or ``missing``."""
    from membound.bench.results import fmt

    if f[ceiling] is None:
        return missing
    share = f[fraction]
    return fmt(f[ceiling], digits) + (f" (achieved {share * 100:.1f} %)" if share else "")


def format_report(doc: dict[str, Any]) -> str:
    from membound.bench.results import fmt

    f, c = doc["figures"], doc["config"]

    def stat(name: str) -> str:
        return "  ".join(f"{k} {fmt(f[f'{name}_{k}'], 2)}" for k in ("mean", "p50", "p90", "p99"))

    no_peak = (
        "no peak for this precision" if doc["device"].get("datasheet") else "no datasheet figure"
    )
    rows = [
        ("TTFT (ms)", stat("ttft_ms")),
        ("TPOT (ms)", stat("tpot_ms")),
        ("end-to-end (ms)", stat("e2e_ms")),
        ("decode tokens/s", fmt(f["decode_tokens_per_s"])),
        ("achieved bandwidth (GB/s)", fmt(f["achieved_weight_bandwidth_gbs"], 3)),
        ("  datasheet (GB/s)", _versus(f, "datasheet_bandwidth_gbs",
                                       "bandwidth_fraction_of_datasheet", "no datasheet figure")),
        ("  measured copy (GB/s)", _versus(f, "measured_copy_gbs",
                                           "bandwidth_fraction_of_measured", "not measured")),
        ("prefill TFLOP/s", fmt(f["prefill_tflops"], 3)),
        ("  datasheet peak (TFLOP/s)", _versus(f, "datasheet_peak_tflops",
                                               "prefill_fraction_of_peak", no_peak)),
        ("  measured matmul (TFLOP/s)", _versus(f, "measured_matmul_tflops",
                                                "prefill_fraction_of_measured_matmul",
                                                "not measured", 3)),
        ("energy (J/output token)", fmt(f["energy_j_per_token"], 3)),
        ("$ / M output tokens", f"{fmt(f['cost_per_million_output_tokens'], 2)}"
                                f"  ({doc['cost']['label']})"),
    ]  # fmt: skip
    head = (f"=== bench latency: {doc['model']['name']} on {doc['device']['name']} "
            f"({c['precision']}, batch {c['batch_size']}, {c['input_len']} in / "
            f"{c['output_len']} out, {c['num_iters']} iterations) ===")  # fmt: skip
    return "\n".join([head, *(f"{k:<30}{v}" for k, v in rows)])
