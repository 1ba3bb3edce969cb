"""Llama-family decoder: Llama (1/2/3/3.1), Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm).

Variants are explicit flags of ModelConfig (``qkv_bias``, ``qk_norm``, ``sliding_window``,
``tie_word_embeddings``); there is one implementation. Checkpoint tensors map onto fused
parameters through ``packed_modules_mapping``. With ``config.quantization`` the decoder's
linears get a quantization method each (by checkpoint module name); embeddings and lm_head
stay in the model dtype unless the config holds their table int8 (GGUF). Under tensor parallelism (``parallel``) the layers hold their
rank's heads and slices (layers/parallel_linear.py); Mixture-of-Experts families reuse
this decoder and replace ``make_mlp`` (models/mixtral.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

from membound.config import ModelConfig
from membound.distributed.context import ParallelContext
from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.kernels.cpu_decode_stack import (
    CpuDecodeStack,
    DecoderLayerWeights,
    DecoderStackShape,
)
from membound.kernels.cpu_native import NativeDecodePlan
from membound.kernels.kv_quant import FP8_KV_DTYPE
from membound.layers.attention.layer import Attention
from membound.layers.attention.metadata import AttentionMetadata
from membound.layers.checkpoint_tensor import LazyTensor, owns_checkpoint_loading
from membound.layers.linear import default_weight_loader
from membound.layers.norm import RMSNorm
from membound.layers.parallel_linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from membound.layers.quantization import QuantizationMethod, get_linear_method
from membound.layers.rotary import RotaryEmbedding
from membound.layers.vocab_embedding import LMHead, VocabEmbedding, int8_table

_EXPERT_TENSOR = re.compile(r"\.experts\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")


def _quant(config: ModelConfig, prefix: str, *pieces: str) -> QuantizationMethod | None:
    """The quantization method of the linear fusing checkpoint modules prefix.<piece>."""
    return get_linear_method(config.quantization, [f"{prefix}.{p}" for p in pieces])


class LlamaAttention(nn.Module):
    """This rank's query heads (and KV heads, replicated past TP = KV heads); o_proj sums
    the ranks' outputs with one all-reduce."""

    def __init__(
        self, config: ModelConfig, rotary: RotaryEmbedding, prefix: str = "",
        parallel: ParallelContext | None = None, ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.parallel = parallel or ParallelContext.single()
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_attention_heads,
            config.num_key_value_heads, config.qkv_bias,
            _quant(config, prefix, "q_proj", "k_proj", "v_proj"), f"{prefix}.qkv_proj", parallel,
            ops=ops,
        )
        self.num_heads = self.qkv_proj.num_heads  # per rank
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(
            config.q_size, config.hidden_size, config.o_bias,
            _quant(config, prefix, "o_proj"), f"{prefix}.o_proj", parallel, ops=ops,
        )
        self.qk_norm = config.qk_norm
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops)
        self.rotary = rotary  # shared by all layers; not a parameter owner
        self.attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim,
                              self.head_dim**-0.5, ops)  # fmt: skip

    def forward(
        self,
        rope: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,
        kv_cache: torch.Tensor | None,
        md: AttentionMetadata,
    ) -> torch.Tensor:
        """``rope``: this step's cos/sin rows (RotaryEmbedding.cos_sin), looked up once per
        step by the model and shared by the layers."""
        qkv = self.qkv_proj(hidden)  # [num_tokens, q_size + 2 * kv_size]
        q_size, kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # [num_tokens, num_heads, head_dim]
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # [num_tokens, num_kv_heads, head_dim]
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q, k = self.rotary.rotate(q, k, rope)
        out = self.attn(q, k, v, kv_cache, md)  # [num_tokens, num_heads * head_dim]
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    """gate/up column-parallel, down row-parallel: one all-reduce (``reduce_results=False``
    leaves it to the caller, e.g. a MoE block adding this shared expert to its experts)."""

    def __init__(
        self, config: ModelConfig, prefix: str = "", parallel: ParallelContext | None = None,
        intermediate_size: int | None = None, reduce_results: bool = True,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        inter = intermediate_size or config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [inter, inter], [0, 1], config.mlp_bias,
            _quant(config, prefix, "gate_proj", "up_proj"), f"{prefix}.gate_up_proj", parallel,
            ops=ops,
        )
        self.down_proj = RowParallelLinear(
            inter, config.hidden_size, config.mlp_bias, _quant(config, prefix, "down_proj"),
            f"{prefix}.down_proj", parallel, reduce_results, ops=ops,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.forward_silu_and_mul(x))


