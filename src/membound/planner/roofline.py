"""How fast: decode steps, prefill, TTFT, TPOT and tokens/s from a roofline.

A forward pass on one GPU takes ``max(compute, memory) + communication`` (on a device that
cannot overlap them, a CPU core, ``compute + memory + communication``):

    memory   = (weights read + KV read) / (bandwidth x eff.memory)   [+ CPU-offloaded
               weights streamed over the host link, when the model does not fit]
    compute  = linear FLOPs / (dense peak of the precision x eff.compute)
               + attention FLOPs / (bf16 peak, fp32 for fp32 weights, x eff.compute);
               a measured device uses its matmul rate at the pass's row count instead
    comm     = all-reduces under TP: ring traffic 2 (TP-1)/TP x batch x hidden x 2 bytes
               per all-reduce, over half the datasheet (bidirectional) link rate, plus a
               fixed latency each; Falcon-style parallel attention needs one per layer,
               others two.

MoE layers add what their kernels cost beyond the experts' bytes (``moe_cost``): routed
FLOPs padded to the grouped GEMM's row tile, and the permute/unpermute traffic, which runs
as memory-bound kernels between the matmuls and so adds to the pass (``serial``).

The figure with the larger of compute and memory names the bound that governs it.
Efficiencies of 1, no latency and no MoE kernel overheads give the roofline bound; the
defaults in ``Efficiency`` give the expected figure, so an expected figure can never beat
its bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from membound.planner.errors import PlannerError
from membound.planner.hardware import GPUSpec
from membound.planner.model_cost import ModelCost
from membound.planner.moe_cost import MoEPass, moe_pass
from membound.planner.precision import activation_compute, weight_format
from membound.planner.workload import Workload


@dataclass(frozen=True)
class Efficiency:
    """Achieved share of each datasheet ceiling.

    Defaults are typical published values: batch-1 decode reaches 64-80 % of datasheet
    bandwidth (Llama-3-8B fp16 on H100 SXM: 6.0-7.5 ms/token against 4.8 ms ideal;
    gpt-fast on A100: 1,397 of 2,039 GB/s); serving throughput runs near half the dense
    peak (TensorRT-LLM Llama-3.1-8B on H100). ``membound plan calibrate`` fits them from
    membound's own benchmark JSON.
    """

    memory: float = 0.75
    compute: float = 0.5
    interconnect: float = 0.7
    allreduce_latency_s: float = 10e-6
    power_fraction: float = 1.0  # average board power / TDP, for the energy estimate
    # Extra share of the dense factors that routed-expert GEMMs reach, in bytes and FLOPs.
    # 1: none. Not set from any published figure (what MoE kernels cost is counted in
    # ``moe_cost``); a calibration file may lower it for kernels slower than that count.
    moe: float = 1.0
    source: str = "defaults (typical published values)"
    power_measured: bool = False  # power_fraction came from measured energy
    # Count what grouped-GEMM MoE kernels add (tile padding, permute/unpermute; moe_cost).
    # The roofline bound leaves them out: they are how today's kernels run, not physics.
    moe_kernels: bool = True

    def __post_init__(self) -> None:
        for name in ("memory", "compute", "interconnect", "power_fraction", "moe"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise PlannerError(f"efficiency {name} must be in (0, 1], got {value!r}")
        if self.allreduce_latency_s < 0:
            raise PlannerError("allreduce_latency_s must be >= 0")
        for name in ("power_measured", "moe_kernels"):
            if not isinstance(getattr(self, name), bool):
                raise PlannerError(f"efficiency {name} must be true or false")

    @classmethod
    def ideal(cls) -> Efficiency:
        """Every ceiling reached, no latency: the roofline bound."""
        return cls(memory=1.0, compute=1.0, interconnect=1.0, allreduce_latency_s=0.0,
                   power_fraction=1.0, moe=1.0, source="ideal (roofline bound)",
                   power_measured=False, moe_kernels=False)  # fmt: skip

    def to_dict(self) -> dict[str, float | str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class StepTime:
    """Seconds one forward pass spends on each ceiling; FLOPs and bytes it moves."""

    compute_s: float
    memory_s: float
    comm_s: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    overlap: bool = True  # compute and memory overlap (GPU); a CPU core does one, then the other
    serial_s: float = 0.0  # memory-bound kernels between the matmuls (MoE permute/unpermute)

    @property
    def total_s(self) -> float:
        if self.overlap:
            return max(self.compute_s, self.memory_s) + self.serial_s + self.comm_s
        return self.compute_s + self.memory_s + self.serial_s + self.comm_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s > self.memory_s else "memory"


_ZERO = StepTime(0.0, 0.0)


def linear_compute(gpu: GPUSpec, precision: str) -> tuple[str, str | None]:
    """Compute class the precision's matmuls run in on ``gpu``, and a note if it falls back.

    A precision the hardware cannot compute in (FP8 on A100, FP4 before Blackwell) is
    modelled as weight-only storage: the weights are dequantized and the matmuls run at
    the BF16 rate. Bytes still shrink; FLOP/s do not grow.
    """
    fmt = weight_format(precision)
    peak = gpu.dense_peak_tflops(fmt.compute)
    if peak is None and fmt.compute == "fp32":
        raise PlannerError(
            f"precision fp32: {gpu.name} has no FP32 matmul rate in the table; give "
            "dense_fp32_tflops in a --hardware-file, or plan on --gpu local (measured)"
        )
    if peak is not None:
        if fmt.weight_only:
            return fmt.compute, f"{fmt.name}: weight-only, dequantized to bf16 (BF16 rate)"
        return fmt.compute, None
    return "bf16", (
        f"{fmt.name}: {gpu.name} has no {fmt.compute.upper()} tensor cores; modelled as "
        "weight-only storage dequantized to bf16 (BF16 rate)"
    )


def linear_peak_tflops(gpu: GPUSpec, precision: str) -> tuple[float, str | None]:
    """Dense peak the precision's matmuls run at on ``gpu``, and a note if it falls back."""
    compute, note = linear_compute(gpu, precision)
    return gpu.dense_peak_tflops(compute) or gpu.dense_bf16_tflops, note


