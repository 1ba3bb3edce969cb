"""GGUF blocks kept quantized in memory: int4 blocks in the int4 layout, the rest int8.

**int4** (method "gguf"): Q4_0, Q4_1, Q4_K, represented exactly.

The loader (membound/gguf/loader.py) decodes each GGUF tensor straight into int4_rtn.py's
stored layout (group size 32), so loading is a copy of output columns:

    qweight [in // 8, out] int32 (8 values per word along the input)
    scales  [in // 32, out]   zeros [in // 32, out]   (float)
    W^T[k, n] = (q[k, n] - zeros[k // 32, n]) * scales[k // 32, n]
 Unlike AWQ/GPTQ the zero points are real numbers (Q4_1 and Q4_K store a
minimum, not an integer zero), so ``zeros`` is held in the model dtype rather than uint8.
Compute is the int4 layers' own (``Int4LinearMethod.apply``: the CPU path), except that
the Triton kernel, which reads uint8 zeros, is replaced by dequantize + GEMM.

**int8** (method "gguf_int8", for the modules ``QuantizationConfig.int8_modules`` names):
Q8_0, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, Q6_K (and a fused layer mixing them with int4 blocks).
Their per-block scales have no exact per-row form, so the loader hands the dequantized
weight and each output row is requantized symmetric int8 with one scale (lossy; the error
is measured in benchmarks/results/gguf/). Stored and computed as int8.py's weight-only path:
``weight`` int8 ``[out, in]``, ``weight_scale`` ``[out]``; the CPU backend in a bf16 model
runs ``_weight_int8pack_mm`` (kernels/cpu_quant_linear.py, dequantize + GEMM above
``INT8_KERNEL_MAX_ROWS`` rows), every other case ``int8_weight_only_linear_ref``. Activations are
never quantized.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from membound.kernels.cpu_quant_linear import (
    KERNEL_DTYPE,
    int8_weight_only_linear,
    int8_weight_only_linear_ref,
)
from membound.kernels.int4_gemm import int4_gemm_ref
from membound.layers.quantization.base import (
    QuantizeOnLoad,
    TensorSpec,
    check_kind,
    copy_slice,
    flatten_tokens,
    new_param,
    on_device,
    register_method,
    spec,
)
from membound.layers.quantization.int4_rtn import Int4LinearMethod, quantize_int4_rtn
from membound.layers.quantization.int8 import Int8LinearMethod, quantize_int8_rows


@register_method("gguf")
class GGUFInt4LinearMethod(Int4LinearMethod):
    name = "gguf"

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        super().create_weights(layer, input_size, output_sizes, dtype)
        new_param(layer, "zeros", tuple(layer.zeros.shape), dtype)  # fractional zero points

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        groups = input_size // self.group_size(input_size)
        return {
            "qweight": spec((input_size // 8, output_size), kinds=("int32",)),
            "scales": spec((groups, output_size)),
            "zeros": spec((groups, output_size)),
        }

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        if suffix not in ("qweight", "scales", "zeros"):
            raise KeyError(name)
        check_kind(loaded, ("int32",) if suffix == "qweight" else ("float",), name)
        param = getattr(layer, suffix)
        copy_slice(
            param, on_device(layer, loaded, suffix).to(param.dtype), 1, rows[0], rows[1], name
        )

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        """Dummy weights: round-to-nearest int4 (integer zero points)."""
        q, s, z = quantize_int4_rtn(weight.to(layer.qweight.device), layer.group_size)
        self.store_columns(layer, rows, q=q.t(), scales=s.t())
        copy_slice(layer.zeros, z.t().to(layer.zeros.dtype), 1, rows[0], rows[1], "zeros")

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The int4 layers' own compute, except the Triton kernel (it reads uint8 zeros)."""
        if getattr(layer, "kernel_backend", "torch") != "triton":
            return super().apply(layer, x, bias)
        x2, lead = flatten_tokens(x)  # [M, K]
        y = int4_gemm_ref(x2, layer.qweight, layer.scales, layer.zeros, layer.group_size)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, -1)


@register_method("gguf_int8")
class GGUFInt8LinearMethod(QuantizeOnLoad, Int8LinearMethod):
    """Weight-only int8, per output row, quantized from the dequantized GGUF weight."""

    name = "gguf_int8"
    w8a8_on_cpu = False  # weight-only on the CPU backend (torch's packed kernel)

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        """Per row, against the scale as the kernel will read it (bf16 in a bf16 model)."""
        dtype = KERNEL_DTYPE if layer.activation_dtype == KERNEL_DTYPE else torch.float32
        q, s = quantize_int8_rows(weight.to(layer.weight.device), dtype)
        copy_slice(layer.weight, q, 0, rows[0], rows[1], "weight")
        copy_slice(layer.weight_scale, s.to(torch.float32), 0, rows[0], rows[1], "weight_scale")

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2, lead = flatten_tokens(x)  # [M, K]
        if layer.cpu_weight_only:
            y = int8_weight_only_linear(x2, layer.weight, layer.weight_scale)
        else:
            y = int8_weight_only_linear_ref(x2, layer.weight, layer.weight_scale)
        y = y.to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, -1)
