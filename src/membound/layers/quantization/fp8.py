"""FP8 (E4M3) W8A8: per-channel weight scales, per-token (or static) activation scales.

Stored per layer: ``weight`` float8_e4m3fn ``[out, in]``, ``weight_scale`` float32 ``[out]``
(a per-tensor checkpoint scale is expanded to its shard's rows, so fused q/k/v keep their own
scales exactly) and, for static activation scales, ``input_scale`` float32 ``[1]`` (the largest
of the fused shards' scales). ``y = (x_q * s_x) @ (W_q * s_w)^T``.

Compute: ``torch._scaled_mm`` on CUDA GPUs with FP8 tensor cores (compute capability >= 8.9);
elsewhere (CPU, older GPUs) ``fp8_linear_ref``: quantize the activations the same way, then
dequantize both and multiply in float32, so CPU numerics are W8A8's.

Checkpoint layouts (all store ``weight`` in E4M3 with a ``weight_scale``; see
docs/quantization.md): "fp8" (vLLM / AutoFP8: per-tensor scalar scales, ``input_scale`` when
activation_scheme is static), "compressed-tensors" (float-quantized: ``weight_scale`` [out, 1]
or [1]), "modelopt" (FP8: scalar scales and ``input_scale``); "float" quantizes a float
checkpoint while loading (quantization="fp8").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from membound.layers.quantization.base import (
    SCALAR_SHAPES,
    QuantizationMethod,
    TensorSpec,
    check_kind,
    copy_slice,
    fill_rows_with_scale,
    flatten_tokens,
    new_param,
    on_device,
    register_method,
    spec,
)

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
_MIN_SCALE = 1e-12


def quantize_fp8(
    x: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x [M, K]`` -> (E4M3 values, float32 scales [M, 1]); a given ``scale``
    (static, per tensor) is used for every row instead of each row's amax / 448."""
    xf = x.to(torch.float32)
    if scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=_MIN_SCALE)
    else:
        scale = scale.to(torch.float32).reshape(1, 1).expand(x.shape[0], 1)
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.contiguous()


def fp8_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None,
) -> torch.Tensor:
    """x [M, K] -> [M, N] float32: quantized activations times the dequantized weight."""
    xq, xs = quantize_fp8(x, input_scale)
    w = weight.to(torch.float32) * weight_scale.to(torch.float32)[:, None]  # [N, K]
    return (xq.to(torch.float32) * xs) @ w.t()


def fp8_linear_scaled_mm(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None, out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """The same product through ``torch._scaled_mm`` (row-wise scales, FP8 tensor cores)."""
    xq, xs = quantize_fp8(x, input_scale)
    return torch._scaled_mm(
        xq, weight.t(), scale_a=xs, scale_b=weight_scale.to(torch.float32).view(1, -1),
        out_dtype=out_dtype,
    )


def supports_fp8_matmul(device: torch.device) -> bool:
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


class ScaledW8A8Method(QuantizationMethod):
    """Shared by FP8 and INT8: a quantized weight, per-row scales, activations quantized at
    run time (per token, or with a static per-tensor ``input_scale``)."""

    qdtype = torch.float8_e4m3fn
    kind = "fp8"

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        out = sum(output_sizes)
        new_param(layer, "weight", (out, input_size), self.qdtype)
        new_param(layer, "weight_scale", (out,), torch.float32)
        if self.static:
            new_param(layer, "input_scale", (1,), torch.float32)
            with torch.no_grad():
                layer.input_scale.zero_()
        layer.use_fast_matmul = False

    @property
    def static(self) -> bool:
        return self.config is not None and self.config.activation_scheme == "static"

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        assert self.config is not None
        if not self.config.prequantized:
            return {"weight": spec((output_size, input_size))}
        out = output_size
        return {
            "weight": spec((out, input_size), kinds=(self.kind,)),
            "weight_scale": spec(*SCALAR_SHAPES, (out,), (out, 1)),
            "input_scale": spec(*SCALAR_SHAPES, required=self.static),
        }

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        assert self.config is not None
        if suffix == "weight" and not self.config.prequantized:
            check_kind(loaded, ("float",), name)
            self.quantize_rows(layer, on_device(layer, loaded, "weight"), rows)
        elif suffix == "weight":
            check_kind(loaded, (self.kind,), name)
            copy_slice(layer.weight, loaded, 0, rows[0], rows[1], name)
        elif suffix == "weight_scale":
            fill_rows_with_scale(layer.weight_scale, loaded, rows, name)
        elif suffix == "input_scale":
            if self.static:  # one activation scale for the fused input: the largest
                with torch.no_grad():
                    s = loaded.reshape(-1)[:1].to(layer.input_scale)
                    layer.input_scale.copy_(torch.maximum(layer.input_scale, s))
        else:
            raise KeyError(name)

    def quantize_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float [rows, in] -> (quantized [rows, in], float32 scales [rows]), per channel."""
        q, s = quantize_fp8(w)
        return q, s.reshape(-1)

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        q, s = self.quantize_weight(weight.to(layer.weight.device))
        copy_slice(layer.weight, q, 0, rows[0], rows[1], "weight")
        copy_slice(layer.weight_scale, s, 0, rows[0], rows[1], "weight_scale")

    def _input_scale(self, layer: nn.Module) -> torch.Tensor | None:
        return layer.input_scale if self.static else None

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.detach().to(torch.float32) * layer.weight_scale[:, None]


@register_method("fp8")
class Fp8LinearMethod(ScaledW8A8Method):
    name = "fp8"

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        n, k = layer.weight.shape
        fast = supports_fp8_matmul(layer.weight.device) and n % 16 == 0 and k % 16 == 0
        layer.use_fast_matmul = fast

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        x2, lead = flatten_tokens(x)  # [M, K]
        scale = self._input_scale(layer)
        if layer.use_fast_matmul:
            y = fp8_linear_scaled_mm(x2, layer.weight, layer.weight_scale, scale)
        else:
            y = fp8_linear_ref(x2, layer.weight, layer.weight_scale, scale)
        y = y.to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, -1)
