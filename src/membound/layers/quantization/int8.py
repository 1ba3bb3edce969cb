"""INT8 W8A8: symmetric per-channel weights, symmetric per-token (or static) activations.

Stored like FP8 (see fp8.py) with ``weight`` int8 in [-127, 127]:
``y = (x_q @ W_q^T) * s_x * s_w``, the integer dot products exact in int32.

Compute: ``torch._int_mm`` (int8 x int8 -> int32 on tensor cores) on CUDA when the shapes
allow it (K and N multiples of 8; M is padded past 16). Under the CPU kernel backend the
layer of a bf16 model runs **weight-only** (W8A16): activations stay bf16 and torch's packed CPU kernel
``_weight_int8pack_mm`` dequantizes the int8 weight inside the product
(kernels/cpu_quant_linear.py); ``input_scale`` is not used there (activations are not
quantized, which only removes rounding). Elsewhere ``int8_linear_ref``, exact integer
products through float64. Checkpoint layouts: "compressed-tensors" (int-quantized,
``weight_scale`` [out, 1]) and "float" (quantization="int8" on a float checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from membound.kernels.cpu_decode_stack import LinearKind, StackLinear
from membound.kernels.cpu_quant_linear import (
    INT8_KERNEL_MAX_ROWS,
    KERNEL_DTYPE,
    has_cpu_quant_kernels,
    int8_weight_only_linear,
)
from membound.layers.quantization.base import flatten_tokens, register_method
from membound.layers.quantization.fp8 import ScaledW8A8Method

INT8_MAX = 127.0
_MIN_SCALE = 1e-12


def quantize_int8(
    x: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x [M, K]`` -> (int8 values, float32 scales [M, 1]), symmetric round-to-nearest;
    a given ``scale`` (static, per tensor) is used for every row."""
    xf = x.to(torch.float32)
    if scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp(min=_MIN_SCALE)
    else:
        scale = scale.to(torch.float32).reshape(1, 1).expand(x.shape[0], 1)
    q = torch.round(xf / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale.contiguous()


def quantize_int8_rows(
    x: torch.Tensor, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x [M, K]`` -> (int8 values, scales [M] in ``scale_dtype``), symmetric
    round-to-nearest against each scale as stored (rounded to ``scale_dtype`` first, so a
    bf16 scale costs no extra error); an all-zero row gets scale 1."""
    xf = x.to(torch.float32)
    scale = (xf.abs().amax(dim=-1) / INT8_MAX).to(scale_dtype)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xf / scale.to(torch.float32)[:, None]).clamp_(-INT8_MAX, INT8_MAX)
    return q.to(torch.int8), scale


def int8_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None,
) -> torch.Tensor:
    """x [M, K] -> [M, N] float32; integer products exact (float64 holds them)."""
    xq, xs = quantize_int8(x, input_scale)
    acc = xq.to(torch.float64) @ weight.to(torch.float64).t()  # [M, N] exact int sums
    return (acc * xs.to(torch.float64) * weight_scale.to(torch.float64)[None, :]).float()


def int8_linear_int_mm(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None,
) -> torch.Tensor:
    """The same product through ``torch._int_mm`` (needs more than 16 rows: pad)."""
    xq, xs = quantize_int8(x, input_scale)
    m = xq.shape[0]
    if m <= 16:
        xq = F.pad(xq, (0, 0, 0, 17 - m))
    acc = torch._int_mm(xq, weight.t())[:m]  # [M, N] int32
    return acc.to(torch.float32) * xs * weight_scale[None, :]


@register_method("int8")
class Int8LinearMethod(ScaledW8A8Method):
    name = "int8"
    qdtype = torch.int8
    kind = "int8"

    def quantize_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = quantize_int8(w)
        return q, s.reshape(-1)

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        super().create_weights(layer, input_size, output_sizes, dtype)
        layer.activation_dtype = dtype  # the model dtype: bf16 models use the CPU kernel
        layer.cpu_weight_only = False  # set after loading on the CPU backend

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        n, k = layer.weight.shape
        dev = layer.weight.device
        layer.use_fast_matmul = (
            dev.type == "cuda" and hasattr(torch, "_int_mm") and n % 8 == 0 and k % 8 == 0
        )
        self._use_cpu_weight_only(layer)

    def _use_cpu_weight_only(self, layer: nn.Module) -> None:
        """The CPU backend runs weight-only through ``_weight_int8pack_mm``, whose scales
        are bf16: they are stored so (the kernel's numerics, which ``dequantize`` reports)."""
        if (
            layer.kernel_backend != "cpu"
            or layer.weight.device.type != "cpu"
            or layer.activation_dtype != KERNEL_DTYPE  # fp32 / fp16 models keep W8A8's numerics
            or not has_cpu_quant_kernels()
        ):
            return
        scale = layer.weight_scale.detach().to(KERNEL_DTYPE)
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)
        layer.cpu_weight_only = True

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        """The packed CPU weight-only kernel's layout, where the layer uses it."""
        if not layer.cpu_weight_only:
            return None
        return StackLinear(LinearKind.INT8, layer.weight, layer.bias, layer.output_size,
                           layer.weight_scale, max_rows=INT8_KERNEL_MAX_ROWS)  # fmt: skip

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        x2, lead = flatten_tokens(x)  # [M, K]
        if layer.cpu_weight_only:
            y = int8_weight_only_linear(x2, layer.weight, layer.weight_scale).to(x.dtype)
        else:
            scale = self._input_scale(layer)
            fn = int8_linear_int_mm if layer.use_fast_matmul else int8_linear_ref
            y = fn(x2, layer.weight, layer.weight_scale, scale).to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, -1)
