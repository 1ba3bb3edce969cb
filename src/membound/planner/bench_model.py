"""What a ``membound bench`` run should measure, predicted by the roofline.

``plan`` predicts a steady closed loop; a benchmark measures something more specific, so
checking the planner against one needs the same shape of run:

* ``bench latency`` (batch B, I in / O out): TTFT = the prefill of the whole batch (in
  chunks of ``max_num_batched_tokens``); TPOT = one decode step of B sequences at the
  mean context ``I + O/2``; output tokens/s = ``B O / (TTFT + (O-1) TPOT)``.
* ``bench throughput`` (N requests, at most B running): waves of B requests (the last one
  smaller), each a prefill then ``O-1`` decode steps; output tokens/s = ``N O / elapsed``.

``membound plan compare RESULT.json...`` prints these beside the measured figures, and
``plan calibrate`` fits efficiencies so that they agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from membound.planner.bench_record import BenchmarkRecord, record_shape
from membound.planner.errors import PlannerError
from membound.planner.hardware import GPUSpec, HardwareTable
from membound.planner.model_cost import ModelCost, model_cost
from membound.planner.roofline import Efficiency, StepTime, decode_step, prefill

if TYPE_CHECKING:
    from membound.planner.calibrate import Calibration


@dataclass(frozen=True)
class RunPrediction:
    """Predicted figures of one benchmark run (seconds; tokens/s)."""

    ttft_s: float
    tpot_s: float
    output_tokens_per_s: float
    tpot_bound: str  # what governs the decode step
    ttft_bound: str


def _wave_s(cost: ModelCost, gpu: GPUSpec, rec: BenchmarkRecord, batch: int,
            eff: Efficiency) -> tuple[StepTime, StepTime, float]:  # fmt: skip
    pre = prefill(cost, gpu, batch, rec.input_len, eff, rec.max_num_batched_tokens)
    step = decode_step(cost, gpu, batch, rec.input_len + rec.output_len / 2, eff)
    return pre, step, pre.total_s + (rec.output_len - 1) * step.total_s


def predict_run(
    rec: BenchmarkRecord, gpu: GPUSpec, cost: ModelCost, eff: Efficiency
) -> RunPrediction:
    """The figures ``rec``'s kind of run should measure on ``gpu`` at efficiencies ``eff``."""
    batch = max(1, rec.batch_size)
    pre, step, wave = _wave_s(cost, gpu, rec, batch, eff)
    if rec.kind == "throughput" and rec.num_prompts:
        full, rest = divmod(rec.num_prompts, batch)
        elapsed = full * wave + (_wave_s(cost, gpu, rec, rest, eff)[2] if rest else 0.0)
        tokens = rec.num_prompts * rec.output_len
    else:
        elapsed, tokens = wave, batch * rec.output_len
    return RunPrediction(pre.total_s, step.total_s, tokens / elapsed, step.bound, pre.bound)


@dataclass(frozen=True)
class Comparison:
    """Predicted and measured figures of one benchmark file."""

    path: str
    gpu: str | None
    kind: str
    batch_size: int
    input_len: int
    output_len: int
    precision: str
    tp: int
    efficiency_source: str
    rows: tuple[tuple[str, float, float], ...]  # (figure, predicted, measured)
    notes: tuple[str, ...] = ()


def compare_record(
    rec: BenchmarkRecord, table: HardwareTable, calibration: Calibration
) -> Comparison:
    """The planner's prediction of ``rec``'s run next to what it measured."""
    base = dict(path=rec.path, kind=rec.kind, batch_size=rec.batch_size,
                input_len=rec.input_len, output_len=rec.output_len, precision=rec.precision,
                tp=rec.tp)  # fmt: skip
    gpu = table.match_device(rec.device_name)
    if gpu is None:
        note = f"device {rec.device_name!r} is not in the table (measure it: --gpu local)"
        return Comparison(gpu=None, efficiency_source="", rows=(), notes=(note,), **base)
    shape = record_shape(rec)
    if shape is None:
        note = f"model {rec.model_name!r} unknown: give model.config in the JSON"
        return Comparison(gpu=gpu.name, efficiency_source="", rows=(), notes=(note,), **base)
    eff = calibration.for_gpu(gpu.name)
    try:
        pred = predict_run(rec, gpu, model_cost(shape, rec.precision, rec.kv_dtype, rec.tp), eff)
    except PlannerError as e:
        return Comparison(gpu=gpu.name, efficiency_source=eff.source, rows=(),
                          notes=(str(e),), **base)  # fmt: skip
    rows = []
    if rec.ttft_ms:
        rows.append(("ttft_ms", pred.ttft_s * 1e3, rec.ttft_ms))
    if rec.tpot_ms:
        rows.append(("tpot_ms", pred.tpot_s * 1e3, rec.tpot_ms))
    if rec.output_tokens_per_s:
        rows.append(("output_tokens_per_s", pred.output_tokens_per_s, rec.output_tokens_per_s))
    notes = (f"decode step {pred.tpot_bound}-bound, prefill {pred.ttft_bound}-bound",)
    return Comparison(gpu=gpu.name, efficiency_source=eff.source, rows=tuple(rows),
                      notes=notes, **base)  # fmt: skip


def fit_throughput(
    rec: BenchmarkRecord, gpu: GPUSpec, cost: ModelCost, base: Efficiency
) -> tuple[str, float] | None:
    """The efficiency (``memory`` or ``compute``, whichever bounds the decode step) that
    makes the predicted output tokens/s of a throughput run equal the measured one; None
    when no value in (0, 1] does."""
    measured = rec.output_tokens_per_s
    if not measured:
        return None
    ideal = Efficiency.ideal()
    key = predict_run(rec, gpu, cost, ideal).tpot_bound

    def rate(value: float) -> float:
        eff = dataclasses.replace(base, **{key: value})
        return predict_run(rec, gpu, cost, eff).output_tokens_per_s

    if rate(1.0) < measured:
        return None
    lo, hi = 1e-6, 1.0
    for _ in range(60):  # rate grows with the efficiency: bisect
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if rate(mid) < measured else (lo, mid)
    return key, hi
