"""AutoAWQ checkpoints, GEMM layout (quant_method "awq", version "gemm", 4 bits).

On disk, per linear (``in`` = in_features, ``out`` = out_features, G = group_size):

    qweight [in, out // 8] int32    8 output columns per word, nibbles interleaved: nibble i
                                    (bits 4i..4i+3) holds column AWQ_ORDER[i] of the 8
    qzeros  [in // G, out // 8] int32  zero points, packed and interleaved the same way
    scales  [in // G, out] float16
    W^T[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]      (no zero-point offset)

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] is AutoAWQ's pack order (its kernels unpack with
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]). Loading unpacks the interleaving and repacks
into membound's K-packed int4 layout (int4_rtn.py), shard by shard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from membound.layers.quantization.base import (
    TensorSpec,
    check_kind,
    on_device,
    register_method,
    require_multiple,
    spec,
)
from membound.layers.quantization.int4_rtn import Int4LinearMethod

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@register_method("awq")
class AWQLinearMethod(Int4LinearMethod):
    name = "awq"

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: Sequence[int], dtype: torch.dtype
    ) -> None:
        for size in output_sizes:
            require_multiple(layer, "out_features", size, 8, "AWQ packs 8 output columns")
        super().create_weights(layer, input_size, output_sizes, dtype)

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        groups = input_size // self.group_size(input_size)
        return {
            "qweight": spec((input_size, output_size // 8), kinds=("int32",)),
            "qzeros": spec((groups, output_size // 8), kinds=("int32",)),
            "scales": spec((groups, output_size)),
        }

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        if suffix == "scales":
            check_kind(loaded, ("float",), name)
            self.store_columns(layer, rows, scales=loaded, name=name)
            return
        if suffix not in ("qweight", "qzeros"):
            raise KeyError(name)
        self.check_int32(loaded, name)
        values = self.unpack_columns(on_device(layer, loaded, "qweight"), AWQ_ORDER)
        if suffix == "qweight":
            self.store_columns(layer, rows, q=values, name=name)  # [in, size]
        else:
            self.store_columns(layer, rows, zeros=values, name=name)  # [in // G, size]
