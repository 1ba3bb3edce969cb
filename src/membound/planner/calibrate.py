"""Fit the roofline's efficiency factors to membound's own benchmark JSON.

A benchmark file is read through ``BenchmarkRecord`` (fields listed in docs/planner.md):

    {"device":  {"name": "NVIDIA H100 80GB HBM3"},
     "model":   {"name": "llama-3-8b", "config": {...HF config.json, optional...}},
     "config":  {"precision": "bf16", "kv_dtype": "bf16", "tp": 1,
                 "batch_size": 1, "input_len": 128, "output_len": 128},
     "figures": {"tpot_ms_mean": 6.4, "ttft_ms_mean": 14.0, "output_tokens_per_s": 155.0,
                 "achieved_weight_bandwidth_gbs": 2510.0, "avg_power_w": 480.0,
                 "energy_j_per_token": 3.1}}

Per file, for the GPU its device name matches:

    memory efficiency  = ideal memory-bound decode step / measured TPOT (median when
                         recorded), or else achieved_weight_bandwidth_gbs / table bandwidth
    compute efficiency = ideal compute-bound prefill of the batch / measured TTFT
    throughput runs    = the factor bounding their decode step, fitted so the predicted
                         output tokens/s (bench_model.py) equals the measured one
    power fraction     = measured average power / (TDP x GPUs)

Factors are averaged per GPU; GPUs without data keep the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from membound.planner.bench_record import BenchmarkRecord, read_benchmark, record_shape
from membound.planner.errors import PlannerError
from membound.planner.hardware import GPUSpec, HardwareTable
from membound.planner.model_cost import ModelCost, model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.roofline import Efficiency, decode_step, prefill

__all__ = ["BenchmarkRecord", "Calibration", "Fit", "calibrate", "fit_record", "read_benchmark"]


@dataclass(frozen=True)
class Calibration:
    """Efficiency factors per GPU name; ``default`` for GPUs without data."""

    default: Efficiency = field(default_factory=Efficiency)
    per_gpu: tuple[tuple[str, Efficiency], ...] = ()

    def for_gpu(self, name: str) -> Efficiency:
        return dict(self.per_gpu).get(name, self.default)

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": self.default.to_dict(),
            "per_gpu": {name: eff.to_dict() for name, eff in self.per_gpu},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibration:
        try:
            default = Efficiency(**raw.get("default", {}))
            per_gpu = tuple((n, Efficiency(**e)) for n, e in raw.get("per_gpu", {}).items())
        except TypeError as e:
            raise PlannerError(f"calibration file has an unknown field: {e}") from e
        return cls(default, per_gpu)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError) as e:
            raise PlannerError(f"calibration file {os.fspath(path)!r}: {e}") from e


@dataclass(frozen=True)
class Fit:
    """What one benchmark file says about its GPU."""

    path: str
    gpu: str | None
    memory: float | None = None
    compute: float | None = None
    power_fraction: float | None = None
    notes: tuple[str, ...] = ()


def _bounded(value: float, what: str, notes: list[str]) -> float | None:
    if value > 1.0:
        notes.append(f"{what} efficiency {value:.2f} > 1 is impossible; file ignored for it")
        return None
    return value


def _ratio(ideal_s: float, measured_s: float, what: str, notes: list[str]) -> float | None:
    """ideal / measured time as an efficiency, or None (with a note) when impossible."""
    if measured_s <= 0:
        notes.append(f"{what}: measured time is not above the communication time; ignored")
        return None
    return _bounded(ideal_s / measured_s, what, notes)


def fit_record(rec: BenchmarkRecord, table: HardwareTable) -> Fit:
    """Efficiency factors implied by one benchmark record."""
    gpu = table.match_device(rec.device_name)
    if gpu is None:
        return Fit(rec.path, None, notes=(f"device {rec.device_name!r} is not in the table",))
    notes: list[str] = []
    memory = compute = power = None
    shape = record_shape(rec)
    if shape is None and (rec.tpot_ms or rec.ttft_ms or rec.kind == "throughput"):
        notes.append(f"model {rec.model_name!r} unknown: latency figures not used")
    if shape is not None:
        try:
            memory, compute = _fit_figures(rec, gpu, shape, notes)
        except PlannerError as e:
            notes.append(f"latency figures not used: {e}")
    if memory is None and rec.achieved_weight_bandwidth_gbs and gpu.overlap:
        memory = _bounded(rec.achieved_weight_bandwidth_gbs / gpu.bandwidth_gbs, "memory", notes)
    if gpu.tdp_w:
        watts = rec.avg_power_w
        if watts is None and rec.energy_j_per_token and rec.output_tokens_per_s:
            watts = rec.energy_j_per_token * rec.output_tokens_per_s
        if watts is not None:
            power = _bounded(watts / (gpu.tdp_w * rec.tp), "power", notes)
    return Fit(rec.path, gpu.name, memory, compute, power, tuple(notes))


def _fit_figures(
    rec: BenchmarkRecord, gpu: GPUSpec, shape: ModelShape, notes: list[str]
) -> tuple[float | None, float | None]:
    """(memory, compute) efficiencies from TPOT and TTFT (latency runs, medians preferred),
    or from output tokens/s (throughput runs: the factor that bounds their decode step)."""
    cost = model_cost(shape, rec.precision, rec.kv_dtype, rec.tp)
    if rec.kind == "throughput":
        from membound.planner.bench_model import fit_throughput

        fitted = fit_throughput(rec, gpu, cost, Efficiency())
        if fitted is None:
            notes.append("throughput faster than the roofline allows; ignored")
            return None, None
        key, value = fitted
        return (value, None) if key == "memory" else (None, value)
    if not gpu.overlap:
        return _fit_no_overlap(rec, gpu, cost, notes)
    ideal = Efficiency.ideal()
    memory = compute = None
    if rec.tpot_ms:
        step = decode_step(cost, gpu, rec.batch_size, rec.input_len + rec.output_len / 2, ideal)
        if step.bound == "memory":
            measured = rec.tpot_ms / 1e3 - step.comm_s
            memory = _ratio(step.memory_s, measured, "memory", notes)
        else:
            notes.append("decode step is compute-bound: TPOT not used for memory efficiency")
    if rec.ttft_ms:
        pre = prefill(cost, gpu, rec.batch_size, rec.input_len, ideal, rec.max_num_batched_tokens)
        if pre.bound == "compute":
            measured = rec.ttft_ms / 1e3 - pre.comm_s
            compute = _ratio(pre.compute_s, measured, "compute", notes)
        else:
            notes.append("prefill is memory-bound: TTFT not used for compute efficiency")
    return memory, compute


def _fit_no_overlap(
    rec: BenchmarkRecord, gpu: GPUSpec, cost: ModelCost, notes: list[str]
) -> tuple[float | None, float | None]:
    """A device whose steps take compute + memory (a CPU): TPOT = m1/em + c1/ec and
    TTFT = m2/em + c2/ec, solved for both efficiencies (one figure alone: the other factor
    at its default)."""
    ideal, default = Efficiency.ideal(), Efficiency()
    step = decode_step(cost, gpu, rec.batch_size, rec.input_len + rec.output_len / 2, ideal)
    pre = prefill(cost, gpu, rec.batch_size, rec.input_len, ideal, rec.max_num_batched_tokens)
    t = rec.tpot_ms / 1e3 - step.comm_s if rec.tpot_ms else None
    f = rec.ttft_ms / 1e3 - pre.comm_s if rec.ttft_ms else None
    if t is not None and f is not None:
        det = step.memory_s * pre.compute_s - pre.memory_s * step.compute_s
        inv_m = (t * pre.compute_s - f * step.compute_s) / det if det else -1.0
        inv_c = (step.memory_s * f - pre.memory_s * t) / det if det else -1.0
        if inv_m > 0 and inv_c > 0 and inv_m >= 1:
            return 1 / inv_m, _bounded(1 / inv_c, "compute", notes)
        if inv_c > 0 and 1 / inv_m <= 1.25:  # measured ceilings: within noise of the copy
            notes.append(f"memory efficiency fitted at {1 / inv_m:.2f}: the measured "
                         "bandwidth is low (a busy machine?); held at 1")  # fmt: skip
            return 1.0, _ratio(pre.compute_s, f - pre.memory_s, "compute", notes)
        notes.append("TPOT and TTFT do not fit compute + memory with efficiencies in (0, 1]")
        return None, None
    if t is not None:
        rest = t - step.compute_s / default.compute
        return _ratio(step.memory_s, rest, "memory", notes), None
    if f is not None:
        rest = f - pre.memory_s / default.memory
        return None, _ratio(pre.compute_s, rest, "compute", notes)
    return None, None


def calibrate(
    records: list[BenchmarkRecord], table: HardwareTable, base: Efficiency | None = None
) -> tuple[Calibration, tuple[Fit, ...]]:
    """Average the per-file fits per GPU into a Calibration."""
    base = base or Efficiency()
    fits = tuple(fit_record(r, table) for r in records)
    per_gpu = []
    for name in dict.fromkeys(f.gpu for f in fits if f.gpu):
        mine = [f for f in fits if f.gpu == name]
        changes: dict[str, Any] = {}
        for key in ("memory", "compute", "power_fraction"):
            values = [getattr(f, key) for f in mine if getattr(f, key) is not None]
            if values:
                changes[key] = mean(values)
        if not changes:
            continue
        changes["power_measured"] = "power_fraction" in changes
        changes["source"] = f"calibrated from {len(mine)} benchmark file(s)"
        per_gpu.append((name, dataclasses.replace(base, **changes)))
    return Calibration(base, tuple(per_gpu)), fits
