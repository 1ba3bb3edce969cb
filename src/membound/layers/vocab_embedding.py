"""Token embedding and the LM head (tied or untied), vocab-parallel under TP.

Each rank holds ``ceil(vocab_size / TP)`` rows of the table (the last rank's tail is zero
padding) and reads only those rows from the checkpoint:

    embedding  ids outside the rank's rows look up row 0 and are zeroed; one all-reduce
               sums the ranks' rows into the full embedding
    LM head    each rank's logits for its rows, gathered onto rank 0 (the only rank that
               samples) and cut back to vocab_size; other ranks get None
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from membound.distributed.context import ParallelContext
from membound.kernels.cpu_linear import (
    can_prepack,
    linear_prepacked,
    prefers_column_major,
    prepack_weight,
    to_column_major,
)
from membound.layers.checkpoint_tensor import LazyTensor, materialize
from membound.layers.linear import WeightShapeError


class VocabEmbedding(nn.Module):
    def __init__(
        self, vocab_size: int, hidden_size: int, parallel: ParallelContext | None = None
    ) -> None:
        super().__init__()
        self.parallel = parallel or ParallelContext.single()
        tp, rank = self.parallel.world_size, self.parallel.rank
        self.vocab_size = vocab_size
        self.rows_per_rank = -(-vocab_size // tp)
        self.vocab_start = min(rank * self.rows_per_rank, vocab_size)
        self.vocab_end = min(self.vocab_start + self.rows_per_rank, vocab_size)
        self.weight = nn.Parameter(
            torch.empty(self.rows_per_rank, hidden_size), requires_grad=False
        )
        self.weight.weight_loader = self.load_rows  # type: ignore[attr-defined]
        self.weight.checkpoint_shape = (vocab_size, hidden_size)  # type: ignore[attr-defined]

    def load_rows(
        self, param: torch.Tensor, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
        name: str = "?",
    ) -> None:
        """Copy this rank's rows of the [vocab_size, hidden] checkpoint table; zero the pad."""
        expected = (self.vocab_size, param.shape[1])
        if tuple(loaded.shape) != expected:
            raise WeightShapeError(
                f"tensor {name!r} has shape {tuple(loaded.shape)} but the model expects "
                f"{expected}; the checkpoint does not match its config.json"
            )
        n = self.vocab_end - self.vocab_start
        rows = loaded if self.parallel.world_size == 1 else loaded.narrow(0, self.vocab_start, n)
        with torch.no_grad():
            param[:n].copy_(materialize(rows))
            param[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.world_size == 1:
            return F.embedding(input_ids, self.weight)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local = torch.where(mine, input_ids - self.vocab_start, 0)
        out = F.embedding(local, self.weight)  # [num_tokens, hidden]
        out.masked_fill_(~mine.unsqueeze(-1), 0)
        return self.parallel.all_reduce(out)


class LMHead(nn.Module):
    """logits = hidden @ W^T, W either its own parameter or the (tied) embedding's."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        tied_to: VocabEmbedding | None,
        parallel: ParallelContext | None = None,
        kernel_backend: str = "torch",
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.kernel_backend = kernel_backend  # the backend serving: "cpu" re-lays it out
        self.tied = tied_to is not None
        if tied_to is not None:
            self.parallel = tied_to.parallel
            self.weight = tied_to.weight
        else:
            table = VocabEmbedding(vocab_size, hidden_size, parallel)
            self.parallel = table.parallel
            self.weight = table.weight  # same sharding and loader as an embedding table
        # CPU backend, bf16: the weight prepacked for oneDNN (kernels/cpu_linear.py); a tied
        # head keeps the embedding's table too (its lookups need the plain rows). A parameter,
        # so the memory report counts the second copy
        self.register_parameter("packed_weight", None)

    def process_weights_after_loading(self) -> None:
        """The CPU backend prepacks a bf16 head for oneDNN (a tied one as a second copy: the
        embedding looks its rows up) and keeps an untied fp32 (wide) head column-major:
        faster logits for few rows. A tied fp32 head stays row-major."""
        if self.kernel_backend != "cpu":
            return
        if can_prepack(self.weight):
            self.packed_weight = nn.Parameter(prepack_weight(self.weight), requires_grad=False)
            if not self.tied:  # the packed weight is the only copy
                self.weight = self.packed_weight
        elif not self.tied and prefers_column_major(self.weight):
            to_column_major(self.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[num_rows, vocab_size] logits; None on ranks other than 0 under TP."""
        if self.packed_weight is not None:
            logits = linear_prepacked(hidden, self.packed_weight)
        else:
            logits = F.linear(hidden, self.weight)  # [num_rows, rows_per_rank]
        if self.parallel.world_size == 1:
            return logits
        full = self.parallel.gather(logits, dim=-1)
        return full[:, : self.vocab_size] if full is not None else None
