"""The kernel contract: what a backend must provide, and the three backends.

``KernelOps`` is a Protocol with one keyword-only method per op; every layer receives the
backend object in ``__init__`` (chosen once at start-up by ``select_kernel_ops``) and calls
only these methods, so a backend is swapped by handing the model another object, never by
patching layers. Each backend also owns its per-step metadata: ``plan_decode`` turns the
step's decode batch into whatever its decode kernel wants precomputed (the CPU backend's
length buckets; None elsewhere). The runner calls it once per step and every layer passes
the result back to ``decode_attention(plan=...)``.

    TorchOps   the plain-torch references: the oracles every kernel is tested against
    CpuOps     the references, except attention written for CPUs (kernels/cpu_attention.py)
               and, where they build, native C++ kernels for bf16/fp16 (kernels/cpu_native.py),
               bf16 GEMMs on VNNI-packed weights included (kernels/cpu_linear.py)
    TritonOps  the Triton kernels (CUDA; on CPU only under TRITON_INTERPRET=1, for tests)

"auto" picks Triton on CUDA when triton is installed, else the CPU backend.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol

import torch

from membound.kernels import (
    activation,
    cpu_attention,
    cpu_hugepages,
    cpu_linear,
    cpu_native,
    cpu_quant_linear,
    kv_store,
    moe_gemm,
    paged_attention,
    prefill_attention,
    rms_norm,
    rotary,
)
from membound.kernels.cpu_decode_stack import (
    CpuDecodeStack,
    DecoderLayerWeights,
    DecoderStackShape,
)
from membound.kernels.kv_quant import is_fp8
from membound.kernels.triton_utils import HAS_TRITON

logger = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "cpu", "torch", "triton")
Tensor = torch.Tensor


class KernelBackend(enum.Enum):
    TORCH = "torch"  # the references
    CPU = "cpu"  # plain torch tuned for CPUs
    TRITON = "triton"


class KernelOps(Protocol):
    """One backend's data-plane ops. Shapes: tokens T, heads H, KV heads KVH, head dim D."""

    @property
    def backend(self) -> KernelBackend: ...

    def store_kv(self, *, key: Tensor, value: Tensor, kv_cache: Tensor, slot_mapping: Tensor,
                 k_scale: float, v_scale: float) -> None:  # fmt: skip
        """key/value [T, KVH, D] into their slots of kv_cache [2, blocks, block, KVH, D]
        (an FP8 cache stores K / k_scale and V / v_scale; kernels/kv_quant.py)."""

    def plan_decode(self, *, block_tables: Tensor, seq_lens: Tensor, block_size: int,
                    sliding_window: int | None, kv_cache: Tensor) -> object | None:  # fmt: skip
        """This backend's per-step decode metadata (None: it needs none). ``kv_cache``: one
        layer's cache (every layer's has its dtype and shape)."""

    def decode_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
        scale: float, sliding_window: int | None, num_splits: int | None, out: Tensor | None,
        plan: object | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        """query [num_decodes, H, D] -> [num_decodes, H, D] (into ``out`` when given)."""

    def prefill_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor,
        query_start_loc: Tensor, seq_lens: Tensor, scale: float, sliding_window: int | None,
        max_query_len: int, out: Tensor | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        """Prefill chunks through block tables: query [T, H, D] -> [T, H, D]."""

    def varlen_attention(
        self, *, query: Tensor, key: Tensor, value: Tensor, query_start_loc: Tensor,
        scale: float, sliding_window: int | None, max_query_len: int, out: Tensor | None,
    ) -> Tensor:
        """No KV cache: each sequence attends causally to its own tokens."""

    def rms_norm(self, *, x: Tensor, weight: Tensor, eps: float) -> Tensor: ...

    def fused_add_rms_norm(
        self, *, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        """(norm(x + residual), x + residual)."""

    def silu_and_mul(self, *, x: Tensor) -> Tensor:
        """x [..., 2 * d] (gate then up) -> [..., d]."""

    def rotary_embedding(
        self, *, query: Tensor, key: Tensor, cos: Tensor, sin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Rotated query [T, H, D] and key [T, KVH, D] (in place or new tensors)."""

    def moe_gemm(
        self, *, a: Tensor, w: Tensor, sorted_token_ids: Tensor, expert_ids: Tensor,
        num_pairs: int, block_m: int, a_row_div: int, topk_weights: Tensor | None,
    ) -> Tensor:
        """Grouped GEMM of the (token, expert) pairs sorted by expert (kernels/moe_gemm.py)."""

    def pack_linear_weight(self, *, weight: Tensor) -> Tensor | None:
        """This backend's own layout of a float ``[out, in]`` linear weight, for
        ``packed_linear``; None: it has none for this weight (the layer keeps its own)."""

    def packed_linear(self, *, x: Tensor, weight: Tensor, bias: Tensor | None,
                      out_features: int) -> Tensor:  # fmt: skip
        """x [..., in] @ W^T (+ bias) -> [..., out_features], W from ``pack_linear_weight``."""

    def packed_linear_silu_and_mul(self, *, x: Tensor, weight: Tensor, bias: Tensor | None,
                                   out_features: int) -> Tensor:  # fmt: skip
        """``silu_and_mul(packed_linear(...))`` for a gate/up weight of ``out_features`` (gate
        rows, then up rows) -> [..., out_features / 2]."""

    def pack_int8_weight(self, *, weight: Tensor) -> Tensor | None:
        """This backend's layout of an int8 ``[out, in]`` weight for ``int8_linear``; None: it
        has none (the layer keeps its own, with its own numerics)."""

    def int8_linear(self, *, x: Tensor, weight: Tensor, scale: Tensor, input_scale: float,
                    bias: Tensor | None, out_features: int, act_group: int) -> Tensor:  # fmt: skip
        """W8A8 ``x_q @ (W_q * s_w)^T (+ bias)`` -> [..., out_features] in x's dtype, W from
        ``pack_int8_weight``, the activations quantized per row in groups of ``act_group``
        inputs with their own scales (the input features: one per token;
        kernels/cpu_quant_linear.py), or with ``input_scale`` if it is not 0 (static)."""

    def int8_linear_silu_and_mul(self, *, x: Tensor, weight: Tensor, scale: Tensor,
                                 input_scale: float, bias: Tensor | None, out_features: int,
                                 act_group: int) -> Tensor:  # fmt: skip
        """``silu_and_mul(int8_linear(...))`` for a gate/up weight (gate rows, then up)."""

    def argmax_rows(self, *, x: Tensor) -> Tensor:
        """[rows, n] -> [rows] int64: each row's first maximum (its first NaN if it has one),
        as ``x.max(dim=-1).indices``: greedy sampling."""

    def decode_stack(self, *, layers: Sequence[DecoderLayerWeights],
                     shape: DecoderStackShape) -> CpuDecodeStack | None:  # fmt: skip
        """A runner of decode steps through all of ``layers`` in one native call
        (kernels/cpu_decode_stack.py); None where this backend has none for them."""


class TorchOps:
    """The plain-torch references."""

    backend = KernelBackend.TORCH

    def store_kv(self, *, key: Tensor, value: Tensor, kv_cache: Tensor, slot_mapping: Tensor,
                 k_scale: float, v_scale: float) -> None:  # fmt: skip
        kv_store.store_kv_ref(key, value, kv_cache, slot_mapping, k_scale=k_scale,
                              v_scale=v_scale)  # fmt: skip

    def plan_decode(self, *, block_tables: Tensor, seq_lens: Tensor, block_size: int,
                    sliding_window: int | None, kv_cache: Tensor) -> object | None:  # fmt: skip
        return None

    def decode_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
        scale: float, sliding_window: int | None, num_splits: int | None, out: Tensor | None,
        plan: object | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        return paged_attention.paged_decode_attention_ref(
            query, kv_cache, block_tables, seq_lens, scale, sliding_window, num_splits, out,
            k_scale=k_scale, v_scale=v_scale,
        )

    def prefill_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor,
        query_start_loc: Tensor, seq_lens: Tensor, scale: float, sliding_window: int | None,
        max_query_len: int, out: Tensor | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        return prefill_attention.prefill_attention_ref(
            query, kv_cache, block_tables, query_start_loc, seq_lens, scale, sliding_window,
            max_query_len, out, k_scale=k_scale, v_scale=v_scale,
        )

    def varlen_attention(
        self, *, query: Tensor, key: Tensor, value: Tensor, query_start_loc: Tensor,
        scale: float, sliding_window: int | None, max_query_len: int, out: Tensor | None,
    ) -> Tensor:
        return prefill_attention.varlen_attention_ref(
            query, key, value, query_start_loc, scale, sliding_window, max_query_len, out
        )

    def rms_norm(self, *, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        return rms_norm.rms_norm_ref(x, weight, eps)

    def fused_add_rms_norm(
        self, *, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        return rms_norm.fused_add_rms_norm_ref(x, residual, weight, eps)

    def silu_and_mul(self, *, x: Tensor) -> Tensor:
        return activation.silu_and_mul_ref(x)

    def rotary_embedding(
        self, *, query: Tensor, key: Tensor, cos: Tensor, sin: Tensor
    ) -> tuple[Tensor, Tensor]:
        return rotary.rotate_ref(query, cos, sin), rotary.rotate_ref(key, cos, sin)

    def moe_gemm(
        self, *, a: Tensor, w: Tensor, sorted_token_ids: Tensor, expert_ids: Tensor,
        num_pairs: int, block_m: int, a_row_div: int, topk_weights: Tensor | None,
    ) -> Tensor:
        return moe_gemm.moe_gemm_ref(a, w, sorted_token_ids, expert_ids, num_pairs, block_m,
                                     a_row_div, topk_weights)  # fmt: skip

    def pack_linear_weight(self, *, weight: Tensor) -> Tensor | None:
        return None

    def argmax_rows(self, *, x: Tensor) -> Tensor:
        # max(dim) rather than argmax: on CPU 2x faster in float32 and 5x in bf16
        return x.max(dim=-1).indices

    def decode_stack(self, *, layers: Sequence[DecoderLayerWeights],
                     shape: DecoderStackShape) -> CpuDecodeStack | None:  # fmt: skip
        return None

    def packed_linear(self, *, x: Tensor, weight: Tensor, bias: Tensor | None,
                      out_features: int) -> Tensor:  # fmt: skip
        """The reference for any backend's packed weight: its plain ``[out, in]`` form
        through ``F.linear``."""
        return torch.nn.functional.linear(x, cpu_linear.dense_weight(weight, out_features), bias)

    def packed_linear_silu_and_mul(self, *, x: Tensor, weight: Tensor, bias: Tensor | None,
                                   out_features: int) -> Tensor:  # fmt: skip
        """The two ops one after the other (the reference for a fused kernel)."""
        gate_up = self.packed_linear(x=x, weight=weight, bias=bias, out_features=out_features)
        return self.silu_and_mul(x=gate_up)

    def pack_int8_weight(self, *, weight: Tensor) -> Tensor | None:
        return None

    def int8_linear(self, *, x: Tensor, weight: Tensor, scale: Tensor, input_scale: float,
                    bias: Tensor | None, out_features: int, act_group: int) -> Tensor:  # fmt: skip
        """The reference for a packed int8 weight: its plain form through
        ``int8_grouped_linear_ref``, the bias added before the one rounding to x's dtype (as
        the native kernel does)."""
        rows = x.reshape(-1, x.shape[-1])
        plain = cpu_quant_linear.unpack_int8_vnni(weight, out_features)
        static = torch.tensor([input_scale]) if input_scale > 0 else None
        y = cpu_quant_linear.int8_grouped_linear_ref(rows, plain, scale, static, act_group)
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(x.dtype).view(*x.shape[:-1], out_features)

    def int8_linear_silu_and_mul(self, *, x: Tensor, weight: Tensor, scale: Tensor,
                                 input_scale: float, bias: Tensor | None, out_features: int,
                                 act_group: int) -> Tensor:  # fmt: skip
        gate_up = self.int8_linear(x=x, weight=weight, scale=scale, input_scale=input_scale,
                                   bias=bias, out_features=out_features, act_group=act_group)  # fmt: skip
        return self.silu_and_mul(x=gate_up)


class CpuOps(TorchOps):
    """The references, with attention written for CPUs; its decode plan is its metadata.
    With ``native`` (kernels/cpu_native.py, built at start-up where a compiler exists),
    bf16/fp16 decode attention, RMSNorm, rotary and SiLU-and-mul run in C++, and so do a bf16
    model's stores to and attention over an FP8 cache; float32 keeps the torch paths."""

    backend = KernelBackend.CPU

    def __init__(self, native: ModuleType | None = None) -> None:
        self.native = native

    def _native_for(self, x: Tensor) -> ModuleType | None:
        return self.native if self.native is not None and cpu_native.uses_native(x) else None

    def store_kv(self, *, key: Tensor, value: Tensor, kv_cache: Tensor, slot_mapping: Tensor,
                 k_scale: float, v_scale: float) -> None:  # fmt: skip
        native = self._native_for(key)
        if (native is None or not self._native_cache(key, kv_cache) or not kv_cache.is_contiguous()
                or key.stride(-2) != key.shape[-1] or value.stride(-2) != value.shape[-1]
                or key.stride(-1) != 1 or value.stride(-1) != 1):  # fmt: skip
            return super().store_kv(key=key, value=value, kv_cache=kv_cache,
                                    slot_mapping=slot_mapping, k_scale=k_scale, v_scale=v_scale)  # fmt: skip
        native.store_kv(key, value, kv_cache, slot_mapping.long().contiguous(), k_scale, v_scale)

    @staticmethod
    def _native_cache(x: Tensor, kv_cache: Tensor) -> bool:
        """Whether the native kernels read and write ``kv_cache`` for activations like ``x``:
        a cache in their dtype, or an FP8 cache under a bf16 model."""
        return kv_cache.dtype == x.dtype or (is_fp8(kv_cache.dtype) and x.dtype == torch.bfloat16)

    def rms_norm(self, *, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        native = self._native_for(x)
        if native is None or not x.is_contiguous() or weight.dtype != x.dtype:
            return super().rms_norm(x=x, weight=weight, eps=eps)
        return native.rms_norm(x, None, weight, eps)[0]

    def fused_add_rms_norm(
        self, *, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        native = self._native_for(x)
        if (native is None or not (x.is_contiguous() and residual.is_contiguous())
                or weight.dtype != x.dtype or residual.dtype != x.dtype):  # fmt: skip
            return super().fused_add_rms_norm(x=x, residual=residual, weight=weight, eps=eps)
        return native.rms_norm(x, residual, weight, eps)

    def silu_and_mul(self, *, x: Tensor) -> Tensor:
        native = self._native_for(x)
        if native is None or not x.is_contiguous():
            return super().silu_and_mul(x=x)
        return native.silu_and_mul(x)

    def rotary_embedding(
        self, *, query: Tensor, key: Tensor, cos: Tensor, sin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """In place on ``query`` and ``key`` (what the Triton kernel does too)."""
        native = self._native_for(query)
        if native is None or query.stride(-1) != 1 or key.stride(-1) != 1:
            return super().rotary_embedding(query=query, key=key, cos=cos, sin=sin)
        native.rotary_embedding(query, key, cos.float().contiguous(), sin.float().contiguous())
        return query, key

    def plan_decode(self, *, block_tables: Tensor, seq_lens: Tensor, block_size: int,
                    sliding_window: int | None, kv_cache: Tensor) -> object | None:  # fmt: skip
        """The native kernel's index tensors where it will serve the step (a bf16/fp16 or FP8
        cache), else the torch path's length buckets; built once per step for every layer."""
        if self.native is not None and (cpu_native.uses_native(kv_cache) or is_fp8(kv_cache.dtype)):
            return cpu_native.NativeDecodePlan.build(block_tables, seq_lens)
        return cpu_attention.plan_decode(block_tables, seq_lens, block_size, sliding_window,
                                         cpu_attention.decode_bytes_per_token(kv_cache))  # fmt: skip

    def decode_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
        scale: float, sliding_window: int | None, num_splits: int | None, out: Tensor | None,
        plan: object | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        native = self._native_for(query)
        if native is not None and self._native_cache(query, kv_cache) and query.stride(-1) == 1:
            if not isinstance(plan, cpu_native.NativeDecodePlan):
                plan = cpu_native.NativeDecodePlan.build(block_tables, seq_lens)
            out = torch.empty_like(query) if out is None else out
            return native.decode_attention(query, kv_cache, plan.block_tables, plan.seq_lens,
                                           scale, sliding_window or 0, out, k_scale, v_scale)  # fmt: skip
        if not isinstance(plan, cpu_attention.DecodePlan):
            plan = None  # built for the native kernel: the torch path plans for itself
        return cpu_attention.paged_decode_attention_cpu(
            query, kv_cache, block_tables, seq_lens, scale, sliding_window, num_splits, out,
            k_scale=k_scale, v_scale=v_scale, plan=plan,
        )

    def prefill_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor,
        query_start_loc: Tensor, seq_lens: Tensor, scale: float, sliding_window: int | None,
        max_query_len: int, out: Tensor | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        native = self._native_for(query)
        if (native is not None and query.dtype == torch.bfloat16 and self._native_cache(query, kv_cache)
                and query.stride(-1) == 1 and native.prefill_supported(query.shape[-1])):  # fmt: skip
            out = torch.empty_like(query) if out is None else out
            return native.prefill_attention(
                query, kv_cache, block_tables.long().contiguous(), query_start_loc.long(),
                seq_lens.long(), scale, sliding_window or 0, out, k_scale, v_scale)  # fmt: skip
        return cpu_attention.prefill_attention_cpu(
            query, kv_cache, block_tables, query_start_loc, seq_lens, scale, sliding_window,
            max_query_len, out, k_scale=k_scale, v_scale=v_scale,
        )

    def pack_linear_weight(self, *, weight: Tensor) -> Tensor | None:
        """A bf16 weight VNNI-packed for the native GEMM where it serves (kernels/cpu_linear.py:
        a CPU whose GEMM ukernel packs bf16); None elsewhere (oneDNN's prepack then)."""
        if (self.native is None or weight.dim() != 2 or weight.dtype != torch.bfloat16
                or not weight.is_cpu or not self.native.linear_supported(weight.shape[1])):  # fmt: skip
            return None
        return cpu_linear.pack_vnni(weight)

    def packed_linear(self, *, x: Tensor, weight: Tensor, bias: Tensor | None,
                      out_features: int) -> Tensor:  # fmt: skip
        if self.native is None or x.dtype != torch.bfloat16:
            return super().packed_linear(x=x, weight=weight, bias=bias, out_features=out_features)
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = self.native.linear_vnni(rows, weight, out_features, bias)
        return y.view(*x.shape[:-1], out_features)

    def packed_linear_silu_and_mul(self, *, x: Tensor, weight: Tensor, bias: Tensor | None,
                                   out_features: int) -> Tensor:  # fmt: skip
        """The native GEMM with SiLU-and-mul in its epilogue where the intermediate size is
        a multiple of its 64-column blocks (bit-equal to the two ops: csrc ``linear_vnni_silu``)."""
        inter = out_features // 2
        if (self.native is None or x.dtype != torch.bfloat16 or out_features % 2
                or not self.native.linear_silu_supported(x.shape[-1], inter)):  # fmt: skip
            return super().packed_linear_silu_and_mul(x=x, weight=weight, bias=bias,
                                                      out_features=out_features)  # fmt: skip
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        return self.native.linear_vnni_silu(rows, weight, inter, bias).view(*x.shape[:-1], inter)

    def pack_int8_weight(self, *, weight: Tensor) -> Tensor | None:
        """An int8 weight packed for the native W8A8 GEMM where it serves (AVX512-VNNI, in
        features a multiple of 64: kernels/cpu_quant_linear.py); None elsewhere."""
        if (self.native is None or weight.dim() != 2 or weight.dtype != torch.int8
                or not weight.is_cpu or not self.native.int8_linear_supported(weight.shape[1])):  # fmt: skip
            return None
        return cpu_quant_linear.pack_int8_vnni(weight)

    def int8_linear(self, *, x: Tensor, weight: Tensor, scale: Tensor, input_scale: float,
                    bias: Tensor | None, out_features: int, act_group: int) -> Tensor:  # fmt: skip
        if self.native is None or x.dtype != torch.bfloat16:
            return super().int8_linear(x=x, weight=weight, scale=scale,
                                       input_scale=input_scale, bias=bias,
                                       out_features=out_features, act_group=act_group)  # fmt: skip
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = self.native.linear_int8(rows, weight, scale, out_features, input_scale, bias,
                                    act_group)
        return y.view(*x.shape[:-1], out_features)

    def int8_linear_silu_and_mul(self, *, x: Tensor, weight: Tensor, scale: Tensor,
                                 input_scale: float, bias: Tensor | None, out_features: int,
                                 act_group: int) -> Tensor:  # fmt: skip
        """The native W8A8 GEMM with SiLU-and-mul in its epilogue (bit-equal to the two ops)
        where the intermediate size is a multiple of its 64-column blocks."""
        inter = out_features // 2
        if (self.native is None or x.dtype != torch.bfloat16 or out_features % 2
                or not self.native.int8_silu_supported(x.shape[-1], inter)):  # fmt: skip
            return super().int8_linear_silu_and_mul(
                x=x, weight=weight, scale=scale, input_scale=input_scale, bias=bias,
                out_features=out_features, act_group=act_group)  # fmt: skip
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = self.native.linear_int8_silu(rows, weight, scale, inter, input_scale, bias, act_group)
        return y.view(*x.shape[:-1], inter)

    def argmax_rows(self, *, x: Tensor) -> Tensor:
        """Native for bf16/float32 rows (~7x torch's reduction on [64, 49152] bf16 logits)."""
        if (self.native is None or not x.is_cpu or x.dim() != 2 or x.shape[1] == 0
                or x.stride(-1) != 1 or x.dtype not in (torch.bfloat16, torch.float32)):  # fmt: skip
            return super().argmax_rows(x=x)
        return self.native.argmax_rows(x)

    def decode_stack(self, *, layers: Sequence[DecoderLayerWeights],
                     shape: DecoderStackShape) -> CpuDecodeStack | None:  # fmt: skip
        """The native stack where the native kernels are here and every layer is bf16."""
        if self.native is None or not layers or not all(w.bf16() for w in layers):
            return None
        return CpuDecodeStack(self.native, layers, shape)

    def varlen_attention(
        self, *, query: Tensor, key: Tensor, value: Tensor, query_start_loc: Tensor,
        scale: float, sliding_window: int | None, max_query_len: int, out: Tensor | None,
    ) -> Tensor:
        return cpu_attention.varlen_attention_cpu(
            query, key, value, query_start_loc, scale, sliding_window, max_query_len, out
        )


class TritonOps(TorchOps):
    """The Triton kernels (every op has one)."""

    backend = KernelBackend.TRITON

    def store_kv(self, *, key: Tensor, value: Tensor, kv_cache: Tensor, slot_mapping: Tensor,
                 k_scale: float, v_scale: float) -> None:  # fmt: skip
        kv_store.store_kv(key, value, kv_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale)

    def decode_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
        scale: float, sliding_window: int | None, num_splits: int | None, out: Tensor | None,
        plan: object | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        return paged_attention.paged_decode_attention(
            query, kv_cache, block_tables, seq_lens, scale, sliding_window, num_splits, out,
            k_scale=k_scale, v_scale=v_scale,
        )

    def prefill_attention(
        self, *, query: Tensor, kv_cache: Tensor, block_tables: Tensor,
        query_start_loc: Tensor, seq_lens: Tensor, scale: float, sliding_window: int | None,
        max_query_len: int, out: Tensor | None, k_scale: float, v_scale: float,
    ) -> Tensor:
        return prefill_attention.prefill_attention(
            query, kv_cache, block_tables, query_start_loc, seq_lens, scale, sliding_window,
            max_query_len, out, k_scale=k_scale, v_scale=v_scale,
        )

    def varlen_attention(
        self, *, query: Tensor, key: Tensor, value: Tensor, query_start_loc: Tensor,
        scale: float, sliding_window: int | None, max_query_len: int, out: Tensor | None,
    ) -> Tensor:
        return prefill_attention.varlen_attention(
            query, key, value, query_start_loc, scale, sliding_window, max_query_len, out
        )

    def rms_norm(self, *, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        return rms_norm.rms_norm(x, weight, eps)

    def fused_add_rms_norm(
        self, *, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        return rms_norm.fused_add_rms_norm(x, residual, weight, eps)

    def silu_and_mul(self, *, x: Tensor) -> Tensor:
        return activation.silu_and_mul(x)

    def rotary_embedding(
        self, *, query: Tensor, key: Tensor, cos: Tensor, sin: Tensor
    ) -> tuple[Tensor, Tensor]:
        rotary.rotary_embedding(query, key, cos, sin)  # in place
        return query, key

    def moe_gemm(
        self, *, a: Tensor, w: Tensor, sorted_token_ids: Tensor, expert_ids: Tensor,
        num_pairs: int, block_m: int, a_row_div: int, topk_weights: Tensor | None,
    ) -> Tensor:
        return moe_gemm.moe_gemm(a, w, sorted_token_ids, expert_ids, num_pairs, block_m,
                                 a_row_div, topk_weights)  # fmt: skip


TORCH_OPS: KernelOps = TorchOps()
CPU_OPS: KernelOps = CpuOps()
TRITON_OPS: KernelOps = TritonOps()


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


def select_kernel_ops(device: torch.device, requested: str = "auto") -> KernelOps:
    """The backend object every layer is built with; chosen once, from config and device.
    The CPU backend gets the native kernels here (built on first use; None where they
    cannot be)."""
    backend = select_kernel_backend(device, requested)
    if backend is KernelBackend.CPU:
        if (line := cpu_hugepages.hint()) is not None:
            logger.info("%s", line)
        return CpuOps(native=cpu_native.load_native_cpu_kernels())
    return kernel_ops(backend)
