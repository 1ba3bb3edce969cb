"""INT8 W8A8: symmetric per-channel weights, symmetric per-token (or static) activations.

Stored like FP8 (see fp8.py) with ``weight`` int8 in [-127, 127]:
``y = (x_q @ W_q^T) * s_x * s_w``, the integer dot products exact in int32.

Compute: ``torch._int_mm`` (int8 x int8 -> int32 on tensor cores) on CUDA when the shapes
allow it (K and N multiples of 8; M is padded past 16). Under the CPU kernel backend the
layer of a bf16 model runs membound's native int8 GEMM where the CPU has AVX512-VNNI and the
input features are a multiple of 64 (csrc ``linear_int8``; the weight packed once by
``pack_int8_vnni``, kernels/cpu_quant_linear.py). There membound's own int8
(``quantization="int8"`` on a float checkpoint) quantizes dynamic activations per token **in
groups of 64 inputs**, each with its own scale (``int8_grouped_linear_ref``: per-token scales
alone cost SmolLM2-135M five times weight-only int8's KL divergence, groups 1.6 times,
perplexity level), each group's integer sum exact, scaled and summed in float32 and rounded
to bf16 once (bias included); a compressed-tensors checkpoint gets the per-token scales it
declares (one group of all the inputs, as vLLM and the CUDA path compute it), and a static
``input_scale`` serves the whole row. Where it does not
serve, a bf16 model's layer runs **weight-only** (W8A16): activations stay bf16 and torch's
packed CPU kernel ``_weight_int8pack_mm`` dequantizes the int8 weight inside the product;
``input_scale`` is not used there (activations are not quantized, which only removes
rounding). Elsewhere (fp32 models included) ``int8_linear_ref``: per-token scales, exact
integer products through float64. Checkpoint layouts: "compressed-tensors" (int-quantized,
``weight_scale`` [out, 1]) and "float" (quantization="int8" on a float checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from membound.kernels.cpu_decode_stack import LinearKind, StackLinear
from membound.kernels.cpu_quant_linear import (
    INT8_ACT_GROUP,
    INT8_KERNEL_MAX_ROWS,
    INT8_MAX,
    KERNEL_DTYPE,
    has_cpu_quant_kernels,
    int8_linear_ref,
    int8_weight_only_linear,
    quantize_int8,
    unpack_int8_vnni,
)
from membound.layers.quantization.base import flatten_tokens, register_method
from membound.layers.quantization.fp8 import ScaledW8A8Method


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
    # whether the CPU backend runs its native W8A8 GEMM where it can; False: weight-only there
    # (GGUF's int8: bf16 per-row scales as that kernel reads them, docs/gguf.md's figures)
    w8a8_on_cpu = True

    def quantize_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = quantize_int8(w)
        return q, s.reshape(-1)

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        super().create_weights(layer, input_size, output_sizes, dtype)
        layer.activation_dtype = dtype  # the model dtype: bf16 models use the CPU kernels
        layer.cpu_weight_only = False  # set after loading on the CPU backend
        layer.cpu_w8a8 = False  # (one of the two at most)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        n, k = layer.weight.shape
        dev = layer.weight.device
        layer.use_fast_matmul = (
            dev.type == "cuda" and hasattr(torch, "_int_mm") and n % 8 == 0 and k % 8 == 0
        )
        if not self._use_cpu_w8a8(layer):
            self._use_cpu_weight_only(layer)

    def _on_cpu_backend(self, layer: nn.Module) -> bool:
        """A bf16 layer under the CPU backend (fp32 / fp16 models keep the reference)."""
        return (layer.kernel_backend == "cpu" and layer.weight.device.type == "cpu"
                and layer.activation_dtype == KERNEL_DTYPE)  # fmt: skip

    def _use_cpu_w8a8(self, layer: nn.Module) -> bool:
        """The CPU backend's native int8 GEMM (AVX512-VNNI), where it serves: the weight
        packed for it once; W8A8 with the activations quantized in groups of 64 inputs
        (kernels/cpu_quant_linear.py)."""
        if not (self.w8a8_on_cpu and self._on_cpu_backend(layer)):
            return False
        packed = layer.ops.pack_int8_weight(weight=layer.weight)
        if packed is None:
            return False
        if self.static and not float(layer.input_scale) > 0:
            raise ValueError(f"{layer.prefix}: the static int8 input_scale is "
                             f"{float(layer.input_scale)}; it must be positive (is the "
                             "checkpoint's input_scale missing?)")  # fmt: skip
        layer.weight = nn.Parameter(packed, requires_grad=False)
        layer.cpu_w8a8 = True
        return True

    def _use_cpu_weight_only(self, layer: nn.Module) -> None:
        """Elsewhere the CPU backend runs weight-only through ``_weight_int8pack_mm``, whose
        scales are bf16: they are stored so (the kernel's numerics, which ``dequantize``
        reports)."""
        if not self._on_cpu_backend(layer) or not has_cpu_quant_kernels():
            return
        scale = layer.weight_scale.detach().to(KERNEL_DTYPE)
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)
        layer.cpu_weight_only = True

    def _static_scale(self, layer: nn.Module) -> float:
        """The native kernel's input_scale argument: the static scale, or 0 (dynamic)."""
        return float(layer.input_scale) if self.static else 0.0

    def _act_group(self, layer: nn.Module) -> int:
        """The native kernel's activation inputs per scale: groups of ``INT8_ACT_GROUP`` for
        membound's own int8, the whole row for a checkpoint's declared per-token scales
        (config/quantization.py refuses any other); a static scale the kernel itself applies
        to the whole row (csrc ``check_int8_act``)."""
        assert self.config is not None
        return layer.input_size if self.config.prequantized else INT8_ACT_GROUP

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        """The CPU backend's layout, where the layer uses one: the native W8A8 GEMM's, or the
        packed weight-only kernel's."""
        if layer.cpu_w8a8:
            return StackLinear(LinearKind.INT8_W8A8, layer.weight, layer.bias,
                               layer.output_size, layer.weight_scale,
                               group_size=self._act_group(layer),
                               input_scale=self._static_scale(layer))  # fmt: skip
        if not layer.cpu_weight_only:
            return None
        return StackLinear(LinearKind.INT8, layer.weight, layer.bias, layer.output_size,
                           layer.weight_scale, max_rows=INT8_KERNEL_MAX_ROWS)  # fmt: skip

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        if layer.cpu_w8a8:
            weight = unpack_int8_vnni(layer.weight.detach(), layer.output_size)
            return weight.to(torch.float32) * layer.weight_scale[:, None]
        return super().dequantize(layer)

    def _native_args(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> dict:
        return dict(x=x, weight=layer.weight, scale=layer.weight_scale,
                    input_scale=self._static_scale(layer), bias=bias,
                    out_features=layer.output_size, act_group=self._act_group(layer))  # fmt: skip

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if layer.cpu_w8a8:
            return layer.ops.int8_linear(**self._native_args(layer, x, bias))
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

    def apply_silu_and_mul(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if layer.cpu_w8a8:  # the native GEMM fuses the activation into its epilogue
            return layer.ops.int8_linear_silu_and_mul(**self._native_args(layer, x, bias))
        return super().apply_silu_and_mul(layer, x, bias)
