"""Linear layers that own their weight loading.

Fused projections (QKV, gate/up) are one layer; each checkpoint shard is copied into its
output rows by ``load_checkpoint_tensor``. Shape mismatches raise a ``WeightShapeError``
naming the checkpoint tensor, before anything is served. How the weight is stored and
multiplied is the layer's quantization method (layers/quantization/): unquantized by default,
so models stay declarative. Tensor-parallel layers (parallel_linear.py) keep a slice of each
checkpoint tensor: ``checkpoint_slice`` names it and only that part is read from the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.layers.checkpoint_tensor import LazyTensor, materialize
from membound.layers.quantization import (
    QuantizationMethod,
    TensorSpec,
    UnquantizedLinearMethod,
    WeightShapeError,
)

__all__ = ["Linear", "MergedLinear", "WeightShapeError", "default_weight_loader"]


def _check_shape(name: str, expected: torch.Size, got: torch.Size) -> None:
    if tuple(expected) != tuple(got):
        raise WeightShapeError(
            f"tensor {name!r} has shape {tuple(got)} but the model expects {tuple(expected)}; "
            "the checkpoint does not match its config.json"
        )


def default_weight_loader(
    param: torch.Tensor, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
    name: str = "?",
) -> None:
    _check_shape(name, param.shape, loaded.shape)
    with torch.no_grad():
        param.copy_(materialize(loaded))


def _set_loader(param: nn.Parameter, loader: Callable[..., None]) -> None:
    param.weight_loader = loader  # type: ignore[attr-defined]


class Linear(nn.Module):
    """y = x W^T (+ b). Weight [output_size, input_size], stored as ``quant_method`` says.

    ``prefix`` is the checkpoint module name (errors name it); the bias is never quantized.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        quant_method: QuantizationMethod | None = None,
        prefix: str = "",
        output_sizes: Sequence[int] | None = None,
        *,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size  # this rank's (the whole layer's without TP)
        self.output_size = output_size
        self.checkpoint_input_size = input_size  # in the checkpoint (row-parallel: larger)
        self.prefix = prefix
        # the backend whose kernels serve: the quantization method's post-load step lays the
        # stored weight out for it (kernel_backend); its packed_linear serves what it packed
        self.ops = ops or TORCH_OPS
        self.quant_method = quant_method or UnquantizedLinearMethod()
        sizes = tuple(output_sizes) if output_sizes is not None else (output_size,)
        self.quant_method.create_weights(self, input_size, sizes, torch.get_default_dtype())
        if isinstance(self.quant_method, UnquantizedLinearMethod):
            _set_loader(self.weight, default_weight_loader)
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.empty(output_size), requires_grad=False
            )
            _set_loader(self.bias, default_weight_loader)
        else:
            self.register_parameter("bias", None)

    @property
    def kernel_backend(self) -> str:
        """The serving backend's name ("torch" | "cpu" | "triton"): its ops'."""
        return self.ops.backend.value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) * up of a gate/up layer's output (gate rows, then up rows), fused where
        the backend's kernel for this weight fuses it."""
        return self.quant_method.apply_silu_and_mul(self, x, self.bias)

    # ---- loading: checkpoint tensors of one shard (None: the whole layer) -------------------
    def shard_ids(self) -> tuple[object, ...]:
        return (None,)

    def shard_rows(self, shard_id: object, name: str = "?") -> tuple[int, int]:
        """(first output row, rows) of a shard."""
        return 0, self.output_size

    def checkpoint_rows(self, shard_id: object = None) -> int:
        """Output rows of a shard in the checkpoint (all ranks' rows under TP)."""
        return self.shard_rows(shard_id)[1]

    def checkpoint_slice(self, suffix: str, shard_id: object) -> tuple[int, int, int] | None:
        """(dim, start, length) of a checkpoint tensor this rank keeps; None: all of it."""
        return None

    def checkpoint_specs(self, shard_id: object = None) -> dict[str, TensorSpec]:
        """Checkpoint tensor suffix -> what the checkpoint must (or may) hold for a shard."""
        size = self.checkpoint_rows(shard_id)
        specs = dict(self.quant_method.checkpoint_specs(self.checkpoint_input_size, size))
        if self.bias is not None:
            specs["bias"] = TensorSpec(((size,),))
        return specs

    def load_checkpoint_tensor(
        self, suffix: str, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
        name: str = "?",
    ) -> None:
        cut = self.checkpoint_slice(suffix, shard_id)
        if cut is not None:
            _check_shape(name, self._checkpoint_shape(suffix, shard_id), loaded.shape)
            loaded = loaded.narrow(*cut)
        loaded = materialize(loaded)
        start, size = self.shard_rows(shard_id, name)
        if suffix == "bias" and self.bias is not None:
            target = self.bias.narrow(0, start, size)
            _check_shape(name, target.shape, loaded.shape)
            with torch.no_grad():
                target.copy_(loaded)
            return
        self.quant_method.load(self, suffix, loaded, (start, size), name)

    def _checkpoint_shape(self, suffix: str, shard_id: object) -> tuple[int, ...]:
        rows = self.checkpoint_rows(shard_id)
        return (rows,) if suffix == "bias" else (rows, self.checkpoint_input_size)

    def process_weights_after_loading(self) -> None:
        self.quant_method.process_weights_after_loading(self)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output dim (gate/up, QKV).

    ``shard_ids`` names the pieces in order; checkpoint tensors load by shard id.
    """

    def __init__(
        self,
        input_size: int,
        output_sizes: Sequence[int],
        shard_ids: Sequence[object],
        bias: bool = False,
        quant_method: QuantizationMethod | None = None,
        prefix: str = "",
        *,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__(
            input_size, sum(output_sizes), bias, quant_method, prefix, output_sizes, ops=ops
        )
        assert len(output_sizes) == len(shard_ids)
        self.output_sizes = tuple(output_sizes)
        offsets, start = {}, 0
        for sid, size in zip(shard_ids, output_sizes, strict=True):
            offsets[sid] = (start, size)
            start += size
        self.shard_offsets: dict[object, tuple[int, int]] = offsets
        for param in (getattr(self, "weight", None), self.bias):
            if getattr(param, "weight_loader", None) is not None:  # float params keep theirs
                _set_loader(param, self._load_shard)

    def shard_ids(self) -> tuple[object, ...]:
        return tuple(self.shard_offsets)

    def shard_rows(self, shard_id: object, name: str = "?") -> tuple[int, int]:
        if shard_id is None:  # an already-fused checkpoint tensor
            return 0, self.output_size
        if shard_id not in self.shard_offsets:
            raise KeyError(f"unknown shard {shard_id!r} for tensor {name!r}")
        return self.shard_offsets[shard_id]

    def _load_shard(
        self, param: torch.Tensor, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
        name: str = "?",
    ) -> None:
        suffix = "bias" if param is self.bias else "weight"
        self.load_checkpoint_tensor(suffix, loaded, shard_id, name)
