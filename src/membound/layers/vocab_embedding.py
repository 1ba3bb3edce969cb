"""Token embedding and the LM head (tied or untied), vocab-parallel under TP.

Each rank holds ``ceil(vocab_size / TP)`` rows of the table (the last rank's tail is zero
padding) and reads only those rows from the checkpoint:

    embedding  ids outside the rank's rows look up row 0 and are zeroed; one all-reduce
               sums the ranks' rows into the full embedding
    LM head    each rank's logits for its rows, gathered onto rank 0 (the only rank that
               samples) and cut back to vocab_size; other ranks get None

A table is float (the model dtype) or **int8**: ``weight`` int8 ``[rows, hidden]`` and one
``weight_scale`` per row (model dtype), ``row = weight[i] * weight_scale[i]``, quantized
symmetric per row while loading (GGUF files whose token embedding / output table is a
quantized block type: ``QuantizationConfig.int8_modules``). The lookup gathers int8 rows and
scales them; the head is a per-output-channel weight-only int8 GEMM over the same table, so
a tied head adds no second copy: torch's packed CPU kernel (``int8_weight_only_linear``) on
the CPU backend in a bf16 model, ``int8_logits_ref`` (dequantize a chunk of rows at a time)
everywhere else. Both tables load through ``load_checkpoint_tensor`` like linears do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from membound.config import QuantizationConfig
from membound.distributed.context import ParallelContext
from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.kernels.cpu_linear import (
    can_prepack,
    is_vnni,
    linear_prepacked,
    prefers_column_major,
    prepack_weight,
    to_column_major,
)
from membound.kernels.cpu_quant_linear import (
    KERNEL_DTYPE,
    has_cpu_quant_kernels,
    int8_weight_only_linear,
)
from membound.layers.checkpoint_tensor import LazyTensor, materialize
from membound.layers.linear import WeightShapeError
from membound.layers.quantization.base import TensorSpec
from membound.layers.quantization.int8 import quantize_int8_rows

_ROW_CHUNK = 8192  # table rows quantized / dequantized at a time (bounds the fp32 scratch)


def int8_table(quantization: QuantizationConfig | None, module: str) -> bool:
    """True if the table of ``module`` (model.embed_tokens, lm_head) is held int8."""
    return quantization is not None and quantization.is_int8(module)


def int8_lookup(
    ids: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Rows ``ids`` of the int8 table, scaled, in the scale's dtype: [num_tokens, hidden]."""
    rows = weight.index_select(0, ids).to(torch.float32)
    return (rows * scale.index_select(0, ids).to(torch.float32)[:, None]).to(scale.dtype)


def int8_logits_ref(
    hidden: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """hidden [M, K] @ (W_q * s)^T -> [M, N] float32, ``_ROW_CHUNK`` table rows at a time."""
    x = hidden.to(torch.float32)
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, weight.shape[0], _ROW_CHUNK):
        end = min(start + _ROW_CHUNK, weight.shape[0])
        w = weight[start:end].to(torch.float32) * scale[start:end].to(torch.float32)[:, None]
        out[:, start:end] = x @ w.t()
    return out