MLPFactory = Callable[[int, str], nn.Module]  # (layer index, prefix) -> the layer's MLP


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, config: ModelConfig, rotary: RotaryEmbedding, layer_idx: int,
        make_mlp: MLPFactory, parallel: ParallelContext | None = None,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        prefix = f"model.layers.{layer_idx}"
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.self_attn = LlamaAttention(config, rotary, f"{prefix}.self_attn", parallel, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        # [num_tokens, hidden] -> [num_tokens, hidden], reduced over the ranks
        self.mlp = make_mlp(layer_idx, f"{prefix}.mlp")

    def forward(
        self,
        rope: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: torch.Tensor | None,
        md: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(rope, hidden, kv_cache, md)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual

    def stack_weights(self) -> DecoderLayerWeights | None:
        """This layer's weights for a native decode stack (kernels/cpu_decode_stack.py), or
        None where its shape is not the stack's: QK norm, a MoE or other MLP, one rank of
        several, or a linear in a layout the stack does not multiply (its method says)."""
        attn, mlp = self.self_attn, self.mlp
        if attn.qk_norm or not isinstance(mlp, LlamaMLP) or attn.parallel.world_size != 1:
            return None
        layers = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        linears = [lin.quant_method.stack_linear(lin) for lin in layers]
        if any(lin is None for lin in linears):
            return None
        return DecoderLayerWeights(self.input_layernorm.weight,
                                   self.post_attention_layernorm.weight, *linears,
                                   k_scale=attn.attn.k_scale, v_scale=attn.attn.v_scale)  # fmt: skip


class LlamaModel(nn.Module):
    def __init__(
        self, config: ModelConfig, max_positions: int, make_mlp: MLPFactory,
        parallel: ParallelContext | None = None, ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, parallel,
                                           int8_table(config.quantization, "model.embed_tokens"))
        rotary = RotaryEmbedding(
            config.head_dim, max_positions, config.rope_theta, config.rope_scaling, ops
        )
        # Registered once here; layers hold a plain reference (see LlamaAttention).
        self.rotary_emb = rotary
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary, i, make_mlp, parallel, ops)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.config = config
        self.ops = ops or TORCH_OPS
        # the backend's runner of decode steps through every layer at once, where it has one
        # for these layers (kernels/cpu_decode_stack.py); built after loading
        self.decode_stack: CpuDecodeStack | None = None

    def process_weights_after_loading(self) -> None:
        """Runs after every layer laid its weights out (the loaders post-load children
        first): the backend's decode stack, where it has one for all of the layers."""
        weights = [layer.stack_weights() for layer in self.layers]
        if any(w is None for w in weights):
            return
        attn = self.layers[0].self_attn
        shape = DecoderStackShape(
            attn.num_heads, attn.num_kv_heads, attn.head_dim, self.config.hidden_size,
            self.layers[0].mlp.gate_up_proj.output_size // 2, self.config.rms_norm_eps,
            attn.attn.scale,
        )  # fmt: skip
        self.decode_stack = self.ops.decode_stack(layers=weights, shape=shape)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor] | None,
        md: AttentionMetadata,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [num_tokens, hidden_size]
        rope = self.rotary_emb.cos_sin(positions, md.seq_lens_per_token)  # once per step
        residual: torch.Tensor | None = None
        if self._stack_serves(hidden, kv_caches, md):
            assert self.decode_stack is not None and kv_caches is not None
            assert md.slot_mapping is not None and isinstance(md.backend_decode, NativeDecodePlan)
            cos, sin = (t.float().contiguous() for t in rope)
            hidden, residual = self.decode_stack.forward(
                hidden, cos, sin, kv_caches, md.slot_mapping, md.backend_decode.block_tables,
                md.backend_decode.seq_lens, md.sliding_window,
            )  # fmt: skip
        else:
            for i, layer in enumerate(self.layers):
                cache = kv_caches[i] if kv_caches is not None else None
                hidden, residual = layer(rope, hidden, residual, cache, md)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def _stack_serves(
        self, hidden: torch.Tensor, kv_caches: list[torch.Tensor] | None, md: AttentionMetadata
    ) -> bool:
        """A decode-only step (every token its sequence's one new token, in order) in bf16
        with a bf16 or FP8 cache and the native decode plan: what the decode stack takes."""
        return (
            self.decode_stack is not None
            and kv_caches is not None
            and md.prefill is None
            and md.decode is not None
            and md.decode.token_range == (0, md.num_tokens)
            and self.decode_stack.takes(md.num_tokens)
            and isinstance(md.backend_decode, NativeDecodePlan)
            and hidden.dtype == torch.bfloat16
            and kv_caches[0].dtype in (torch.bfloat16, FP8_KV_DTYPE)
        )


