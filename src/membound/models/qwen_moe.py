"""Qwen2-MoE and Qwen3-MoE: the Mixtral structure with Qwen's options, all read from the
config (config.MoEConfig): ``norm_topk_prob`` (renormalise the top-k weights or not), a
shared expert gated by ``sigmoid(shared_expert_gate(x))`` (Qwen2-MoE), dense layers from
``decoder_sparse_step`` / ``mlp_only_layers``, q/k/v bias (Qwen2-MoE) or q/k RMSNorm (Qwen3).

    model.layers.{i}.mlp.gate.weight                            router
    model.layers.{i}.mlp.experts.{e}.gate_proj|up_proj|down_proj routed experts
    model.layers.{i}.mlp.shared_expert.gate_proj|up_proj|down_proj, mlp.shared_expert_gate
"""

from __future__ import annotations

from membound.models.mixtral import MixtralForCausalLM


class QwenMoeForCausalLM(MixtralForCausalLM):
    checkpoint_renames: dict[str, str] = {}
    expert_params_mapping = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
