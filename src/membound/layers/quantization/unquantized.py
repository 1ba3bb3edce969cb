"""The default method: a float weight ``[out, in]`` and ``F.linear`` (today's numerics)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from membound.kernels.cpu_decode_stack import LinearKind, StackLinear
from membound.kernels.cpu_linear import (
    can_prepack,
    dense_weight,
    is_vnni,
    linear_prepacked,
    prefers_column_major,
    prepack_weight,
    to_column_major,
)
from membound.layers.quantization.base import (
    QuantizationMethod,
    TensorSpec,
    copy_slice,
    spec,
)


class UnquantizedLinearMethod(QuantizationMethod):
    name = "none"

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        # the default dtype and device of the build context, exactly as before quantization
        layer.weight = nn.Parameter(torch.empty(sum(output_sizes), input_size), requires_grad=False)

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        return {"weight": spec((output_size, input_size))}

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        if suffix != "weight":
            raise KeyError(name)
        copy_slice(layer.weight, loaded, 0, rows[0], rows[1], name)

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        copy_slice(layer.weight, weight, 0, rows[0], rows[1], "weight")

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """The CPU backend packs bf16 weights for its native GEMM where it serves, else
        prepacks them for oneDNN, and keeps wide fp32 weights column-major
        (kernels/cpu_linear.py)."""
        if layer.kernel_backend != "cpu":
            return
        packed = layer.ops.pack_linear_weight(weight=layer.weight)
        if packed is not None:
            layer.weight = nn.Parameter(packed, requires_grad=False)
        elif can_prepack(layer.weight):
            layer.weight = nn.Parameter(prepack_weight(layer.weight), requires_grad=False)
        elif prefers_column_major(layer.weight):
            to_column_major(layer.weight)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if is_vnni(layer.weight):
            return layer.ops.packed_linear(x=x, weight=layer.weight, bias=bias,
                                           out_features=layer.output_size)  # fmt: skip
        if layer.weight.is_mkldnn:
            return linear_prepacked(x, layer.weight, bias)
        return F.linear(x, layer.weight, bias)

    def apply_silu_and_mul(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if is_vnni(layer.weight):  # the native GEMM fuses the activation into its epilogue
            return layer.ops.packed_linear_silu_and_mul(x=x, weight=layer.weight, bias=bias,
                                                        out_features=layer.output_size)  # fmt: skip
        return super().apply_silu_and_mul(layer, x, bias)

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        return dense_weight(layer.weight.detach(), layer.output_size).float()

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        if not is_vnni(layer.weight):
            return None
        return StackLinear(LinearKind.VNNI, layer.weight, layer.bias, layer.output_size)