class LlamaForCausalLM(nn.Module):
    # checkpoint name piece -> (fused parameter name piece, shard id)
    packed_modules_mapping: dict[str, tuple[str, object]] = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    # checkpoint tensors that carry no weights we need (``kv_scale``: one scale for K and V
    # of an older FP8 format; membound reads the per-tensor ``k_scale`` / ``v_scale``)
    ignored_checkpoint_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq", ".kv_scale")
    # FP8 KV-cache scales -> the attention layer that owns them: llm-compressor writes
    # self_attn.k_scale, ModelOpt self_attn.k_proj.k_scale (and v_proj.v_scale)
    kv_scale_names: dict[str, str] = {
        ".self_attn.k_scale": ".self_attn.attn.k_scale",
        ".self_attn.v_scale": ".self_attn.attn.v_scale",
        ".self_attn.k_proj.k_scale": ".self_attn.attn.k_scale",
        ".self_attn.v_proj.v_scale": ".self_attn.attn.v_scale",
    }

    # checkpoint module-name pieces spelled differently from ours (Mixtral: block_sparse_moe)
    checkpoint_renames: dict[str, str] = {}
    # per-expert checkpoint projection -> FusedMoE piece (MoE families)
    expert_params_mapping: dict[str, str] = {}

    def __init__(
        self,
        config: ModelConfig,
        max_positions: int | None = None,
        parallel: ParallelContext | None = None,
        expert_parallel: bool = False,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.parallel = parallel or ParallelContext.single()
        self.expert_parallel = expert_parallel
        self.ops = ops or TORCH_OPS  # the kernels every layer is built with
        self.model = LlamaModel(
            config, max_positions or config.max_supported_len, self.make_mlp, self.parallel,
            self.ops,
        )
        tied = self.model.embed_tokens if config.tie_word_embeddings else None
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, tied, self.parallel,
                              self.ops, int8_table(config.quantization, "lm_head"))  # fmt: skip

    def make_mlp(self, layer_idx: int, prefix: str) -> nn.Module:
        """The MLP of decoder layer ``layer_idx`` (dense here; MoE families override)."""
        return LlamaMLP(self.config, prefix, self.parallel, ops=self.ops)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor] | None,
        md: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids/positions [num_tokens] -> final hidden states [num_tokens, hidden_size]."""
        return self.model(input_ids, positions, kv_caches, md)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[num_rows, vocab_size] on rank 0 (every rank calls it: it gathers); None elsewhere."""
        return self.lm_head(hidden)

    def checkpoint_to_param(self, name: str) -> tuple[str, object] | None:
        """Map a checkpoint tensor name to (parameter name, shard id), or None to skip it."""
        if name.endswith(self.ignored_checkpoint_suffixes):
            return None
        if name == "lm_head.weight" and self.config.tie_word_embeddings:
            return None
        for theirs, ours in self.kv_scale_names.items():
            if name.endswith(theirs):
                return name[: -len(theirs)] + ours, None
        for theirs, ours in self.checkpoint_renames.items():
            name = name.replace(theirs, ours)
        expert = _EXPERT_TENSOR.search(name)
        if expert is not None and expert["proj"] in self.expert_params_mapping:
            piece = self.expert_params_mapping[expert["proj"]]
            param = "w2_weight" if piece == "down" else "w13_weight"
            return f"{name[: expert.start()]}.experts.{param}", (int(expert["e"]), piece)
        for piece, (fused, shard) in self.packed_modules_mapping.items():
            token = f".{piece}."
            if token in name:
                return name.replace(token, f".{fused}."), shard
        return name, None

    def load_weights(
        self, weights: Iterable[tuple[str, torch.Tensor | LazyTensor]]
    ) -> set[str]:
        """Copy checkpoint tensors into parameters; returns the parameter names filled.

        Unknown names and shape mismatches raise, naming the tensor. The caller checks that
        every parameter was filled (see worker/weight_loader.py). Layers read only what
        this rank keeps of a ``LazyTensor``.
        """
        params = dict(self.named_parameters())
        linears = {n: m for n, m in self.named_modules() if owns_checkpoint_loading(m)}
        filled: set[str] = set()
        for ckpt_name, tensor in weights:
            target = self.checkpoint_to_param(ckpt_name)
            if target is None:
                continue
            name, shard = target
            module_name, _, suffix = name.rpartition(".")
            if module_name in linears:  # the layer's quantization method decides the layout
                linears[module_name].load_checkpoint_tensor(suffix, tensor, shard, ckpt_name)
            elif name in params:
                param = params[name]
                loader = getattr(param, "weight_loader", default_weight_loader)
                loader(param, tensor, shard, name=ckpt_name)
            else:
                raise KeyError(ckpt_name)
            filled.add(name if shard is None else f"{name}#{shard}")
        return filled

    def expected_loads(self) -> set[str]:
        """What ``load_weights`` must fill for the model to be complete."""
        expected: set[str] = set()
        for name, module in self.named_modules():
            if owns_checkpoint_loading(module):  # per shard, the tensors it requires
                for shard in module.shard_ids():
                    tag = "" if shard is None else f"#{shard}"
                    specs = module.checkpoint_specs(shard).items()
                    expected |= {f"{name}.{s}{tag}" for s, spec in specs if spec.required}
        for name, _ in self.named_parameters():
            module_name = name.rsplit(".", 1)[0]
            if not owns_checkpoint_loading(self.get_submodule(module_name)):
                expected.add(name)
        return expected
