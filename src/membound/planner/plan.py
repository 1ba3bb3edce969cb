"""Put it together: every GPU option for one model and workload, side by side.

For each GPU: the TP degree asked for, or else the smallest that fits (and, when latency
targets are given, every larger one too, since more GPUs may be needed to meet them).
Options that fit nowhere are kept, at the largest TP, with the CPU offload they would
need. The recommendation is the cheapest option ($/M output tokens) that fits and meets
the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from membound.planner.calibrate import Calibration
from membound.planner.cost import CostEnergy, cost_and_energy
from membound.planner.errors import PlannerError
from membound.planner.hardware import GPUSpec
from membound.planner.memory import MemoryPlan, check_tp, plan_memory, valid_tps
from membound.planner.model_cost import ModelCost, model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.precision import normalize_kv_dtype, weight_format
from membound.planner.roofline import Efficiency, Figures, linear_peak_tflops, predict
from membound.planner.workload import EngineLimits, Workload

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PlanRequest:
    """Everything one plan needs; validated by the objects it holds."""

    shape: ModelShape
    gpus: tuple[GPUSpec, ...]
    precision: str = "bf16"
    kv_dtype: str = "bf16"
    workload: Workload = field(default_factory=Workload)
    tp: int | None = None
    limits: EngineLimits = field(default_factory=EngineLimits)
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self) -> None:
        weight_format(self.precision)  # these raise, naming the valid choices
        normalize_kv_dtype(self.kv_dtype)
        if not self.gpus:
            raise PlannerError("the plan needs at least one GPU")


@dataclass(frozen=True)
class OptionResult:
    """One GPU type at one TP degree: memory, speed, money, energy."""

    gpu: GPUSpec
    cost: ModelCost
    memory: MemoryPlan
    expected: Figures
    bound: Figures
    money: CostEnergy
    efficiency: Efficiency
    notes: tuple[str, ...]
    meets_targets: bool | None  # None when no target was given

    @property
    def tp(self) -> int:
        return self.cost.tp


@dataclass(frozen=True)
class PlanResult:
    request: PlanRequest
    options: tuple[OptionResult, ...]
    recommendation: OptionResult | None
    recommendation_reason: str


def _meets(workload: Workload, figures: Figures) -> bool | None:
    checks = []
    if workload.target_ttft_s is not None:
        checks.append(figures.ttft_s <= workload.target_ttft_s)
    if workload.target_tpot_s is not None:
        checks.append(figures.tpot_s <= workload.target_tpot_s)
    return all(checks) if checks else None


def _meets_if_fits(workload: Workload, figures: Figures, fits: bool) -> bool | None:
    meets = _meets(workload, figures)
    return meets if meets is None or fits else False


def _notes(req: PlanRequest, gpu: GPUSpec, cost: ModelCost, mem: MemoryPlan) -> list[str]:
    notes = []
    _, precision_note = linear_peak_tflops(gpu, req.precision)
    if precision_note:
        notes.append(precision_note)
    if cost.kv_dtype == "fp8" and gpu.dense_fp8_tflops is None:
        notes.append("fp8 KV cache: storage only on this GPU (attention dequantizes to bf16)")
    if cost.tp > req.shape.num_kv_heads:
        notes.append(
            f"TP {cost.tp} > {req.shape.num_kv_heads} KV heads: KV heads are replicated, "
            "so KV capacity no longer grows with TP"
        )
    if not mem.fits:
        notes.append(mem.reason)
        notes.append(
            f"would need {mem.cpu_offload_bytes / 1024**3:.1f} GiB of weights in CPU memory, "
            f"streamed over {gpu.host_link_gbs:.0f} GB/s host links every step"
        )
    if req.workload.concurrency > max(mem.max_concurrent_seqs, 1):
        notes.append(
            f"concurrency {req.workload.concurrency} exceeds the {mem.max_concurrent_seqs} "
            "sequences the KV cache holds: the rest queue"
        )
    if req.shape.is_moe:
        notes.append("MoE: experts read per step assume uniform routing")
    if req.workload.context_len > req.shape.max_position_embeddings:
        notes.append(
            f"{req.workload.context_len} tokens exceed the model's max_position_embeddings "
            f"({req.shape.max_position_embeddings})"
        )
    return notes


def evaluate(req: PlanRequest, gpu: GPUSpec, tp: int) -> OptionResult:
    """All figures for ``req.shape`` on ``tp`` GPUs of type ``gpu``."""
    cost = model_cost(req.shape, req.precision, req.kv_dtype, tp)
    mem = plan_memory(cost, gpu, req.workload, req.limits)
    eff = req.calibration.for_gpu(gpu.name)
    offload = 0 if mem.fits else -(-mem.cpu_offload_bytes // tp)
    chunk = req.limits.max_num_batched_tokens
    args = (cost, gpu, req.workload, mem.max_concurrent_seqs)
    expected = predict(*args, eff, chunk, offload)
    bound = predict(*args, Efficiency.ideal(), chunk, offload)
    money = cost_and_energy(gpu, tp, expected.output_tokens_per_s, eff)
    return OptionResult(
        gpu=gpu,
        cost=cost,
        memory=mem,
        expected=expected,
        bound=bound,
        money=money,
        efficiency=eff,
        notes=tuple(_notes(req, gpu, cost, mem)),
        meets_targets=_meets_if_fits(req.workload, expected, mem.fits),
    )


def _options_for(req: PlanRequest, gpu: GPUSpec) -> list[OptionResult]:
    if req.tp is not None:
        check_tp(req.shape, gpu, req.tp)
        return [evaluate(req, gpu, req.tp)]
    tps = valid_tps(req.shape, gpu)
    if not tps:
        return []
    results = []
    for tp in tps:
        option = evaluate(req, gpu, tp)
        if not option.memory.fits:
            continue
        results.append(option)
        targets = _meets(req.workload, option.expected)
        if targets is None or targets:
            break
    return results or [evaluate(req, gpu, tps[-1])]


def _recommend(options: list[OptionResult]) -> tuple[OptionResult | None, str]:
    fitting = [o for o in options if o.memory.fits]
    if not fitting:
        return None, "nothing fits: see the CPU offload each option would need"
    meeting = [o for o in fitting if o.meets_targets is not False]
    if not meeting:
        return None, "options fit, but none meets the latency targets"
    priced = [o for o in meeting if o.money.cost_per_million_tokens is not None]
    if not priced:
        best = min(meeting, key=lambda o: (o.tp, -o.expected.output_tokens_per_s))
        return best, "no prices known: fewest GPUs, then fastest"
    best = min(priced, key=lambda o: o.money.cost_per_million_tokens or 0.0)
    why = "cheapest $/M output tokens"
    return best, why + (" meeting the latency targets" if best.meets_targets else "")


def run_plan(req: PlanRequest) -> PlanResult:
    """Evaluate every option and pick the recommendation."""
    options: list[OptionResult] = []
    for gpu in req.gpus:
        options.extend(_options_for(req, gpu))
    best, why = _recommend(options)
    return PlanResult(req, tuple(options), best, why)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def option_to_dict(o: OptionResult) -> dict[str, Any]:
    """One entry of the JSON ``results`` list (stable keys; see docs/planner.md)."""
    e, b, m = o.expected, o.bound, o.memory
    return {
        "gpu": o.gpu.name,
        "tp": o.tp,
        "precision": o.cost.precision,
        "kv_dtype": o.cost.kv_dtype,
        "fits": m.fits,
        "weight_bytes": o.cost.weight_bytes,
        "weight_bytes_per_gpu": o.cost.weight_bytes_per_gpu,
        "kv_bytes_per_token": o.cost.kv_bytes_per_token,
        "kv_bytes_per_token_per_gpu": o.cost.kv_bytes_per_token_per_gpu,
        "max_kv_tokens": m.max_kv_tokens,
        "max_concurrent_seqs": m.max_concurrent_seqs,
        "cpu_offload_bytes": m.cpu_offload_bytes,
        "batch": e.batch,
        "decode_tokens_per_s_bound": _round(b.output_tokens_per_s),
        "decode_tokens_per_s": _round(e.output_tokens_per_s),
        "ttft_s": _round(e.ttft_s),
        "tpot_s": _round(e.tpot_s),
        "ttft_s_bound": _round(b.ttft_s),
        "tpot_s_bound": _round(b.tpot_s),
        "queue_wait_s": _round(e.queue_wait_s),
        "bound": e.throughput_bound,
        "bounds": {
            "ttft": e.prefill_one.bound,
            "tpot": e.decode.bound,
            "decode_tokens_per_s": e.throughput_bound,
        },
        "meets_targets": o.meets_targets,
        "cost_per_million_tokens": _round(o.money.cost_per_million_tokens),
        "tokens_per_dollar": _round(o.money.tokens_per_dollar),
        "price_per_gpu_hour": o.money.price_per_gpu_hour,
        "price": o.money.price_label,
        "joules_per_token": _round(o.money.joules_per_token),
        "energy": o.money.energy_label,
        "efficiency": o.efficiency.to_dict(),
        "notes": list(o.notes),
    }


def plan_to_dict(result: PlanResult) -> dict[str, Any]:
    """The whole ``--json`` document."""
    req, shape, w = result.request, result.request.shape, result.request.workload
    params = result.options[0].cost.params if result.options else None
    best = result.recommendation
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": shape.name,
            "architecture": shape.architecture,
            "total_params": params.total if params else None,
            "active_params": params.active if params else None,
            "num_layers": shape.num_layers,
            "num_kv_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim,
            "precision": req.precision,
            "kv_dtype": req.kv_dtype,
        },
        "workload": {
            "input_len": w.input_len,
            "output_len": w.output_len,
            "concurrency": w.concurrency,
            "target_ttft_s": w.target_ttft_s,
            "target_tpot_s": w.target_tpot_s,
        },
        "assumptions": {
            "gpu_memory_utilization": req.limits.gpu_memory_utilization,
            "runtime_overhead_bytes": req.limits.runtime_overhead_bytes,
            "max_num_batched_tokens": req.limits.max_num_batched_tokens,
            "block_size": req.limits.block_size,
        },
        "results": [option_to_dict(o) for o in result.options],
        "recommendation": None
        if best is None
        else {"gpu": best.gpu.name, "tp": best.tp, "reason": result.recommendation_reason},
        "recommendation_reason": result.recommendation_reason,
    }
