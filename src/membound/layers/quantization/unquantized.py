"""The default method: a float weight ``[out, in]`` and ``F.linear`` (today's numerics)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from membound.kernels.cpu_linear import prefers_column_major, to_column_major
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
        """The CPU backend keeps wide fp32 weights column-major (faster GEMV; kernels/cpu_linear)."""
        if layer.kernel_backend == "cpu" and prefers_column_major(layer.weight):
            to_column_major(layer.weight)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.detach().float()
