"""The fields the planner reads from one ``membound bench`` JSON file (docs/planner.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from membound.planner.errors import PlannerError, read_json_object
from membound.planner.model_shape import ModelShape
from membound.planner.presets import load_model


@dataclass(frozen=True)
class BenchmarkRecord:
    """The fields the planner reads from one membound benchmark JSON file."""

    path: str
    device_name: str
    model_name: str | None
    model_config: dict[str, Any] | None
    kind: str = "latency"  # "latency" | "throughput" | "serve" (bench's "kind")
    precision: str = "bf16"
    kv_dtype: str = "bf16"
    tp: int = 1
    batch_size: int = 1
    input_len: int = 128
    output_len: int = 128
    num_prompts: int | None = None  # throughput: requests in the run
    max_num_batched_tokens: int = 2048  # prefill chunk
    tpot_ms_mean: float | None = None
    ttft_ms_mean: float | None = None
    tpot_ms_p50: float | None = None
    ttft_ms_p50: float | None = None
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
                kind=str(raw.get("kind", "latency")),
                precision=str(config.get("precision", "bf16")),
                kv_dtype=str(config.get("kv_dtype", "bf16")),
                tp=int(config.get("tp", 1)),
                batch_size=int(config.get("batch_size", 1)),
                input_len=int(config.get("input_len", 128)),
                output_len=int(config.get("output_len", 128)),
                num_prompts=int(config["num_prompts"]) if config.get("num_prompts") else None,
                max_num_batched_tokens=int(config.get("max_num_batched_tokens") or 2048),
                tpot_ms_mean=num("tpot_ms_mean"),
                ttft_ms_mean=num("ttft_ms_mean"),
                tpot_ms_p50=num("tpot_ms_p50"),
                ttft_ms_p50=num("ttft_ms_p50"),
                output_tokens_per_s=num("output_tokens_per_s"),
                achieved_weight_bandwidth_gbs=num("achieved_weight_bandwidth_gbs"),
                avg_power_w=num("avg_power_w"),
                energy_j_per_token=num("energy_j_per_token"),
            )
        except (TypeError, ValueError) as e:
            raise PlannerError(f"{path}: a config field is not a number: {e}") from e

    @property
    def tpot_ms(self) -> float | None:
        """Median TPOT when recorded (robust to a shared machine's stalls), else the mean."""
        return self.tpot_ms_p50 or self.tpot_ms_mean

    @property
    def ttft_ms(self) -> float | None:
        """Median TTFT when recorded, else the mean (throughput runs: queueing included,
        so not used)."""
        return None if self.kind == "throughput" else (self.ttft_ms_p50 or self.ttft_ms_mean)


def read_benchmark(path: str | os.PathLike[str]) -> BenchmarkRecord:
    return BenchmarkRecord.from_dict(read_json_object(path, "benchmark file"), os.fspath(path))


def record_shape(rec: BenchmarkRecord) -> ModelShape | None:
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