@dataclass(frozen=True)
class VocabRows:
    """This rank's rows ``[start, end)`` of a ``vocab_size``-row table (``per_rank`` held)."""

    vocab_size: int
    hidden_size: int
    per_rank: int
    start: int
    end: int
    world_size: int

    @staticmethod
    def of(vocab_size: int, hidden_size: int, parallel: ParallelContext) -> VocabRows:
        per_rank = -(-vocab_size // parallel.world_size)
        start = min(parallel.rank * per_rank, vocab_size)
        end = min(start + per_rank, vocab_size)
        return VocabRows(vocab_size, hidden_size, per_rank, start, end, parallel.world_size)

    def spec(self) -> TensorSpec:
        return TensorSpec(((self.vocab_size, self.hidden_size),), ("float",))

    def load(
        self, weight: torch.Tensor, scale: torch.Tensor | None,
        loaded: torch.Tensor | LazyTensor, name: str,
    ) -> None:
        """Copy (int8: quantize) this rank's rows of the [vocab_size, hidden] checkpoint
        table into ``weight`` (and ``scale``); zero the padding rows."""
        expected = (self.vocab_size, self.hidden_size)
        if tuple(loaded.shape) != expected:
            raise WeightShapeError(
                f"tensor {name!r} has shape {tuple(loaded.shape)} but the model expects "
                f"{expected}; the checkpoint does not match its config.json"
            )
        n = self.end - self.start
        rows = loaded if self.world_size == 1 else loaded.narrow(0, self.start, n)
        with torch.no_grad():
            if scale is None:
                weight[:n].copy_(materialize(rows))
            else:
                full = materialize(rows)
                for start in range(0, n, _ROW_CHUNK):
                    chunk = full[start : start + _ROW_CHUNK].to(weight.device)
                    q, s = quantize_int8_rows(chunk, scale.dtype)
                    weight[start : start + q.shape[0]].copy_(q)
                    scale[start : start + q.shape[0]].copy_(s)
                scale[n:].fill_(1)
            weight[n:].zero_()


def _table_params(
    rows: VocabRows, int8: bool
) -> tuple[nn.Parameter, nn.Parameter | None]:
    """(weight, weight_scale or None) for a table of ``rows``, in the default dtype."""
    shape = (rows.per_rank, rows.hidden_size)
    if not int8:
        return nn.Parameter(torch.empty(shape), requires_grad=False), None
    weight = nn.Parameter(torch.empty(shape, dtype=torch.int8), requires_grad=False)
    return weight, nn.Parameter(torch.empty(rows.per_rank), requires_grad=False)


class VocabEmbedding(nn.Module):
    def __init__(
        self, vocab_size: int, hidden_size: int, parallel: ParallelContext | None = None,
        int8: bool = False,
    ) -> None:
        super().__init__()
        self.parallel = parallel or ParallelContext.single()
        self.rows = VocabRows.of(vocab_size, hidden_size, self.parallel)
        self.vocab_size = vocab_size
        self.vocab_start, self.vocab_end = self.rows.start, self.rows.end
        self.weight, scale = _table_params(self.rows, int8)
        self.register_parameter("weight_scale", scale)  # None for a float table

    # the checkpoint-loading protocol (layers/checkpoint_tensor.py), as linears have it
    def shard_ids(self) -> tuple[object, ...]:
        return (None,)

    def checkpoint_specs(self, shard_id: object = None) -> dict[str, TensorSpec]:
        return {"weight": self.rows.spec()}

    def load_checkpoint_tensor(
        self, suffix: str, loaded: torch.Tensor | LazyTensor, shard_id: object, name: str
    ) -> None:
        if suffix != "weight":
            raise KeyError(name)
        self.rows.load(self.weight, self.weight_scale, loaded, name)

    def dequantize(self) -> torch.Tensor:
        """This rank's rows as float32 ``[rows_per_rank, hidden]``, as looked up."""
        w = self.weight.detach().to(torch.float32)
        return w if self.weight_scale is None else w * self.weight_scale.float()[:, None]

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight_scale is None:
            return F.embedding(ids, self.weight)
        return int8_lookup(ids, self.weight, self.weight_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.world_size == 1:
            return self._lookup(input_ids)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local = torch.where(mine, input_ids - self.vocab_start, 0)
        out = self._lookup(local)  # [num_tokens, hidden]
        out.masked_fill_(~mine.unsqueeze(-1), 0)
        return self.parallel.all_reduce(out)


class LMHead(nn.Module):
    """logits = hidden @ W^T, W either its own table or the (tied) embedding's; an int8
    table (``int8``, or a tied int8 embedding) runs as a weight-only int8 GEMM."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        tied_to: VocabEmbedding | None,
        parallel: ParallelContext | None = None,
        ops: KernelOps | None = None,
        int8: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.ops = ops or TORCH_OPS  # the backend serving: the CPU one re-lays the table out
        self.tied = tied_to is not None
        if tied_to is not None:
            self.parallel = tied_to.parallel
            self.rows = tied_to.rows
            self.weight, scale = tied_to.weight, tied_to.weight_scale  # shared, not copied
        else:
            self.parallel = parallel or ParallelContext.single()
            self.rows = VocabRows.of(vocab_size, hidden_size, self.parallel)
            self.weight, scale = _table_params(self.rows, int8)
        self.register_parameter("weight_scale", scale)
        # CPU backend, bf16 float table: the weight packed for the backend's GEMM, or else
        # prepacked for oneDNN (kernels/cpu_linear.py); a tied head keeps the embedding's table
        # too (its lookups need the plain rows). A parameter, so the memory report counts the
        # second copy. Int8 tables are never copied
        self.register_parameter("packed_weight", None)
        self.int8_cpu_kernel = False  # set after loading: the packed CPU int8 kernel serves

    def shard_ids(self) -> tuple[object, ...]:
        return (None,)

    def checkpoint_specs(self, shard_id: object = None) -> dict[str, TensorSpec]:
        return {} if self.tied else {"weight": self.rows.spec()}  # tied: the embedding loads

    def load_checkpoint_tensor(
        self, suffix: str, loaded: torch.Tensor | LazyTensor, shard_id: object, name: str
    ) -> None:
        if self.tied or suffix != "weight":
            raise KeyError(name)
        self.rows.load(self.weight, self.weight_scale, loaded, name)

    def process_weights_after_loading(self) -> None:
        """The CPU backend packs a bf16 head for its GEMM, or else prepacks it for oneDNN (a
        tied one as a second copy: the embedding looks its rows up) and keeps an untied fp32
        (wide) head column-major:
        faster logits for few rows. A tied fp32 head stays row-major. An int8 table runs
        through the packed CPU int8 kernel where it serves (bf16 scales), as it is."""
        if self.ops.backend.value != "cpu":
            return
        if self.weight_scale is not None:
            self.int8_cpu_kernel = (
                self.weight.device.type == "cpu"
                and self.weight_scale.dtype == KERNEL_DTYPE
                and has_cpu_quant_kernels()
            )
            return
        packed = self.ops.pack_linear_weight(weight=self.weight)
        if packed is None and can_prepack(self.weight):
            packed = prepack_weight(self.weight)
        if packed is not None:
            self.packed_weight = nn.Parameter(packed, requires_grad=False)
            if not self.tied:  # the packed weight is the only copy
                self.weight = self.packed_weight
        elif not self.tied and prefers_column_major(self.weight):
            to_column_major(self.weight)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.weight_scale is not None:
            if self.int8_cpu_kernel:
                return int8_weight_only_linear(hidden, self.weight, self.weight_scale)
            return int8_logits_ref(hidden, self.weight, self.weight_scale).to(hidden.dtype)
        if self.packed_weight is not None and is_vnni(self.packed_weight):
            return self.ops.packed_linear(x=hidden, weight=self.packed_weight, bias=None,
                                          out_features=self.rows.per_rank)  # fmt: skip
        if self.packed_weight is not None:
            return linear_prepacked(hidden, self.packed_weight)
        return F.linear(hidden, self.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[num_rows, vocab_size] logits; None on ranks other than 0 under TP."""
        logits = self._logits(hidden)  # [num_rows, rows_per_rank]
        if self.parallel.world_size == 1:
            return logits
        full = self.parallel.gather(logits, dim=-1)
        return full[:, : self.vocab_size] if full is not None else None
