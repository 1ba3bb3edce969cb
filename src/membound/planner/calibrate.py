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

    memory efficiency  = achieved_weight_bandwidth_gbs / datasheet bandwidth, or else
                         ideal memory-bound decode step / measured TPOT
    compute efficiency = ideal compute-bound prefill of the batch / measured TTFT
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

from membound.planner.errors import PlannerError
from membound.planner.hardware import GPUSpec, HardwareTable
from membound.planner.model_cost import model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.presets import load_model
from membound.planner.roofline import Efficiency, decode_step, prefill


@dataclass(frozen=True)
class BenchmarkRecord:
    """The fields the planner reads from one membound benchmark JSON file."""

    path: str
    device_name: str
    model_name: str | None
    model_config: dict[str, Any] | None
    precision: str = "bf16"
    kv_dtype: str = "bf16"
    tp: int = 1
    batch_size: int = 1
    input_len: int = 128
    output_len: int = 128
    tpot_ms_mean: float | None = None
    ttft_ms_mean: float | None = None
    output_tokens_per_s: float | None = None
    achieved_weight_bandwidth_gbs: float | None = None
    avg_power_w: float | None = None
    energy_j_per_token: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: str = "<dict>") -> BenchmarkRecord:
        device, model = raw.get("device") or {}, raw.get("model") or {}
        config, figures = raw.get("config") or {}, raw.get("figures") or {}
        if not isinstance(device, dict) or not device.get("name"):
            raise PlannerError(f"{path}: benchmark JSON needs device.name")
        if isinstance(model, str):
            model = {"name": model}

        def num(key: str) -> float | None:
            value = figures.get(key)
            return float(value) if isinstance(value, (int, float)) and value > 0 else None

        try:
            return cls(
                path=path,
                device_name=str(device["name"]),
                model_name=model.get("name"),
                model_config=model.get("config"),
                precision=str(config.get("precision", "bf16")),
                kv_dtype=str(config.get("kv_dtype", "bf16")),
                tp=int(config.get("tp", 1)),
                batch_size=int(config.get("batch_size", 1)),
                input_len=int(config.get("input_len", 128)),
                output_len=int(config.get("output_len", 128)),
                tpot_ms_mean=num("tpot_ms_mean"),
                ttft_ms_mean=num("ttft_ms_mean"),
                output_tokens_per_s=num("output_tokens_per_s"),
                achieved_weight_bandwidth_gbs=num("achieved_weight_bandwidth_gbs"),
                avg_power_w=num("avg_power_w"),
                energy_j_per_token=num("energy_j_per_token"),
            )
        except (TypeError, ValueError) as e:
            raise PlannerError(f"{path}: a config field is not a number: {e}") from e


def read_benchmark(path: str | os.PathLike[str]) -> BenchmarkRecord:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise PlannerError(f"benchmark file {path!r} does not exist") from e
    except (OSError, ValueError) as e:
        raise PlannerError(f"benchmark file {path!r} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise PlannerError(f"benchmark file {path!r} must hold a JSON object")
    return BenchmarkRecord.from_dict(raw, path)


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


def _record_shape(rec: BenchmarkRecord) -> ModelShape | None:
    if isinstance(rec.model_config, dict):
        try:
            return ModelShape.from_hf_dict(rec.model_config, rec.model_name or "model")
        except PlannerError:
            return None
    if rec.model_name:
        try:
            return load_model(rec.model_name)
        except PlannerError:
            return None
    return None


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
    if rec.achieved_weight_bandwidth_gbs:
        memory = _bounded(rec.achieved_weight_bandwidth_gbs / gpu.bandwidth_gbs, "memory", notes)
    shape = _record_shape(rec)
    if shape is None and (rec.tpot_ms_mean or rec.ttft_ms_mean):
        notes.append(f"model {rec.model_name!r} unknown: latency figures not used")
    if shape is not None:
        try:
            memory, compute = _fit_latency(rec, gpu, shape, memory, notes)
        except PlannerError as e:
            notes.append(f"latency figures not used: {e}")
    if gpu.tdp_w:
        watts = rec.avg_power_w
        if watts is None and rec.energy_j_per_token and rec.output_tokens_per_s:
            watts = rec.energy_j_per_token * rec.output_tokens_per_s
        if watts is not None:
            power = _bounded(watts / (gpu.tdp_w * rec.tp), "power", notes)
    return Fit(rec.path, gpu.name, memory, compute, power, tuple(notes))


def _fit_latency(
    rec: BenchmarkRecord, gpu: GPUSpec, shape: ModelShape, memory: float | None, notes: list[str]
) -> tuple[float | None, float | None]:
    cost = model_cost(shape, rec.precision, rec.kv_dtype, rec.tp)
    ideal = Efficiency.ideal()
    compute = None
    if memory is None and rec.tpot_ms_mean:
        step = decode_step(cost, gpu, rec.batch_size, rec.input_len + rec.output_len / 2, ideal)
        if step.bound == "memory":
            measured = rec.tpot_ms_mean / 1e3 - step.comm_s
            memory = _ratio(step.memory_s, measured, "memory", notes)
        else:
            notes.append("decode step is compute-bound: TPOT not used for memory efficiency")
    if rec.ttft_ms_mean:
        pre = prefill(cost, gpu, rec.batch_size, rec.input_len, ideal)
        if pre.bound == "compute":
            measured = rec.ttft_ms_mean / 1e3 - pre.comm_s
            compute = _ratio(pre.compute_s, measured, "compute", notes)
        else:
            notes.append("prefill is memory-bound: TTFT not used for compute efficiency")
    return memory, compute


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
