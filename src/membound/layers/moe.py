"""Mixture of Experts: the top-k router, experts fused into one weight per projection, and
the sparse MLP block.

    router      probs = softmax(x W_gate^T) in fp32; the top_k experts per token; their
                weights renormalised to sum to 1 when ``renormalize`` (Mixtral always: the
                same as a softmax over the top-k logits; Qwen when norm_topk_prob)
    experts     w13 [experts, 2 * inter, hidden] (gate rows, then up rows), w2 [experts,
                hidden, inter]; tokens sorted by expert, two grouped GEMMs
                (kernels/moe_gemm.py) around SiLU-and-mul, weighted, summed over top_k

Under tensor parallelism each rank holds, for every expert, its slice of the intermediate
dim (like a column-then-row-parallel MLP), or with expert parallelism whole experts:
``num_experts / TP`` of them, the others' pairs skipped. Either way a rank's output is a
partial sum; ``SparseMoEBlock`` adds the shared expert's partial and all-reduces once.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from membound.distributed.context import ParallelContext
from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.kernels.moe_gemm import moe_align
from membound.layers.checkpoint_tensor import LazyTensor, materialize
from membound.layers.linear import Linear, WeightShapeError
from membound.layers.quantization import TensorSpec

PIECES = ("gate", "up", "down")  # per expert: rows of w13 (gate, up) and w2 (down)


def select_experts(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, experts] logits -> (weights [T, top_k] fp32, expert ids [T, top_k] int64)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    ops: KernelOps,
    expert_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_k weight_k * expert_k(x) for each token of x [T, hidden] -> [T, hidden]."""
    num_tokens, top_k = topk_ids.shape
    al = moe_align(topk_ids, w13.shape[0], expert_map=expert_map)
    pairs = {"sorted_token_ids": al.sorted_token_ids, "expert_ids": al.expert_ids,
             "num_pairs": al.num_pairs, "block_m": al.block_m}  # fmt: skip
    gate_up = ops.moe_gemm(a=x, w=w13, **pairs, a_row_div=top_k, topk_weights=None)
    act = ops.silu_and_mul(x=gate_up)  # [T * top_k, inter]; gate_up [T * top_k, 2 * inter]
    out = ops.moe_gemm(a=act, w=w2, **pairs, a_row_div=1,
                       topk_weights=topk_weights.reshape(-1))  # [T * top_k, hidden]  # fmt: skip
    return out.view(num_tokens, top_k, -1).sum(dim=1)


class FusedMoE(nn.Module):
    """The routed experts of one layer; forward returns this rank's partial sum (not reduced).

    Checkpoint tensors come one per expert and projection; shard id (expert, piece) with
    piece "gate" / "up" -> ``w13_weight``, "down" -> ``w2_weight``. A rank reads only its
    slice of each, and nothing of experts another rank holds."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        renormalize: bool,
        parallel: ParallelContext | None = None,
        expert_parallel: bool = False,
        prefix: str = "",
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.parallel = parallel or ParallelContext.single()
        tp, rank = self.parallel.world_size, self.parallel.rank
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.hidden_size, self.intermediate_size, self.prefix = hidden_size, intermediate_size, prefix
        self.expert_parallel = expert_parallel and tp > 1
        local_experts = num_experts // tp if self.expert_parallel else num_experts
        self.first_expert = rank * local_experts if self.expert_parallel else 0
        self.local_inter = intermediate_size if self.expert_parallel else intermediate_size // tp
        inter = self.local_inter
        self.w13_weight = nn.Parameter(
            torch.empty(local_experts, 2 * inter, hidden_size), requires_grad=False
        )
        self.w2_weight = nn.Parameter(
            torch.empty(local_experts, hidden_size, inter), requires_grad=False
        )
        emap = None
        if self.expert_parallel:  # global expert -> local index, -1 on other ranks
            emap = torch.full((num_experts,), -1, dtype=torch.int64)
            emap[self.first_expert : self.first_expert + local_experts] = torch.arange(
                local_experts
            )
        self.expert_map: torch.Tensor | None
        self.register_buffer("expert_map", emap, persistent=False)
        self.ops = ops or TORCH_OPS

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(router_logits, self.top_k, self.renormalize)
        return fused_experts(x, self.w13_weight, self.w2_weight, weights, ids, self.ops,
                             self.expert_map)

    # ---- loading ------------------------------------------------------------------------
    def shard_ids(self) -> tuple[object, ...]:
        return tuple((e, piece) for e in range(self.num_experts) for piece in PIECES)

    def checkpoint_specs(self, shard_id: object = None) -> dict[str, TensorSpec]:
        h, i = self.hidden_size, self.intermediate_size
        if shard_id is None:
            return {}
        if shard_id[1] == "down":  # type: ignore[index]
            return {"w2_weight": TensorSpec(((h, i),))}
        return {"w13_weight": TensorSpec(((i, h),))}

    def load_checkpoint_tensor(
        self, suffix: str, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
        name: str = "?",
    ) -> None:
        expert, piece = cast("tuple[int, str]", shard_id)
        local = expert - self.first_expert
        if not 0 <= local < self.w13_weight.shape[0]:
            return  # another rank's expert: not read
        down = piece == "down"
        full = (self.hidden_size, self.intermediate_size) if down else (
            self.intermediate_size, self.hidden_size)
        if tuple(loaded.shape) != full:
            raise WeightShapeError(
                f"tensor {name!r} has shape {tuple(loaded.shape)} but the model expects {full}; "
                "the checkpoint does not match its config.json"
            )
        inter = self.local_inter
        if inter != self.intermediate_size:  # TP slices the intermediate dim of every expert
            loaded = loaded.narrow(1 if down else 0, self.parallel.rank * inter, inter)
        if down:
            target = self.w2_weight[local]
        else:
            target = self.w13_weight[local].narrow(0, 0 if piece == "gate" else inter, inter)
        with torch.no_grad():
            target.copy_(materialize(loaded))

    def process_weights_after_loading(self) -> None:
        return None


class SparseMoEBlock(nn.Module):
    """Router (``gate``) + routed ``experts`` (+ a ``shared_expert`` whose output is scaled by
    ``sigmoid(shared_expert_gate(x))``, Qwen2-MoE), all-reduced once under TP.

    ``shared_expert`` must return a partial sum under TP (row-parallel down projection
    built with ``reduce_results=False``)."""

    def __init__(
        self,
        experts: FusedMoE,
        shared_expert: nn.Module | None = None,
        shared_expert_gate: bool = False,
    ) -> None:
        super().__init__()
        h, prefix = experts.hidden_size, experts.prefix.rpartition(".")[0]
        self.parallel = experts.parallel
        ops = experts.ops
        self.gate = Linear(h, experts.num_experts, prefix=f"{prefix}.gate", ops=ops)  # replicated
        self.experts = experts
        self.shared_expert = shared_expert
        self.shared_expert_gate = (
            Linear(h, 1, prefix=f"{prefix}.shared_expert_gate", ops=ops)
            if shared_expert_gate else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [num_tokens, hidden] -> [num_tokens, hidden]."""
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return self.parallel.all_reduce(out)
