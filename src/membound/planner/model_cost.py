"""Bytes and FLOPs of one model at one precision and tensor-parallel degree.

Every linear layer is listed once as a ``LinearGroup`` with how tensor parallelism
shards it, so weights per GPU, bytes read per decode step and FLOPs per token all come
from the same per-GPU matrix shapes:

    column  out_features split over TP ranks       q_proj, gate_up, experts' gate_up, lm_head
    row     in_features split over TP ranks        o_proj, down
    kv      each rank holds ceil(kv_heads / TP)    k_proj, v_proj (replicated once TP > kv_heads)
    replicated                                     MoE router, shared-expert gate

KV cache: 2 x layers x kv_heads x head_dim x bytes per token; per GPU under TP the
heads term is ceil(kv_heads / TP), so KV capacity stops growing once TP > kv_heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from membound.planner.errors import PlannerError
from membound.planner.model_shape import ModelShape
from membound.planner.precision import (
    kv_dtype_bytes,
    normalize_kv_dtype,
    weight_format,
)


@dataclass(frozen=True)
class LinearGroup:
    """``count`` matrices of shape [out_features, in_features] (``active``: used per token)."""

    name: str
    out_features: int
    in_features: int
    count: int
    active: int
    split: str  # "column" | "row" | "kv" | "replicated"
    quantized: bool
    expert: bool = False

    def gpu_shape(self, shape: ModelShape, tp: int) -> tuple[int, int]:
        """[out, in] of this matrix on one of ``tp`` ranks."""
        if self.split == "column":
            return math.ceil(self.out_features / tp), self.in_features
        if self.split == "row":
            return self.out_features, math.ceil(self.in_features / tp)
        if self.split == "kv":
            return math.ceil(shape.num_kv_heads / tp) * shape.head_dim, self.in_features
        return self.out_features, self.in_features


def linear_groups(shape: ModelShape) -> tuple[LinearGroup, ...]:
    """Every matmul weight in the model, lm_head included (tied or not)."""
    h, layers = shape.hidden_size, shape.num_layers
    groups = [
        LinearGroup("q_proj", shape.q_size, h, layers, layers, "column", True),
        LinearGroup("k_proj+v_proj", shape.kv_size, h, 2 * layers, 2 * layers, "kv", True),
        LinearGroup("o_proj", h, shape.q_size, layers, layers, "row", True),
    ]
    up = 2 if shape.gated_mlp else 1
    dense = shape.num_dense_layers
    if dense:
        inter = shape.intermediate_size
        groups.append(LinearGroup("mlp.up", up * inter, h, dense, dense, "column", True))
        groups.append(LinearGroup("mlp.down", h, inter, dense, dense, "row", True))
    moe = shape.num_moe_layers
    if moe:
        e, k, inter = shape.num_experts, shape.num_experts_per_tok, shape.moe_intermediate_size
        groups.append(
            LinearGroup("experts.up", up * inter, h, moe * e, moe * k, "column", True, True)
        )
        groups.append(LinearGroup("experts.down", h, inter, moe * e, moe * k, "row", True, True))
        groups.append(LinearGroup("router", e, h, moe, moe, "replicated", False))
        if shape.shared_expert_intermediate_size:
            s = shape.shared_expert_intermediate_size
            groups.append(LinearGroup("shared.up", up * s, h, moe, moe, "column", True))
            groups.append(LinearGroup("shared.down", h, s, moe, moe, "row", True))
        if shape.shared_expert_gate:
            groups.append(LinearGroup("shared.gate", 1, h, moe, moe, "replicated", False))
    groups.append(LinearGroup("lm_head", shape.vocab_size, h, 1, 1, "column", False))
    return tuple(groups)


def vector_params(shape: ModelShape) -> int:
    """Norm weights and biases (small; stored unquantized and replicated)."""
    width = 2 if shape.layernorm_bias else 1
    params = (shape.num_layers * shape.norms_per_layer + 1) * shape.hidden_size * width
    if shape.qk_norm:
        params += shape.num_layers * 2 * shape.head_dim
    if shape.qkv_bias:
        params += shape.num_layers * (shape.q_size + 2 * shape.kv_size)
    if shape.o_bias:
        params += shape.num_layers * shape.hidden_size
    if shape.mlp_bias and shape.num_dense_layers:
        up = 2 if shape.gated_mlp else 1
        params += shape.num_dense_layers * (up * shape.intermediate_size + shape.hidden_size)
    return params


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int  # per token: routed experts counted top-k, not all
    embedding: int


def param_counts(shape: ModelShape) -> ParamCounts:
    """Parameters, total and active; a tied lm_head is the embedding and counts once."""
    embedding = shape.vocab_size * shape.hidden_size
    total = active = embedding + vector_params(shape)
    for g in linear_groups(shape):
        if g.name == "lm_head" and shape.tie_word_embeddings:
            continue
        total += g.count * g.out_features * g.in_features
        active += g.active * g.out_features * g.in_features
    return ParamCounts(total=total, active=active, embedding=embedding)


def expected_experts_fraction(shape: ModelShape, tokens: int) -> float:
    """Share of a MoE layer's experts that ``tokens`` tokens touch (uniform routing)."""
    if not shape.is_moe:
        return 0.0
    miss = (1.0 - shape.num_experts_per_tok / shape.num_experts) ** max(tokens, 1)
    return 1.0 - miss


