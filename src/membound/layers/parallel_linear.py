"""Tensor-parallel linear layers: each rank holds a slice and reads only that slice.

    column-parallel   W [out, in] split by output rows:   y_r = x W_r^T   (no communication)
    row-parallel      W [out, in] split by input columns: y = sum_r x_r W_r^T (one all-reduce)

A block is column-parallel then row-parallel (q/k/v -> attention -> o_proj; gate/up -> act
-> down), so each attention block and each MLP block costs one all-reduce of the hidden
states. Fused layers split each piece separately: a rank's gate/up rows are its slice of
gate followed by its slice of up. Q heads split evenly; KV heads too while TP <= KV heads,
beyond that rank r holds KV head r // (TP / KV heads) (replicated on TP / KV heads ranks).

At TP=1 these are exactly Linear / MergedLinear (no slicing, no communication). Quantized
weights are not sharded yet (ParallelConfig refuses TP > 1 with quantization).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from membound.distributed.context import ParallelContext
from membound.kernels.contract import KernelOps
from membound.layers.checkpoint_tensor import LazyTensor
from membound.layers.linear import Linear, MergedLinear
from membound.layers.quantization import QuantizationMethod


def _split(size: int, tp: int, what: str) -> int:
    if size % tp:
        raise ValueError(f"{what}={size} is not divisible by tensor_parallel_size={tp}")
    return size // tp


class MergedColumnParallelLinear(MergedLinear):
    """Pieces of ``output_sizes`` (checkpoint sizes) each split over the ranks."""

    def __init__(
        self,
        input_size: int,
        output_sizes: Sequence[int],
        shard_ids: Sequence[object],
        bias: bool = False,
        quant_method: QuantizationMethod | None = None,
        prefix: str = "",
        parallel: ParallelContext | None = None,
        local_sizes: Sequence[int] | None = None,
        *,
        ops: KernelOps | None = None,
    ) -> None:
        self.parallel = parallel or ParallelContext.single()
        tp = self.parallel.world_size
        local = list(local_sizes or [_split(s, tp, f"{prefix} output") for s in output_sizes])
        super().__init__(input_size, local, shard_ids, bias, quant_method, prefix, ops=ops)
        self.full_sizes = dict(zip(shard_ids, output_sizes, strict=True))

    def checkpoint_rows(self, shard_id: object = None) -> int:
        if shard_id is None:
            return sum(self.full_sizes.values())
        return self.full_sizes[shard_id]

    def rank_start(self, shard_id: object) -> int:
        """First checkpoint row of this rank's slice of one piece."""
        return self.parallel.rank * self.shard_offsets[shard_id][1]

    def checkpoint_slice(self, suffix: str, shard_id: object) -> tuple[int, int, int] | None:
        if self.parallel.world_size == 1:
            return None
        return 0, self.rank_start(shard_id), self.shard_offsets[shard_id][1]

    def load_checkpoint_tensor(
        self, suffix: str, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
        name: str = "?",
    ) -> None:
        if shard_id is not None or self.parallel.world_size == 1:
            super().load_checkpoint_tensor(suffix, loaded, shard_id, name)
            return
        # an already-fused checkpoint tensor: cut it into its pieces, then slice each
        start = 0
        for sid, size in self.full_sizes.items():
            super().load_checkpoint_tensor(suffix, loaded.narrow(0, start, size), sid, name)
            start += size


class QKVParallelLinear(MergedColumnParallelLinear):
    """Fused q/k/v: output [q_size | kv_size | kv_size] of this rank's heads."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        quant_method: QuantizationMethod | None = None,
        prefix: str = "",
        parallel: ParallelContext | None = None,
        *,
        ops: KernelOps | None = None,
    ) -> None:
        ctx = parallel or ParallelContext.single()
        tp = ctx.world_size
        self.num_heads = _split(num_heads, tp, f"{prefix} num_heads")
        self.num_kv_heads = max(1, num_kv_heads // tp)  # per rank; 1 (replicated) past TP
        self.kv_head_start = (
            ctx.rank * self.num_kv_heads if tp <= num_kv_heads else ctx.rank // (tp // num_kv_heads)
        )
        self.head_dim = head_dim
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        full_kv = num_kv_heads * head_dim
        super().__init__(
            hidden_size, [num_heads * head_dim, full_kv, full_kv], "qkv", bias, quant_method,
            prefix, ctx, [self.q_size, self.kv_size, self.kv_size], ops=ops,
        )

    def rank_start(self, shard_id: object) -> int:
        if shard_id == "q":
            return self.parallel.rank * self.q_size
        return self.kv_head_start * self.head_dim


class RowParallelLinear(Linear):
    """W split by input columns; ``reduce_results`` all-reduces the partial outputs (off for
    a block that sums several partials first and reduces once, such as MoE + shared expert).
    The bias is added once, on rank 0, before the reduction."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        quant_method: QuantizationMethod | None = None,
        prefix: str = "",
        parallel: ParallelContext | None = None,
        reduce_results: bool = True,
        *,
        ops: KernelOps | None = None,
    ) -> None:
        self.parallel = parallel or ParallelContext.single()
        local_in = _split(input_size, self.parallel.world_size, f"{prefix} input_size")
        super().__init__(local_in, output_size, bias, quant_method, prefix, ops=ops)
        self.checkpoint_input_size = input_size
        self.reduce_results = reduce_results

    def checkpoint_slice(self, suffix: str, shard_id: object) -> tuple[int, int, int] | None:
        if self.parallel.world_size == 1 or suffix == "bias":
            return None
        return 1, self.parallel.rank * self.input_size, self.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self.parallel.is_driver else None
        y = self.quant_method.apply(self, x, bias)
        return self.parallel.all_reduce(y) if self.reduce_results else y
