"""GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum), 4 bits, with act-order.

On disk, per linear (``in`` = in_features, ``out`` = out_features, G = group_size, or ``in``
when group_size is -1):

    qweight [in // 8, out] int32     8 input rows per word, sequential: nibble j (bits 4j..4j+3)
                                     of qweight[i, n] is q[8i + j, n]
    qzeros  [in // G, out // 8] int32  zero points, 8 output columns per word, sequential
    scales  [in // G, out] float16
    g_idx   [in] int32               group of each input row (act-order permutes them)
    W^T[k, n] = (q[k, n] - zero[g_idx[k], n]) * scales[g_idx[k], n]

Zero points: checkpoint_format "gptq" (v1, AutoGPTQ's and the default when the config names
none) stores ``zero - 1``, so loading adds 1 back to the unpacked nibble (a stored 0xF reads
as 16, exactly as AutoGPTQ's own kernels do); "gptq_v2" (GPTQModel format="gptq_v2") stores
the zero point as is. Symmetric 4-bit GPTQ (zero 8) therefore stores 7 in v1 files.

qweight is already membound's K-packed layout and loads column by column. With act-order
(``desc_act``, or any g_idx that is not ``k // G``), rows are sorted by group once every shard
is in: the packed rows are permuted so groups are contiguous and the permutation is kept in
``perm`` (the kernel reads ``x[:, perm[k]]`` for weight row k). The fused q/k/v (or gate/up)
shards share their input, hence GPTQ gives them one g_idx; different ones are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from membound.kernels.int4_gemm import pack_int4, unpack_int4
from membound.layers.quantization.base import (
    QuantizedWeightError,
    TensorSpec,
    check_kind,
    copy_slice,
    layer_name,
    on_device,
    register_method,
    spec,
)
from membound.layers.quantization.int4_rtn import Int4LinearMethod


@register_method("gptq")
class GPTQLinearMethod(Int4LinearMethod):
    name = "gptq"

    @property
    def zero_offset(self) -> int:
        assert self.config is not None
        return 1 if self.config.checkpoint_format == "gptq" else 0

    def checkpoint_specs(self, input_size: int, output_size: int) -> dict[str, TensorSpec]:
        assert self.config is not None
        groups = input_size // self.group_size(input_size)
        return {
            "qweight": spec((input_size // 8, output_size), kinds=("int32",)),
            "qzeros": spec((groups, output_size // 8), kinds=("int32",)),
            "scales": spec((groups, output_size)),
            "g_idx": spec((input_size,), kinds=("int32", "int64"), required=self.config.desc_act),
        }

    def load(
        self, layer: nn.Module, suffix: str, loaded: torch.Tensor, rows: tuple[int, int], name: str
    ) -> None:
        start, size = rows
        if suffix == "qweight":
            self.check_int32(loaded, name)
            copy_slice(layer.qweight, loaded, 1, start, size, name)
        elif suffix == "qzeros":
            self.check_int32(loaded, name)
            z = self.unpack_columns(on_device(layer, loaded, "zeros")) + self.zero_offset
            self.store_columns(layer, rows, zeros=z, name=name)
        elif suffix == "scales":
            check_kind(loaded, ("float",), name)
            self.store_columns(layer, rows, scales=loaded, name=name)
        elif suffix == "g_idx":
            check_kind(loaded, ("int32", "int64"), name)
            self._set_g_idx(layer, on_device(layer, loaded, "qweight").to(torch.int64), name)
        else:
            raise KeyError(name)

    @staticmethod
    def _set_g_idx(layer: nn.Module, g_idx: torch.Tensor, name: str) -> None:
        previous = getattr(layer, "_g_idx", None)
        if previous is not None and not torch.equal(previous, g_idx):
            raise QuantizedWeightError(
                f"{name}: the shards fused into {layer_name(layer)} have different g_idx; "
                "membound needs one act-order permutation per fused layer"
            )
        layer._g_idx = g_idx

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        self._apply_act_order(layer)  # before the base class lays the weight out for a backend
        super().process_weights_after_loading(layer)

    def _apply_act_order(self, layer: nn.Module) -> None:
        g_idx = layer.__dict__.pop("_g_idx", None)
        if g_idx is None:
            return
        k, g = g_idx.numel(), layer.group_size
        groups = k // g
        if g_idx.min() < 0 or g_idx.max() >= groups:
            raise QuantizedWeightError(
                f"{layer_name(layer)}.g_idx holds groups outside [0, {groups})"
            )
        trivial = torch.arange(k, device=g_idx.device) // g
        if torch.equal(g_idx, trivial):
            return
        counts = torch.bincount(g_idx, minlength=groups)
        if not bool((counts == g).all()):
            raise QuantizedWeightError(
                f"{layer_name(layer)}.g_idx does not give every group {g} rows; "
                "the group_size in quantization_config does not match the checkpoint"
            )
        perm = torch.sort(g_idx, stable=True).indices  # weight rows, grouped
        q = unpack_int4(layer.qweight.data, 0)[perm]  # [in, out]: row k = input row perm[k]
        with torch.no_grad():
            layer.qweight.copy_(pack_int4(q, 0))
        layer.perm = perm.to(torch.int32)