@dataclass(frozen=True)
class ModelCost:
    """One model at one weight precision, KV dtype and TP degree. Per-GPU figures."""

    shape: ModelShape
    precision: str
    kv_dtype: str
    tp: int
    params: ParamCounts
    weight_bytes: int  # the whole model, summed over ranks (replicated parts counted once)
    weight_bytes_per_gpu: int
    dense_read_bytes_per_gpu: int  # read every decode step: all but experts and embedding
    expert_bytes_per_gpu: int  # all routed experts on one rank
    linear_flops_per_token_per_gpu: int  # 2 x active linear weights, lm_head excluded
    lm_head_flops_per_token_per_gpu: int
    expert_flops_per_token_per_gpu: int  # the routed experts' part of linear_flops
    kv_heads_per_gpu: int

    @property
    def kv_bytes_per_token(self) -> int:
        """Whole model, every rank together (TP=1 view): 2 x L x kv_heads x head_dim x bytes."""
        s = self.shape
        return 2 * s.num_layers * s.num_kv_heads * s.head_dim * kv_dtype_bytes(self.kv_dtype)

    @property
    def kv_bytes_per_token_per_gpu(self) -> int:
        s = self.shape
        return 2 * s.num_layers * self.kv_heads_per_gpu * s.head_dim * kv_dtype_bytes(self.kv_dtype)

    def kv_bytes_for_context(self, context: int, block_size: int = 1) -> int:
        """KV bytes one sequence of ``context`` tokens holds on one GPU (sliding layers capped)."""
        s = self.shape
        tokens = math.ceil(context / block_size) * block_size
        per_layer_token = 2 * self.kv_heads_per_gpu * s.head_dim * kv_dtype_bytes(self.kv_dtype)
        full = s.num_layers - s.num_sliding_layers
        sliding = 0
        if s.num_sliding_layers and s.sliding_window:
            window = math.ceil(s.sliding_window / block_size) * block_size
            sliding = s.num_sliding_layers * min(tokens, window)
        return per_layer_token * (full * tokens + sliding)

    def weight_read_bytes(self, tokens: int) -> int:
        """Weight bytes one forward pass over ``tokens`` tokens reads on one GPU."""
        return self.dense_read_bytes_per_gpu + self.expert_read_bytes(tokens)

    def expert_read_bytes(self, tokens: int) -> int:
        """Routed-expert bytes a pass over ``tokens`` tokens reads on one GPU: each MoE layer
        reads the experts its tokens touch, ``E (1 - (1 - k/E)^tokens)`` of ``E`` under
        uniform routing (k per token for one token, all of them for a large batch)."""
        frac = expected_experts_fraction(self.shape, tokens)
        return round(self.expert_bytes_per_gpu * frac)

    def attention_flops(self, context: int) -> int:
        """QK^T and AV FLOPs for one query token attending to ``context`` keys, one GPU."""
        s = self.shape
        heads = math.ceil(s.num_attention_heads / self.tp)
        full = s.num_layers - s.num_sliding_layers
        keys = full * context
        if s.num_sliding_layers:
            keys += s.num_sliding_layers * min(context, s.sliding_window or context)
        return 4 * heads * s.head_dim * keys

    def prefill_attention_flops(self, input_len: int) -> int:
        """Causal attention FLOPs for a whole prompt (token i attends to i + 1 keys)."""
        s = self.shape
        heads = math.ceil(s.num_attention_heads / self.tp)
        full = s.num_layers - s.num_sliding_layers
        keys = full * input_len * (input_len + 1) // 2
        if s.num_sliding_layers:
            w = min(s.sliding_window or input_len, input_len)
            keys += s.num_sliding_layers * (w * (w + 1) // 2 + (input_len - w) * w)
        return 4 * heads * s.head_dim * keys


def model_cost(shape: ModelShape, precision: str, kv_dtype: str, tp: int = 1) -> ModelCost:
    """Bytes and FLOPs of ``shape`` stored in ``precision`` and sharded over ``tp`` GPUs."""
    if not isinstance(tp, int) or tp < 1:
        raise PlannerError(f"tp must be a positive integer, got {tp!r}")
    fmt = weight_format(precision)
    kv_dtype = normalize_kv_dtype(kv_dtype)
    params = param_counts(shape)
    plain = fmt.unquantized_bytes  # embeddings, lm_head, norms, routers
    vectors = vector_params(shape) * plain
    embed_gpu = math.ceil(shape.vocab_size / tp) * shape.hidden_size * plain
    total = vectors + params.embedding * plain
    per_gpu = vectors + embed_gpu
    dense_read = vectors
    experts = linear_flops = lm_flops = expert_flops = 0
    for g in linear_groups(shape):
        out_f, in_f = g.gpu_shape(shape, tp)
        size = fmt.matrix_bytes if g.quantized else (lambda o, i: o * i * plain)
        flops = 2 * g.active * out_f * in_f
        if g.name == "lm_head":
            lm_flops = flops
            if shape.tie_word_embeddings:  # the embedding table is this matrix: read, not stored
                dense_read += size(out_f, in_f)
                continue
        else:
            linear_flops += flops
            expert_flops += flops if g.expert else 0
        full_bytes = g.count * size(g.out_features, g.in_features)
        gpu_bytes = g.count * size(out_f, in_f)
        total += full_bytes
        per_gpu += gpu_bytes
        if g.expert:
            experts += gpu_bytes
        else:
            dense_read += gpu_bytes
    return ModelCost(
        shape=shape,
        precision=fmt.name,
        kv_dtype=kv_dtype,
        tp=tp,
        params=params,
        weight_bytes=total,
        weight_bytes_per_gpu=per_gpu,
        dense_read_bytes_per_gpu=dense_read,
        expert_bytes_per_gpu=experts,
        linear_flops_per_token_per_gpu=linear_flops,
        lm_head_flops_per_token_per_gpu=lm_flops,
        expert_flops_per_token_per_gpu=expert_flops,
        kv_heads_per_gpu=math.ceil(shape.num_kv_heads / tp),
    )
