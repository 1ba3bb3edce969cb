"""LazyTensor: a checkpoint tensor read only when a layer asks for it, and only the part asked.

The weight loader hands layers ``LazyTensor``s over safetensors slices. A tensor-parallel
layer ``narrow``s one to its rank's rows or columns first, so each rank reads its shard of
each tensor from the file and never the whole tensor; ``materialize`` does the read. Layers
accept plain tensors too (``materialize`` returns them as they are).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Reader = Callable[[tuple[slice, ...] | None], torch.Tensor]


class LazyTensor:
    """``read(None)`` returns the whole tensor, ``read(slices)`` one slice per dim."""

    __slots__ = ("_read", "_slices", "shape")

    def __init__(
        self, read: Reader, shape: tuple[int, ...], slices: tuple[slice, ...] | None = None
    ) -> None:
        self._read = read
        self._slices = slices
        self.shape = torch.Size(shape)  # after narrowing

    def narrow(self, dim: int, start: int, length: int) -> LazyTensor:
        """Like ``torch.Tensor.narrow``, without reading anything."""
        dim = dim % len(self.shape)
        if start < 0 or length < 0 or start + length > self.shape[dim]:
            raise IndexError(
                f"narrow({dim}, {start}, {length}) is outside a tensor of shape "
                f"{tuple(self.shape)}"
            )
        slices = list(self._slices or (slice(0, n) for n in self.shape))
        base = slices[dim].start
        slices[dim] = slice(base + start, base + start + length)
        shape = list(self.shape)
        shape[dim] = length
        return LazyTensor(self._read, tuple(shape), tuple(slices))

    def materialize(self) -> torch.Tensor:
        return self._read(self._slices)


def materialize(t: torch.Tensor | LazyTensor) -> torch.Tensor:
    return t.materialize() if isinstance(t, LazyTensor) else t


def owns_checkpoint_loading(module: object) -> bool:
    """Layers that take their checkpoint tensors through ``load_checkpoint_tensor`` and
    describe them with ``shard_ids`` / ``checkpoint_specs`` (linears, fused MoE experts)."""
    return all(
        callable(getattr(module, m, None))
        for m in ("load_checkpoint_tensor", "shard_ids", "checkpoint_specs")
    )


def process_after_loading(model: nn.Module) -> None:
    """Every module's ``process_weights_after_loading`` once all tensors are in, children
    before their parents (reversed pre-order), so a parent's step (a model building its
    decode stack) sees its layers' weights already laid out."""
    for module in reversed(list(model.modules())):
        post_load = getattr(module, "process_weights_after_loading", None)
        if callable(post_load):
            post_load()