def _rates(gpu: GPUSpec, precision: str, rows: float) -> tuple[float, float]:
    """TFLOP/s of the linear and the attention matmuls of a pass over ``rows`` tokens
    (the measured rows curve where the device has one, else the dense peaks)."""
    compute, _ = linear_compute(gpu, precision)
    attention = "fp32" if activation_compute(precision) == "fp32" else "bf16"
    linear_rate = gpu.matmul_tflops(compute, rows) or gpu.dense_bf16_tflops
    return linear_rate, gpu.matmul_tflops(attention, rows) or gpu.dense_bf16_tflops


def _hidden_row_s(cost: ModelCost, gpu: GPUSpec, passes: int) -> float:
    """On a device that does not overlap compute and memory (a CPU), the arithmetic of one
    row per pass: a matrix-vector product hides it under the weight stream, so only rows
    beyond the first add time (benchmarks/results/planner_local_cpu/gemm_stack_rows.log).
    0 where they overlap."""
    if gpu.overlap:
        return 0.0
    rate, _ = _rates(gpu, cost.precision, 1)
    row = cost.linear_flops_per_token_per_gpu + cost.lm_head_flops_per_token_per_gpu
    return passes * row / (rate * 1e12)


def _moe(cost: ModelCost, gpu: GPUSpec, tokens: int, eff: Efficiency) -> MoEPass:
    """What the MoE kernels add to a pass over ``tokens`` tokens (none for the bound)."""
    return moe_pass(cost, tokens if eff.moe_kernels else 0, gpu.tiled_moe)


def _allreduce_s(cost: ModelCost, gpu: GPUSpec, tokens: int, eff: Efficiency) -> float:
    if cost.tp == 1:
        return 0.0
    if gpu.interconnect_gbs <= 0:
        raise PlannerError(f"{gpu.name} has no interconnect, so TP {cost.tp} is not possible")
    shape = cost.shape
    per_layer = 1 if shape.parallel_attention else 2
    count = shape.num_layers * per_layer
    ring = 2 * (cost.tp - 1) / cost.tp * tokens * shape.hidden_size * 2
    link = gpu.interconnect_gbs / 2 * 1e9 * eff.interconnect
    return count * (ring / link + eff.allreduce_latency_s)


def decode_step(
    cost: ModelCost,
    gpu: GPUSpec,
    batch: int,
    context: float,
    eff: Efficiency,
    offload_bytes_per_gpu: int = 0,
) -> StepTime:
    """One decode step: ``batch`` sequences each attending to ``context`` keys."""
    ctx = max(0, round(context))
    peak, attn_peak = _rates(gpu, cost.precision, batch)
    linear = batch * (cost.linear_flops_per_token_per_gpu + cost.lm_head_flops_per_token_per_gpu)
    attention = batch * cost.attention_flops(ctx)
    moe = _moe(cost, gpu, batch, eff)
    slow = batch * cost.expert_flops_per_token_per_gpu * (moe.flop_factor / eff.moe - 1)
    linear_s = max(0.0, (linear + slow) / (peak * 1e12) - _hidden_row_s(cost, gpu, 1))
    compute_s = (linear_s + attention / (attn_peak * 1e12)) / eff.compute
    experts = cost.expert_read_bytes(batch)
    read = cost.weight_read_bytes(batch) + batch * cost.kv_bytes_for_context(ctx)
    rate = gpu.bandwidth_gbs * 1e9 * eff.memory
    memory_s = (read + experts * (1 / eff.moe - 1)) / rate
    if offload_bytes_per_gpu:
        memory_s += offload_bytes_per_gpu / (gpu.host_link_gbs * 1e9 * eff.interconnect)
    comm_s = _allreduce_s(cost, gpu, batch, eff)
    moved = read + offload_bytes_per_gpu + moe.permute_bytes
    return StepTime(compute_s, memory_s, comm_s, linear + attention, moved, gpu.overlap,
                    moe.permute_bytes / rate)  # fmt: skip


