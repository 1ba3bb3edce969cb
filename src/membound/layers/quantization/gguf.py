"""GGUF int4 blocks (Q4_0, Q4_1, Q4_K) kept 4-bit in memory, in the int4 layout.

The loader (membound/gguf/loader.py) decodes each GGUF tensor into the same three pieces an
int4 layer stores, per output row and group of 32 inputs:

    qweight [out, in] uint8 (values 0..15)   scales [out, in // 32]   zeros [out, in // 32]
    W[n, k] = (q[n, k] - zeros[n, k // 32]) * scales[n, k // 32]

and this method packs them into int4_rtn.py's layout (``qweight [in // 8, out]`` int32,
group size 32). Unlike AWQ/GPTQ the zero points are real numbers (Q4_1 and Q4_K store a
minimum, not an integer zero), so ``zeros`` is held in the model dtype rather than uint8 and
the product runs through the int4 reference path (dequantize + GEMM, the CPU path); the
Triton kernel, which reads uint8 zeros, is not used for these layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from membound.kernels.int4_gemm import int4_gemm_ref
from membound.layers.quantization.base import (
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
            "qweight": spec((output_size, input_size), kinds=("uint8",)),
            "scales": spec((output_size, groups)),
            "zeros": spec((output_size, groups)),
        }

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        if suffix == "qweight":
            check_kind(loaded, ("uint8",), name)
            self.store_columns(layer, rows, q=on_device(layer, loaded, "qweight").t(), name=name)
        elif suffix in ("scales", "zeros"):
            check_kind(loaded, ("float",), name)
            param = getattr(layer, suffix)
            copy_slice(param, on_device(layer, loaded, suffix).t().to(param.dtype), 1,
                       rows[0], rows[1], name)
        else:
            raise KeyError(name)

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        """Dummy weights: round-to-nearest int4 (integer zero points)."""
        q, s, z = quantize_int4_rtn(weight.to(layer.qweight.device), layer.group_size)
        self.store_columns(layer, rows, q=q.t(), scales=s.t())
        copy_slice(layer.zeros, z.t().to(layer.zeros.dtype), 1, rows[0], rows[1], "zeros")

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        x2, lead = flatten_tokens(x)  # [M, K]
        y = int4_gemm_ref(x2, layer.qweight, layer.scales, layer.zeros, layer.group_size)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, -1)
