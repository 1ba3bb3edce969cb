"""A decode step through all of a model's decoder layers in one native call (CPU backend).

At batch 1 a SmolLM2 decode step spent about a third of its time between kernels: 30 layers
of module calls, argument checks and dispatch around ~10 kernel calls each
(benchmarks/results/cpu_profile_bf16.txt). ``DecodeStack`` (csrc/cpu_kernels.cpp) runs the
same kernels in the same order on the same tensors from C++, so its output is the module
path's bit for bit (tests/kernels/test_cpu_decode_stack.py); it is what CUDA graphs are to the
GPU path: the step without the interpreter.

It serves what it was written for and nothing else; the model falls back to its modules for
any other step or layout, so a step it does not serve is slower, never wrong:

- decoder layers of the pre-norm Llama shape (``DecoderLayerWeights``): RMSNorm, fused QKV
  (optional bias), rotary, paged-cache attention, O, RMSNorm with the residual, fused
  gate/up, SiLU-and-mul, down; no QK norm, one rank;
- bf16, each linear in one of the CPU backend's layouts (``StackLinear``): VNNI-packed bf16
  (kernels/cpu_linear.py), the native int8 W8A8 GEMM (kernels/cpu_quant_linear.py), or
  torch's packed int4 / int8 weight-only kernels
  (kernels/cpu_quant_linear.py) up to the rows where the layers use those kernels
  (``max_rows``: beyond them the layers dequantize); a bf16 or FP8 KV cache (with each
  layer's scales);
- decode-only steps: every token of the step is its sequence's one new token, in order.

The model builds it after loading (``CpuOps.decode_stack``: None where the backend cannot).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import torch

Tensor = torch.Tensor


class LinearKind(enum.IntEnum):
    """How a stack multiplies a linear (csrc/cpu_kernels.cpp ``StackLinear``)."""

    VNNI = 0  # bf16, pack_vnni's layout, the native GEMM
    INT4 = 1  # torch's _weight_int4pack_mm_for_cpu layout: [N, K/2] uint8, [K/G, N, 2] bf16
    INT8 = 2  # torch's _weight_int8pack_mm layout: [N, K] int8, scales [N] bf16
    INT8_W8A8 = 3  # pack_int8_vnni's layout [N_pad/64, K/4, 64, 4] uint8, scales [N] float32


@dataclass(frozen=True)
class StackLinear:
    """One linear as its layer stores it for the CPU backend; built by its quantization
    method (``stack_linear``), which knows the layout."""

    kind: LinearKind
    weight: Tensor
    bias: Tensor | None
    out_features: int
    scales: Tensor | None = None  # INT4: scales_and_zeros; INT8 / INT8_W8A8: per-row scales
    group_size: int = 0  # INT4: the weight's group; INT8_W8A8: activation inputs per scale
    max_rows: int | None = None  # the layer's kernel serves up to this many rows (None: any)
    input_scale: float = 0.0  # INT8_W8A8 only: the static activation scale (0: dynamic)

    def spec(self) -> tuple:
        return (int(self.kind), self.weight, self.bias, self.scales, self.out_features,
                self.group_size, self.input_scale)  # fmt: skip


@dataclass(frozen=True)
class DecoderLayerWeights:
    """One pre-norm decoder layer's weights as the CPU backend laid them out."""

    input_norm: Tensor  # [hidden]
    post_norm: Tensor  # [hidden]
    qkv: StackLinear
    o: StackLinear
    gate_up: StackLinear
    down: StackLinear
    # an FP8 KV cache's scales (kernels/kv_quant.py; the attention layer's); a bf16 cache
    # ignores them, as the layer does
    k_scale: float = 1.0
    v_scale: float = 1.0

    def linears(self) -> tuple[StackLinear, StackLinear, StackLinear, StackLinear]:
        return self.qkv, self.o, self.gate_up, self.down

    def bf16(self) -> bool:
        """Whether the norms, biases, bf16 weights and the weight-only kernels' scales are
        bf16 (the stack's dtype)."""
        tensors = [self.input_norm, self.post_norm]
        for lin in self.linears():
            scales = lin.scales if lin.kind != LinearKind.INT8_W8A8 else None  # (float32)
            tensors += [t for t in (lin.bias, scales) if t is not None]
            if lin.kind == LinearKind.VNNI:
                tensors.append(lin.weight)
        return all(t.dtype == torch.bfloat16 for t in tensors)


@dataclass(frozen=True)
class DecoderStackShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    rms_norm_eps: float
    scale: float  # attention's softmax scale


class CpuDecodeStack:
    """The native stack over ``layers`` (one per decoder layer, in order)."""

    def __init__(
        self, native: ModuleType, layers: Sequence[DecoderLayerWeights], shape: DecoderStackShape
    ) -> None:
        self.num_layers = len(layers)
        limits = [lin.max_rows for w in layers for lin in w.linears() if lin.max_rows is not None]
        self.max_rows: int | None = min(limits) if limits else None  # tokens per step it takes
        spec = [(w.input_norm, w.post_norm, [lin.spec() for lin in w.linears()], w.k_scale,
                 w.v_scale) for w in layers]  # fmt: skip
        self._stack = native.DecodeStack(
            spec, shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.hidden_size,
            shape.intermediate_size, shape.rms_norm_eps, shape.scale,
        )  # fmt: skip

    def takes(self, num_tokens: int) -> bool:
        return self.max_rows is None or num_tokens <= self.max_rows

    def forward(
        self,
        hidden: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv_caches: Sequence[Tensor],
        slot_mapping: Tensor,
        block_tables: Tensor,
        seq_lens: Tensor,
        sliding_window: int | None,
    ) -> tuple[Tensor, Tensor]:
        """(hidden, residual) after the last layer for a decode-only step: ``hidden`` [T,
        hidden] the embeddings, cos/sin [T, D/2] float32, ``block_tables``/``seq_lens`` the
        decode plan's (kernels/cpu_native.py ``NativeDecodePlan``)."""
        return self._stack.forward(hidden, cos, sin, list(kv_caches), slot_mapping, block_tables,
                                   seq_lens, sliding_window or 0)  # fmt: skip
