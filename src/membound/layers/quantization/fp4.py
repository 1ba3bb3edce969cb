"""FP4 weight storage: MXFP4 and NVFP4 (E2M1 values, two per byte, with block scales).

E2M1 codes (bit 3 sign, bits 2-1 exponent, bit 0 mantissa) are 0, 0.5, 1, 1.5, 2, 3, 4, 6 and
their negatives. Two codes per byte along the input dim, the even element in the low nibble.

    MXFP4 (OCP MX): blocks of 32 inputs share an E8M0 scale 2**(e - 127) (one byte).
        stored:  weight [out, in // 2] uint8, weight_scale [out, in // 32] uint8
        on disk ("mxfp4", the gpt-oss/transformers names): weight_blocks [out, in // 32, 16]
        uint8 and weight_scales [out, in // 32] uint8
    NVFP4 (NVIDIA ModelOpt): blocks of 16 inputs share an FP8 E4M3 scale, times a float32
        per-tensor scale: W = e2m1 * weight_scale * weight_scale_2
        stored:  weight [out, in // 2] uint8, weight_scale [out, in // 16] float8_e4m3fn,
                 weight_scale_2 [out] float32 (each shard's per-tensor scale on its rows)
        on disk ("modelopt", quant_algo NVFP4): weight, weight_scale, weight_scale_2 (scalar),
        input_scale (scalar; unused: activations stay in the model dtype)

Weights stay packed in memory (a quarter of BF16's bytes plus scales); ``apply`` dequantizes
one layer at a time to the activation dtype and multiplies (storage-only: FP4 tensor-core
matmuls on Blackwell are future work). "float" quantizes a float checkpoint while loading.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from membound.layers.quantization.base import (
    SCALAR_SHAPES,
    QuantizationMethod,
    TensorSpec,
    check_kind,
    copy_slice,
    fill_rows_with_scale,
    new_param,
    on_device,
    register_method,
    require_multiple,
    spec,
)

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
FP8_MAX = 448.0
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def e2m1_table(device: torch.device | None = None) -> torch.Tensor:
    """Code -> value, float32 [16]. Layers build it once (the ``e2m1_table`` buffer): making a
    device tensor from a Python list on every call is illegal during CUDA-graph capture."""
    pos = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([pos, -pos])


def encode_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Float values (already scaled) -> E2M1 codes uint8 0..15, nearest, saturating at 6."""
    mids = torch.tensor(_MIDPOINTS, dtype=torch.float32, device=v.device)
    mag = torch.bucketize(v.abs().to(torch.float32).clamp(max=E2M1_MAX), mids)
    return (mag + 8 * (v < 0)).to(torch.uint8)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """[rows, in] codes -> [rows, in // 2] bytes, even element in the low nibble."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)


def unpack_fp4(packed: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """[rows, in // 2] bytes -> [rows, in] float32 values (``table``: ``e2m1_table()`` on
    ``packed``'s device; built here when not given)."""
    table = e2m1_table(packed.device) if table is None else table
    lo, hi = table[(packed & 0xF).long()], table[(packed >> 4).long()]
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float [rows, in] -> (packed [rows, in // 2], E8M0 scales [rows, in // 32] uint8):
    shared exponent floor(log2(block amax)) - 2, so the largest element lands in [4, 8)."""
    rows, k = w.shape
    blocks = w.to(torch.float32).reshape(rows, k // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    exp = torch.floor(torch.log2(amax.clamp(min=2.0**-127))) - 2
    exp = exp.clamp(-127, 127)
    codes = encode_e2m1(blocks / torch.exp2(exp)[..., None]).reshape(rows, k)
    return pack_fp4(codes), (exp + 127).to(torch.uint8)


def dequantize_mxfp4(
    weight: torch.Tensor, scale: torch.Tensor, table: torch.Tensor | None = None
) -> torch.Tensor:
    values = unpack_fp4(weight, table)  # [rows, in]
    s = torch.exp2(scale.to(torch.float32) - 127).repeat_interleave(32, dim=1)
    return values * s


def quantize_nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float [rows, in] -> (packed, E4M3 block scales [rows, in // 16], float32 per-tensor
    scale); the per-tensor scale maps the largest block scale onto E4M3's 448."""
    rows, k = w.shape
    blocks = w.to(torch.float32).reshape(rows, k // 16, 16)
    global_scale = (blocks.abs().amax() / (E2M1_MAX * FP8_MAX)).clamp(min=1e-12)
    block_amax = blocks.abs().amax(dim=-1)  # [rows, in // 16]
    bscale = (block_amax / E2M1_MAX / global_scale).clamp(max=FP8_MAX).to(torch.float8_e4m3fn)
    eff = bscale.to(torch.float32) * global_scale
    scaled = torch.where(eff[..., None] > 0, blocks / eff[..., None], torch.zeros_like(blocks))
    return pack_fp4(encode_e2m1(scaled).reshape(rows, k)), bscale, global_scale.reshape(1)


def dequantize_nvfp4(
    weight: torch.Tensor,
    scale: torch.Tensor,
    scale_2: torch.Tensor,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    values = unpack_fp4(weight, table)
    s = scale.to(torch.float32).repeat_interleave(16, dim=1) * scale_2.to(torch.float32)[:, None]
    return values * s


class Fp4LinearMethod(QuantizationMethod):
    block = 32

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        require_multiple(layer, "in_features", input_size, self.block,
                         f"{self.name} blocks of {self.block} inputs")
        out = sum(output_sizes)
        new_param(layer, "weight", (out, input_size // 2), torch.uint8)
        self.create_scales(layer, input_size, out)
        # on the device the layer is built on (the caller's torch.device context)
        layer.register_buffer("e2m1_table", e2m1_table(), persistent=False)

    def create_scales(self, layer: nn.Module, input_size: int, out: int) -> None:
        raise NotImplementedError

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        assert self.config is not None
        if suffix == "weight" and not self.config.prequantized:
            check_kind(loaded, ("float",), name)
            self.quantize_rows(layer, on_device(layer, loaded, "weight"), rows)
        else:
            self.load_packed(layer, suffix, loaded, rows, name)

    def load_packed(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        raise NotImplementedError

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.linear(x, self.dequantize(layer).to(x.dtype), bias)


@register_method("mxfp4")
class MXFP4LinearMethod(Fp4LinearMethod):
    name = "mxfp4"
    block = 32

    def create_scales(self, layer: nn.Module, input_size: int, out: int) -> None:
        new_param(layer, "weight_scale", (out, input_size // 32), torch.uint8)

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        assert self.config is not None
        if not self.config.prequantized:
            return {"weight": spec((output_size, input_size))}
        nb = input_size // 32
        return {
            "weight_blocks": spec((output_size, nb, 16), kinds=("uint8",)),
            "weight_scales": spec((output_size, nb), kinds=("uint8",)),
        }

    def load_packed(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        start, size = rows
        check_kind(loaded, ("uint8",), name)
        if suffix == "weight_blocks":
            copy_slice(layer.weight, loaded.reshape(size, -1), 0, start, size, name)
        elif suffix == "weight_scales":
            copy_slice(layer.weight_scale, loaded, 0, start, size, name)
        else:
            raise KeyError(name)

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        packed, scale = quantize_mxfp4(weight.to(layer.weight.device))
        copy_slice(layer.weight, packed, 0, rows[0], rows[1], "weight")
        copy_slice(layer.weight_scale, scale, 0, rows[0], rows[1], "weight_scale")

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        return dequantize_mxfp4(layer.weight, layer.weight_scale, layer.e2m1_table)


@register_method("nvfp4")
class NVFP4LinearMethod(Fp4LinearMethod):
    name = "nvfp4"
    block = 16

    def create_scales(self, layer: nn.Module, input_size: int, out: int) -> None:
        new_param(layer, "weight_scale", (out, input_size // 16), torch.float8_e4m3fn)
        new_param(layer, "weight_scale_2", (out,), torch.float32)

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        assert self.config is not None
        if not self.config.prequantized:
            return {"weight": spec((output_size, input_size))}
        return {
            "weight": spec((output_size, input_size // 2), kinds=("uint8",)),
            "weight_scale": spec((output_size, input_size // 16), kinds=("fp8",)),
            "weight_scale_2": spec(*SCALAR_SHAPES),
            "input_scale": spec(*SCALAR_SHAPES, required=False),
        }

    def load_packed(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        start, size = rows
        if suffix == "weight":
            check_kind(loaded, ("uint8",), name)
            copy_slice(layer.weight, loaded, 0, start, size, name)
        elif suffix == "weight_scale":
            check_kind(loaded, ("fp8",), name)
            copy_slice(layer.weight_scale, loaded, 0, start, size, name)
        elif suffix == "weight_scale_2":
            fill_rows_with_scale(layer.weight_scale_2, loaded, rows, name)
        elif suffix != "input_scale":  # W4A4 activation scale: unused by weight-only compute
            raise KeyError(name)

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        packed, scale, scale_2 = quantize_nvfp4(weight.to(layer.weight.device))
        copy_slice(layer.weight, packed, 0, rows[0], rows[1], "weight")
        copy_slice(layer.weight_scale, scale, 0, rows[0], rows[1], "weight_scale")
        fill_rows_with_scale(layer.weight_scale_2, scale_2, rows, "weight_scale_2")

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        return dequantize_nvfp4(
            layer.weight, layer.weight_scale, layer.weight_scale_2, layer.e2m1_table
        )
