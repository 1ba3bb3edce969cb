"""Will it fit: weights, overhead, activations and KV cache on each GPU.

Per GPU, within ``capacity x gpu_memory_utilization``:

    weights / TP  +  runtime overhead  +  activation peak  +  KV cache  <=  budget

The KV cache takes whatever is left. "Fits" means the KV left over holds at least one
whole sequence of the workload (input + output tokens, rounded up to KV blocks). When it
does not, ``cpu_offload_bytes`` says how many weight bytes (over the whole TP group)
would have to live in CPU memory to make room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from membound.config import ConfigError, check_tensor_parallel
from membound.planner.errors import PlannerError
from membound.planner.hardware import GIB, GPUSpec
from membound.planner.model_cost import ModelCost, model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.workload import EngineLimits, Workload


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory use of one (model, precision, GPU, TP) option."""

    gpu: str
    tp: int
    capacity_bytes: int
    budget_bytes: int
    weight_bytes_per_gpu: int
    overhead_bytes: int
    activation_bytes: int
    kv_budget_bytes: int  # what is left for KV; negative when even the weights do not fit
    kv_bytes_per_token_per_gpu: int
    kv_bytes_per_seq: int  # one sequence of the workload, on one GPU, block-rounded
    max_kv_tokens: int
    max_concurrent_seqs: int
    fits: bool
    reason: str
    cpu_offload_bytes: int  # weight bytes to keep in CPU memory (whole TP group); 0 if fits


def activation_bytes(cost: ModelCost, limits: EngineLimits) -> int:
    """Peak activations of one ``max_num_batched_tokens`` step on one GPU (an estimate)."""
    s, tp = cost.shape, cost.tp
    if s.num_dense_layers:
        mlp = s.intermediate_size
    else:
        mlp = s.num_experts_per_tok * s.moe_intermediate_size
    mlp_width = (2 if s.gated_mlp else 1) * math.ceil(mlp / tp)
    qkv = math.ceil(s.q_size / tp) + 2 * cost.kv_heads_per_gpu * s.head_dim
    per_token = 2 * (4 * s.hidden_size + qkv + 2 * mlp_width)  # bf16 hidden states
    logits = limits.sampled_rows * math.ceil(s.vocab_size / tp) * 4  # fp32
    return limits.max_num_batched_tokens * per_token + logits


def tp_problem(shape: ModelShape, tp: int) -> str | None:
    """Why the engine would refuse to split ``shape`` over ``tp`` ranks (None: it would not):
    the engine's own rule (config.check_tensor_parallel), on heads, KV heads and MLP widths."""
    widths = {}
    if shape.num_dense_layers:
        widths["intermediate_size"] = shape.intermediate_size
    if shape.is_moe:
        widths["moe_intermediate_size"] = shape.moe_intermediate_size
    if shape.shared_expert_intermediate_size:
        widths["shared_expert_intermediate_size"] = shape.shared_expert_intermediate_size
    try:
        check_tensor_parallel(tp, shape.num_attention_heads, shape.num_kv_heads, widths)
    except ConfigError as e:
        return str(e)
    return None


def valid_tps(shape: ModelShape, gpu: GPUSpec) -> tuple[int, ...]:
    """Powers of two up to the GPU's node size that the engine can split the model over."""
    return tuple(
        tp
        for tp in (1, 2, 4, 8, 16, 32, 64)
        if tp <= gpu.max_tp and tp_problem(shape, tp) is None
    )


def check_tp(shape: ModelShape, gpu: GPUSpec, tp: int) -> None:
    """Raise a PlannerError naming why ``tp`` cannot shard ``shape`` on ``gpu``."""
    if not isinstance(tp, int) or tp < 1:
        raise PlannerError(f"--tp must be a positive integer, got {tp!r}")
    if tp > gpu.max_tp:
        raise PlannerError(
            f"--tp {tp} exceeds the {gpu.max_tp} {gpu.name} GPUs one node joins; "
            "multi-node tensor parallelism is not modelled"
        )
    if shape.num_attention_heads % tp:
        raise PlannerError(
            f"--tp {tp} does not divide {shape.name}'s {shape.num_attention_heads} attention "
            f"heads; valid choices on {gpu.name}: {', '.join(map(str, valid_tps(shape, gpu)))}"
        )
    problem = tp_problem(shape, tp)
    if problem is not None:
        raise PlannerError(
            f"--tp {tp} cannot split {shape.name}: {problem}; valid choices on {gpu.name}: "
            f"{', '.join(map(str, valid_tps(shape, gpu)))}"
        )


def plan_memory(
    cost: ModelCost, gpu: GPUSpec, workload: Workload, limits: EngineLimits
) -> MemoryPlan:
    """Memory use and KV capacity of ``cost`` (already sharded ``cost.tp`` ways) on ``gpu``."""
    budget = int(gpu.memory_bytes * limits.gpu_memory_utilization)
    acts = activation_bytes(cost, limits)
    free = budget - cost.weight_bytes_per_gpu - limits.runtime_overhead_bytes - acts
    per_token = cost.kv_bytes_per_token_per_gpu
    block = limits.block_size
    per_seq = cost.kv_bytes_for_context(workload.context_len, limits.block_size)
    usable = max(free, 0)
    fits = free >= per_seq
    offload = 0 if fits else (per_seq - free) * cost.tp
    if fits:
        reason = f"fits: {usable / GIB:.1f} GiB per GPU left for KV cache"
    elif free < 0:
        reason = (
            f"weights need {cost.weight_bytes_per_gpu / GIB:.1f} GiB per GPU but only "
            f"{(budget - limits.runtime_overhead_bytes - acts) / GIB:.1f} GiB is available"
        )
    else:
        reason = (
            f"weights fit but the {usable / GIB:.2f} GiB left cannot hold the KV of one "
            f"{workload.context_len}-token sequence ({per_seq / GIB:.2f} GiB)"
        )
    if not fits and offload > cost.weight_bytes:
        reason += "; even offloading every weight would not make room"
    return MemoryPlan(
        gpu=gpu.name,
        tp=cost.tp,
        capacity_bytes=gpu.memory_bytes,
        budget_bytes=budget,
        weight_bytes_per_gpu=cost.weight_bytes_per_gpu,
        overhead_bytes=limits.runtime_overhead_bytes,
        activation_bytes=acts,
        kv_budget_bytes=free,
        kv_bytes_per_token_per_gpu=per_token,
        kv_bytes_per_seq=per_seq,
        max_kv_tokens=usable // (per_token * block) * block,  # whole blocks, as the engine
        max_concurrent_seqs=usable // per_seq,
        fits=fits,
        reason=reason,
        cpu_offload_bytes=offload,
    )


def smallest_tp(
    shape: ModelShape,
    gpu: GPUSpec,
    precision: str,
    kv_dtype: str,
    workload: Workload,
    limits: EngineLimits,
) -> int | None:
    """The smallest valid TP at which the model and one sequence's KV fit; None if none."""
    for tp in valid_tps(shape, gpu):
        cost = model_cost(shape, precision, kv_dtype, tp)
        if plan_memory(cost, gpu, workload, limits).fits:
            return tp
    return None
