"""Quantization strategy objects: one per linear layer, chosen from the QuantizationConfig.

A method owns three views of a linear layer's weight:

- the checkpoint view: ``checkpoint_specs`` names the tensors one projection (one shard of a
  fused qkv/gate_up layer) carries on disk, with their shapes and dtypes, so the loader can
  validate a whole checkpoint before copying anything;
- the stored view: ``create_weights`` registers the parameters that live in memory (packed,
  with their scales), and ``load`` / ``quantize_rows`` fill output rows ``[start, start+size)``
  of them from checkpoint tensors or from float weights (quantized while loading);
- the compute view: ``apply(layer, x, bias)``, plus ``dequantize(layer)`` -> float32
  ``[out, in]`` for tests and quality checks.

``process_weights_after_loading`` runs once every tensor is in (act-order permutations,
choosing a kernel for the device, laying the weights out for ``layer.kernel_backend``, the
backend the layer was built for). Results may change only by rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from membound.config import ConfigError, QuantizationConfig
from membound.kernels.cpu_decode_stack import StackLinear

# safetensors header dtype -> the kind a TensorSpec names
DTYPE_KINDS: dict[str, str] = {
    "F64": "float", "F32": "float", "F16": "float", "BF16": "float",
    "F8_E4M3": "fp8", "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8",
}
TORCH_KINDS: dict[torch.dtype, str] = {
    torch.float64: "float", torch.float32: "float", torch.float16: "float",
    torch.bfloat16: "float", torch.float8_e4m3fn: "fp8", torch.int64: "int64",
    torch.int32: "int32", torch.int8: "int8", torch.uint8: "uint8",
}
FLOAT = ("float",)
SCALAR_SHAPES: tuple[tuple[int, ...], ...] = ((), (1,))


class WeightShapeError(ValueError):
    """A checkpoint tensor whose shape does not match the parameter it loads into."""


class QuantizedWeightError(ValueError):
    """A quantized checkpoint tensor membound cannot use (dtype, values); names the tensor."""


@dataclass(frozen=True)
class TensorSpec:
    """A checkpoint tensor of one projection: accepted shapes and dtype kinds."""

    shapes: tuple[tuple[int, ...], ...]
    kinds: tuple[str, ...] = FLOAT
    required: bool = True

    def accepts(self, shape: Sequence[int]) -> bool:
        return tuple(shape) in self.shapes

    def accepts_dtype(self, header_dtype: str) -> bool:
        return DTYPE_KINDS.get(header_dtype, header_dtype) in self.kinds

    def describe(self) -> str:
        return " or ".join(str(s) for s in self.shapes)


def spec(*shapes: tuple[int, ...], kinds: tuple[str, ...] = FLOAT, required: bool = True) -> TensorSpec:
    return TensorSpec(tuple(shapes), kinds, required)


class QuantizationMethod:
    """Base strategy. Subclasses register with ``@register_method(name)``."""

    name = "?"

    def __init__(self, config: QuantizationConfig | None = None) -> None:
        self.config = config

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        raise NotImplementedError

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        raise NotImplementedError

    def quantize_rows(self, layer: nn.Module, weight: torch.Tensor, rows: tuple[int, int]) -> None:
        """Fill output rows from a float weight ``[size, in]`` (on-the-fly and dummy weights)."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        return None

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def apply_silu_and_mul(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``silu_and_mul`` of ``apply``'s gate/up product (gate rows, then up rows); a
        method whose backend fuses the two overrides this."""
        return layer.ops.silu_and_mul(x=self.apply(layer, x, bias))

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        """The weight as float32 ``[out, in]``, as the layer computes with it."""
        raise NotImplementedError

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        """The layer's weight as a native decode stack multiplies it, the way ``apply``
        does (kernels/cpu_decode_stack.py); None where the stack has no such layout."""
        return None


_METHODS: dict[str, Callable[[QuantizationConfig], QuantizationMethod]] = {}


class QuantizeOnLoad:
    """Mixin for a method whose checkpoint holds one float ``weight`` that it quantizes while
    loading: ``quantize_rows(layer, weight, rows)`` (the method's own) does the work on the
    rows of a (fused) weight; ``device_param`` names the parameter whose device the float
    weight is moved to first."""

    device_param = "weight"

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        return {"weight": spec((output_size, input_size))}

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        if suffix != "weight":
            raise KeyError(name)
        check_kind(loaded, ("float",), name)
        self.quantize_rows(layer, on_device(layer, loaded, self.device_param), rows)  # type: ignore[attr-defined]


def register_method(
    name: str,
) -> Callable[[type[QuantizationMethod]], type[QuantizationMethod]]:
    def deco(cls: type[QuantizationMethod]) -> type[QuantizationMethod]:
        _METHODS[name] = cls
        return cls

    return deco


def get_linear_method(
    config: QuantizationConfig | None, checkpoint_names: Sequence[str]
) -> QuantizationMethod | None:
    """The method for a linear layer built from ``checkpoint_names`` (several when fused);
    None (unquantized) without a config or when the config leaves these modules out; the
    method's ``<name>_int8`` sibling for modules the config holds int8 (GGUF)."""
    if config is None:
        return None
    ignored = [config.is_ignored(n) for n in checkpoint_names]
    if all(ignored):
        return None
    if any(ignored):
        kept = [n for n, i in zip(checkpoint_names, ignored, strict=True) if not i]
        raise ConfigError(
            f"{', '.join(checkpoint_names)} run as one fused layer but the quantization config "
            f"leaves only some of them unquantized (quantized: {', '.join(kept)})"
        )
    int8 = [config.is_int8(n) for n in checkpoint_names]
    if any(int8) and not all(int8):
        raise ConfigError(
            f"{', '.join(checkpoint_names)} run as one fused layer but the quantization config "
            "holds only some of them int8"
        )
    return _METHODS[f"{config.method}_int8" if all(int8) else config.method](config)


# ---- helpers shared by the methods ----------------------------------------------------------


def new_param(layer: nn.Module, name: str, shape: Sequence[int], dtype: torch.dtype) -> None:
    layer.register_parameter(
        name, nn.Parameter(torch.empty(tuple(shape), dtype=dtype), requires_grad=False)
    )


def layer_name(layer: nn.Module) -> str:
    return getattr(layer, "prefix", "") or type(layer).__name__


def require_multiple(layer: nn.Module, what: str, value: int, unit: int, why: str) -> None:
    if value % unit != 0:
        raise ConfigError(
            f"{layer_name(layer)}: {what} {value} is not a multiple of {unit} ({why})"
        )


def check_kind(loaded: torch.Tensor, kinds: tuple[str, ...], name: str) -> None:
    kind = TORCH_KINDS.get(loaded.dtype, str(loaded.dtype))
    if kind not in kinds:
        raise QuantizedWeightError(
            f"tensor {name!r} has dtype {loaded.dtype} but the quantization config expects "
            f"{' or '.join(kinds)}; the checkpoint does not match its quantization_config"
        )


def on_device(layer: nn.Module, t: torch.Tensor, param: str) -> torch.Tensor:
    """Move a checkpoint tensor to the layer's device first, so conversions run there."""
    return t.to(getattr(layer, param).device)


def copy_slice(
    param: torch.Tensor, loaded: torch.Tensor, dim: int, start: int, size: int, name: str
) -> None:
    """``param.narrow(dim, start, size).copy_(loaded)`` after a shape check."""
    target = param.narrow(dim, start, size)
    if tuple(target.shape) != tuple(loaded.shape):
        raise WeightShapeError(
            f"tensor {name!r} has shape {tuple(loaded.shape)} but the model expects "
            f"{tuple(target.shape)}; the checkpoint does not match its config.json"
        )
    with torch.no_grad():
        target.copy_(loaded)


def fill_rows_with_scale(
    param: torch.Tensor, loaded: torch.Tensor, rows: tuple[int, int], name: str
) -> None:
    """A per-tensor scalar or a per-channel vector ``[size]`` / ``[size, 1]`` -> rows."""
    start, size = rows
    flat = loaded.reshape(-1).to(torch.float32)
    if flat.numel() == 1:
        flat = flat.expand(size)
    copy_slice(param, flat, 0, start, size, name)


def flatten_tokens(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[..., K] -> ([M, K], leading shape)."""
    return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])
