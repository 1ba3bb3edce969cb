"""Linear layers that own their weight loading.

Fused projections (QKV, gate/up) are one parameter; each checkpoint shard is copied into its
slice by the parameter's ``weight_loader``. Shape mismatches raise a ``WeightShapeError``
naming the checkpoint tensor, before anything is served. Tensor parallelism and quantization
plug in here later (a quant method per layer), so models stay declarative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class WeightShapeError(ValueError):
    """A checkpoint tensor whose shape does not match the parameter it loads into."""


def _check_shape(name: str, expected: torch.Size, got: torch.Size) -> None:
    if tuple(expected) != tuple(got):
        raise WeightShapeError(
            f"tensor {name!r} has shape {tuple(got)} but the model expects {tuple(expected)}; "
            "the checkpoint does not match its config.json"
        )


def default_weight_loader(
    param: torch.Tensor, loaded: torch.Tensor, shard_id: object = None, name: str = "?"
) -> None:
    _check_shape(name, param.shape, loaded.shape)
    with torch.no_grad():
        param.copy_(loaded)


def _set_loader(param: nn.Parameter, loader: Callable[..., None]) -> None:
    param.weight_loader = loader  # type: ignore[attr-defined]


class Linear(nn.Module):
    """y = x W^T (+ b). Weight [output_size, input_size]."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        _set_loader(self.weight, default_weight_loader)
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.empty(output_size), requires_grad=False
            )
            _set_loader(self.bias, default_weight_loader)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


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
    ) -> None:
        super().__init__(input_size, sum(output_sizes), bias)
        assert len(output_sizes) == len(shard_ids)
        self.output_sizes = tuple(output_sizes)
        offsets, start = {}, 0
        for sid, size in zip(shard_ids, output_sizes):
            offsets[sid] = (start, size)
            start += size
        self.shard_offsets: dict[object, tuple[int, int]] = offsets
        _set_loader(self.weight, self._load_shard)
        if self.bias is not None:
            _set_loader(self.bias, self._load_shard)

    def _load_shard(
        self, param: torch.Tensor, loaded: torch.Tensor, shard_id: object = None, name: str = "?"
    ) -> None:
        if shard_id is None:  # an already-fused checkpoint tensor
            default_weight_loader(param, loaded, None, name)
            return
        if shard_id not in self.shard_offsets:
            raise KeyError(f"unknown shard {shard_id!r} for tensor {name!r}")
        start, size = self.shard_offsets[shard_id]
        target = param.narrow(0, start, size)
        _check_shape(name, target.shape, loaded.shape)
        with torch.no_grad():
            target.copy_(loaded)


class QKVLinear(MergedLinear):
    """Fused q/k/v projection: output [q_size | kv_size | kv_size]."""

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool
    ) -> None:
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        super().__init__(hidden_size, [self.q_size, self.kv_size, self.kv_size], "qkv", bias)
