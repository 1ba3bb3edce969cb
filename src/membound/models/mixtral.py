"""Mixture-of-Experts decoders: Mixtral, and the base of Qwen2-MoE / Qwen3-MoE (qwen_moe.py).

The Llama decoder (attention, norms, residuals, rotary, loading) with a sparse MLP: each
layer listed in ``config.moe.moe_layers`` gets a ``SparseMoEBlock`` (router + fused experts,
plus a shared expert when the config has one); the others keep a dense LlamaMLP. What the
families differ in is checkpoint naming, declared here as mappings:

    Mixtral   model.layers.{i}.block_sparse_moe.gate.weight            -> mlp.gate
              model.layers.{i}.block_sparse_moe.experts.{e}.w1|w3|w2   -> mlp.experts (gate|up|down)
"""

from __future__ import annotations

from torch import nn

from membound.layers.moe import FusedMoE, SparseMoEBlock
from membound.models.llama import LlamaForCausalLM, LlamaMLP


class MixtralForCausalLM(LlamaForCausalLM):
    checkpoint_renames = {".block_sparse_moe.": ".mlp."}
    expert_params_mapping = {"w1": "gate", "w3": "up", "w2": "down"}

    def make_mlp(self, layer_idx: int, prefix: str) -> nn.Module:
        moe = self.config.moe
        if moe is None or layer_idx not in moe.moe_layers:
            return LlamaMLP(self.config, prefix, self.parallel, ops=self.ops)
        experts = FusedMoE(
            moe.num_experts, moe.num_experts_per_tok, self.config.hidden_size,
            moe.moe_intermediate_size, moe.renormalize, self.parallel, self.expert_parallel,
            f"{prefix}.experts", self.ops,
        )
        shared = None
        if moe.shared_expert_intermediate_size:
            shared = LlamaMLP(
                self.config, f"{prefix}.shared_expert", self.parallel,
                moe.shared_expert_intermediate_size, reduce_results=False, ops=self.ops,
            )
        return SparseMoEBlock(experts, shared, moe.shared_expert_gate)
