"""INT4 weight-only, membound's one in-memory layout (shared by AWQ, GPTQ and RTN), and
quantization="int4": round-to-nearest, asymmetric, group-wise quantization of a float
checkpoint while it loads.

Stored per layer (see kernels/int4_gemm.py for the layout):

    qweight [in // 8, out] int32     4-bit values packed along the input dim, 8 per word
    scales  [in // G, out]           the model dtype
    zeros   [in // G, out] uint8     W[k, n] = (q[k, n] - zeros[k // G, n]) * scales[k // G, n]
    perm    [in] int32 buffer        act-order only: weight row k multiplies x[:, perm[k]]

Compute, when the layer's kernel backend is Triton: ``int4_gemm`` (the fused
dequantize-in-the-GEMM kernel for small batches, where decode is memory-bound and 4-bit
weights are the win; for larger ones a Triton dequantize straight into the activation dtype
plus the BLAS GEMM). Under the CPU kernel backend the weight is repacked once, after loading, into the layout of torch's
CPU int4 kernel (``_weight_int4pack_mm_for_cpu``, bf16 activations; more than a few rows:
dequantize to bf16 + GEMM; kernels/cpu_quant_linear.py) when the shapes allow it (output
size a multiple of 64, group size 32..256); the stored view is then ``cpu_qweight``
[out, in // 2] uint8 + ``cpu_scales_zeros`` [in // G, out, 2] bf16, and qweight / scales /
zeros are released. Otherwise the torch reference.

quantization="int4" on a float checkpoint uses the config's group size (128) where it
divides a layer's input size, else the largest of 64 and 32 that does (SmolLM2's 576).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from membound.kernels.cpu_decode_stack import LinearKind, StackLinear
from membound.kernels.cpu_quant_linear import (
    INT4_KERNEL_MAX_ROWS,
    dequantize_int4_cpu,
    has_cpu_quant_kernels,
    int4_cpu_linear,
    int4_cpu_supports,
    pack_int4_cpu,
)
from membound.kernels.int4_gemm import (
    int4_gemm,
    int4_gemm_ref,
    kernel_supports,
    pack_int4,
    unpack_int4,
)
from membound.layers.quantization.base import (
    QuantizationMethod,
    QuantizeOnLoad,
    check_kind,
    copy_slice,
    flatten_tokens,
    new_param,
    register_method,
    require_multiple,
)

QMAX = 15


def quantize_int4_rtn(
    w: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float ``[rows, in]`` -> (q uint8 [rows, in], scales [rows, in // G] float32,
    zeros uint8 [rows, in // G]); asymmetric min/max per group, as AutoAWQ computes it."""
    rows, k = w.shape
    g = w.to(torch.float32).reshape(rows, k // group_size, group_size)
    wmax, wmin = g.amax(dim=-1), g.amin(dim=-1)
    scales = ((wmax - wmin) / QMAX).clamp(min=1e-5)
    zeros = torch.round(-wmin / scales).clamp(0, QMAX)
    q = torch.round(g / scales[..., None]) + zeros[..., None]
    q = q.clamp(0, QMAX).to(torch.uint8).reshape(rows, k)
    return q, scales, zeros.to(torch.uint8)


class Int4LinearMethod(QuantizeOnLoad, QuantizationMethod):
    """The stored layout and compute of every 4-bit weight-only method."""

    device_param = "qweight"  # a float checkpoint weight is quantized on qweight's device

    def group_size(self, input_size: int) -> int:
        assert self.config is not None
        return self.config.group_size or input_size  # None: one group (per channel)

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        g = self.group_size(input_size)
        require_multiple(layer, "in_features", input_size, g, "the group size")
        require_multiple(layer, "in_features", input_size, 8, "8 int4 values per int32")
        out = sum(output_sizes)
        new_param(layer, "qweight", (input_size // 8, out), torch.int32)
        new_param(layer, "scales", (input_size // g, out), dtype)
        new_param(layer, "zeros", (input_size // g, out), torch.uint8)
        layer.register_buffer("perm", None, persistent=False)
        layer.group_size = g

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        q, s, z = quantize_int4_rtn(weight.to(layer.qweight.device), layer.group_size)
        self.store_columns(layer, rows, q=q.t(), scales=s.t(), zeros=z.t())

    @staticmethod
    def store_columns(
        layer: nn.Module, rows: tuple[int, int], *, q: torch.Tensor | None = None,
        scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None, name: str = "?",
    ) -> None:
        """Write output columns ``[start, start+size)``: q [in, size] values 0..15 (packed
        here), scales / zeros [in // G, size]."""
        start, size = rows
        if q is not None:
            copy_slice(layer.qweight, pack_int4(q, 0), 1, start, size, name)
        if scales is not None:
            copy_slice(layer.scales, scales, 1, start, size, name)
        if zeros is not None:
            copy_slice(layer.zeros, zeros.to(torch.uint8), 1, start, size, name)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """CPU backend: repack for torch's CPU int4 kernel where the shapes allow it
        (subclasses run their own steps, e.g. GPTQ's act-order permutation, first)."""
        k8, n = layer.qweight.shape
        if (
            layer.kernel_backend != "cpu"
            or layer.qweight.device.type != "cpu"
            or layer.scales.dtype != torch.bfloat16  # fp32 / fp16 models keep the reference

            or not has_cpu_quant_kernels()
            or not int4_cpu_supports(n, k8 * 8, layer.group_size)
        ):
            return
        packed, scales_zeros = pack_int4_cpu(
            unpack_int4(layer.qweight.detach(), 0), layer.scales.detach(), layer.zeros.detach()
        )
        for name in ("qweight", "scales", "zeros"):  # the packed copy is the only one
            layer.register_parameter(name, None)
        new_param(layer, "cpu_qweight", packed.shape, packed.dtype)
        new_param(layer, "cpu_scales_zeros", scales_zeros.shape, scales_zeros.dtype)
        with torch.no_grad():
            layer.cpu_qweight.copy_(packed)
            layer.cpu_scales_zeros.copy_(scales_zeros)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        x2, lead = flatten_tokens(x)  # [M, K]
        if getattr(layer, "cpu_qweight", None) is not None:
            if layer.perm is not None:  # weight row k multiplies x[:, perm[k]]
                x2 = x2.index_select(1, layer.perm.to(torch.int64))
            y = int4_cpu_linear(x2, layer.cpu_qweight, layer.cpu_scales_zeros, layer.group_size)
            y = y.to(x.dtype) if bias is None else y.to(x.dtype) + bias
            return y.reshape(*lead, -1)
        args = (layer.qweight, layer.scales, layer.zeros, layer.group_size, layer.perm)
        use_triton = (
            getattr(layer, "kernel_backend", "torch") == "triton"
            and kernel_supports(layer.group_size)
            and x2.dtype in (torch.float16, torch.bfloat16, torch.float32)
        )
        y = int4_gemm(x2.contiguous(), *args) if use_triton else int4_gemm_ref(x2, *args)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, -1)

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        """The packed CPU kernel's layout (not with an act-order permutation)."""
        if getattr(layer, "cpu_qweight", None) is None or layer.perm is not None:
            return None
        return StackLinear(LinearKind.INT4, layer.cpu_qweight, layer.bias, layer.output_size,
                           layer.cpu_scales_zeros, layer.group_size, INT4_KERNEL_MAX_ROWS)  # fmt: skip

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        from membound.kernels.int4_gemm import dequantize_int4_ref

        if getattr(layer, "cpu_qweight", None) is not None:  # [out, in] -> [in, out]
            w = dequantize_int4_cpu(layer.cpu_qweight, layer.cpu_scales_zeros, layer.group_size)
            w = w.to(torch.float32).t()
        else:
            w = dequantize_int4_ref(layer.qweight, layer.scales, layer.zeros, layer.group_size)
        if layer.perm is not None:  # weight row k belongs to input column perm[k]
            w = torch.empty_like(w).index_copy_(0, layer.perm.to(torch.int64), w)
        return w.t().contiguous()  # [out, in]

    # ---- shared by the checkpoint formats -------------------------------------------------

    @staticmethod
    def check_int32(loaded: torch.Tensor, name: str) -> None:
        check_kind(loaded, ("int32",), name)

    @staticmethod
    def unpack_columns(
        loaded: torch.Tensor, order: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """int32 words packed along the output dim -> uint8 [rows, out]."""
        return unpack_int4(loaded, 1, order)


@register_method("int4")
class Int4RTNLinearMethod(Int4LinearMethod):
    name = "int4"

    def group_size(self, input_size: int) -> int:
        """The config's group size where it divides ``input_size``, else 64 or 32."""
        g = super().group_size(input_size)
        if input_size % g == 0:
            return g
        return next((s for s in (64, 32) if s < g and input_size % s == 0), g)
