"""Kernel backend: chosen once at start-up, installed into the model's layers.

Triton on CUDA; on CPU the "cpu" backend: plain torch written for CPUs (attention bucketed by
length, kernels/cpu_attention.py), the references elsewhere. "torch" runs the simple
references everywhere (the oracles; debugging). "triton" can be forced on CPU (kernels then
run in Triton's interpreter: tests only). The choice is
an explicit value handed to each layer by ``install_kernel_backend``; there is no global.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from membound.kernels import (
    activation,
    cpu_attention,
    kv_store,
    moe_gemm,
    paged_attention,
    prefill_attention,
    rms_norm,
)
from membound.kernels import rotary as rotary_kernels
from membound.kernels.triton_utils import HAS_TRITON

logger = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "cpu", "torch", "triton")


class KernelBackend(enum.Enum):
    TORCH = "torch"  # the references
    CPU = "cpu"  # plain torch tuned for CPUs
    TRITON = "triton"


@dataclass(frozen=True)
class KernelOps:
    """The data-plane functions of one backend; each pair shares a signature."""

    store_kv: Callable[..., None]
    decode_attention: Callable[..., torch.Tensor]
    prefill_attention: Callable[..., torch.Tensor]
    varlen_attention: Callable[..., torch.Tensor]
    rms_norm: Callable[..., torch.Tensor]
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[..., torch.Tensor]
    rotary_embedding: Callable[..., None]
    moe_gemm: Callable[..., torch.Tensor]
    # optional: (block_tables, seq_lens, block_size, sliding_window, bytes_per_token) -> a plan
    # of the step's decode batch that every layer hands to decode_attention(plan=...)
    plan_decode: Callable[..., object] | None = None


TORCH_OPS = KernelOps(
    store_kv=kv_store.store_kv_ref,
    decode_attention=paged_attention.paged_decode_attention_ref,
    prefill_attention=prefill_attention.prefill_attention_ref,
    varlen_attention=prefill_attention.varlen_attention_ref,
    rms_norm=rms_norm.rms_norm_ref,
    fused_add_rms_norm=rms_norm.fused_add_rms_norm_ref,
    silu_and_mul=activation.silu_and_mul_ref,
    rotary_embedding=rotary_kernels.rotary_embedding_ref,
    moe_gemm=moe_gemm.moe_gemm_ref,
)

CPU_OPS = dataclasses.replace(
    TORCH_OPS,
    decode_attention=cpu_attention.paged_decode_attention_cpu,
    prefill_attention=cpu_attention.prefill_attention_cpu,
    varlen_attention=cpu_attention.varlen_attention_cpu,
    plan_decode=cpu_attention.plan_decode,
)

TRITON_OPS = KernelOps(
    store_kv=kv_store.store_kv,
    decode_attention=paged_attention.paged_decode_attention,
    prefill_attention=prefill_attention.prefill_attention,
    varlen_attention=prefill_attention.varlen_attention,
    rms_norm=rms_norm.rms_norm,
    fused_add_rms_norm=rms_norm.fused_add_rms_norm,
    silu_and_mul=activation.silu_and_mul,
    rotary_embedding=rotary_kernels.rotary_embedding,
    moe_gemm=moe_gemm.moe_gemm,
)


def kernel_ops(backend: KernelBackend) -> KernelOps:
    return {KernelBackend.TRITON: TRITON_OPS, KernelBackend.CPU: CPU_OPS}.get(backend, TORCH_OPS)


def select_kernel_backend(device: torch.device, requested: str = "auto") -> KernelBackend:
    """"auto": Triton on CUDA when triton is installed, else "cpu". "triton" on a CPU device
    runs the kernels in Triton's interpreter (slow; for tests)."""
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"kernel backend {requested!r} is not one of {', '.join(BACKEND_CHOICES)}")
    if requested == "torch":
        return KernelBackend.TORCH
    if requested == "cpu":
        return KernelBackend.CPU
    if requested == "triton":
        if not HAS_TRITON:
            raise ValueError(
                "kernel backend 'triton' needs the 'triton' package (pip install triton)"
            )
        return KernelBackend.TRITON
    if device.type == "cuda":
        if HAS_TRITON:
            return KernelBackend.TRITON
        logger.warning("triton is not installed: running the torch reference kernels on CUDA")
        return KernelBackend.TORCH
    return KernelBackend.CPU


def install_kernel_backend(model: nn.Module, backend: KernelBackend) -> int:
    """Hand ``backend`` to every layer that dispatches on it; returns how many did."""
    count = 0
    for module in model.modules():
        setter: Any = getattr(module, "set_kernel_backend", None)
        if callable(setter):
            setter(backend)
            count += 1
    return count