def prefill(
    cost: ModelCost,
    gpu: GPUSpec,
    num_seqs: int,
    input_len: int,
    eff: Efficiency,
    chunk_tokens: int = 2048,
    offload_bytes_per_gpu: int = 0,
) -> StepTime:
    """Prefill of ``num_seqs`` prompts of ``input_len`` tokens, in chunks of ``chunk_tokens``."""
    if num_seqs <= 0:
        return _ZERO
    tokens = num_seqs * input_len
    chunks = math.ceil(tokens / chunk_tokens)
    peak, attn_peak = _rates(gpu, cost.precision, min(tokens, chunk_tokens))
    linear = tokens * cost.linear_flops_per_token_per_gpu
    linear += num_seqs * cost.lm_head_flops_per_token_per_gpu  # logits of the last token only
    attention = num_seqs * cost.prefill_attention_flops(input_len)
    rows = min(tokens, chunk_tokens)  # tokens in one chunk's pass
    moe = _moe(cost, gpu, rows, eff)
    slow = tokens * cost.expert_flops_per_token_per_gpu * (moe.flop_factor / eff.moe - 1)
    linear_s = max(0.0, (linear + slow) / (peak * 1e12) - _hidden_row_s(cost, gpu, chunks))
    compute_s = (linear_s + attention / (attn_peak * 1e12)) / eff.compute
    read = chunks * cost.weight_read_bytes(rows)
    experts = chunks * cost.expert_read_bytes(rows) * (1 / eff.moe - 1)
    written = tokens * cost.kv_bytes_per_token_per_gpu
    rate = gpu.bandwidth_gbs * 1e9 * eff.memory
    memory_s = (read + experts + written) / rate
    if offload_bytes_per_gpu:
        memory_s += chunks * offload_bytes_per_gpu / (gpu.host_link_gbs * 1e9 * eff.interconnect)
    comm_s = _allreduce_s(cost, gpu, tokens, eff)
    if cost.tp > 1:  # latency is paid per chunk, not per token
        comm_s += (chunks - 1) * _allreduce_s(cost, gpu, 0, eff)
    permute = moe.permute_bytes * tokens / rows if rows else 0.0  # every token is permuted
    return StepTime(compute_s, memory_s, comm_s, linear + attention, read + written + permute,
                    gpu.overlap, permute / rate)  # fmt: skip


@dataclass(frozen=True)
class Figures:
    """Latency and throughput of one option, at one set of efficiencies."""

    batch: int  # sequences decoding together
    decode: StepTime
    prefill_one: StepTime
    ttft_s: float
    tpot_s: float
    output_tokens_per_s: float
    queue_wait_s: float
    throughput_bound: str  # which ceiling governs tokens/s

    @property
    def decode_only_tokens_per_s(self) -> float:
        return self.batch / self.decode.total_s


def predict(
    cost: ModelCost,
    gpu: GPUSpec,
    workload: Workload,
    max_concurrent_seqs: int,
    eff: Efficiency,
    chunk_tokens: int = 2048,
    offload_bytes_per_gpu: int = 0,
) -> Figures:
    """TTFT, TPOT and output tokens/s at the workload's concurrency.

    ``batch = min(concurrency, max_concurrent_seqs)`` sequences decode together. Each
    request's TPOT is the decode step plus its share of the other requests' prefills
    (continuous batching interleaves them); TTFT is its own prefill plus one in-flight
    step. Requests beyond the KV capacity queue: with C clients and B slots a request
    waits ``service x (C - B) / B`` (Little's law, closed loop).
    """
    i, o = workload.input_len, workload.output_len
    batch = max(1, min(workload.concurrency, max_concurrent_seqs))
    off = offload_bytes_per_gpu
    step = decode_step(cost, gpu, batch, workload.mean_decode_context, eff, off)
    one = prefill(cost, gpu, 1, i, eff, chunk_tokens, off)
    others = prefill(cost, gpu, batch - 1, i, eff, chunk_tokens, off)
    tpot = step.total_s + others.total_s / o
    ttft_service = one.total_s + (step.total_s if batch > 1 else 0.0)
    service = ttft_service + (o - 1) * tpot
    wait = service * (workload.concurrency - batch) / batch
    decode_time = (o - 1) * step.total_s
    prefill_time = ttft_service + others.total_s * (o - 1) / o
    governing = step if decode_time >= prefill_time else one
    return Figures(
        batch=batch,
        decode=step,
        prefill_one=one,
        ttft_s=ttft_service + wait,
        tpot_s=tpot,
        output_tokens_per_s=batch * o / service,
        queue_wait_s=wait,
        throughput_bound=governing.bound,
    )
