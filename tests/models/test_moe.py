"""Mixture of Experts: config rules, the router, per-variant equivalence with transformers,
checkpoint validation and the Triton grouped GEMM end to end.

The three MoE families in tests/tiny_models.py FAMILIES (mixtral, qwen2_moe, qwen3_moe) are
also matched against transformers by tests/models/test_hf_equivalence.py (32 greedy tokens,
top-5 logprobs within 1e-4); this file adds the config variants those do not cover.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from membound import LLM, SamplingParams
from membound.config import ConfigError, ModelConfig
from membound.layers.moe import SparseMoEBlock, select_experts
from membound.models.llama import LlamaMLP
from membound.worker.weight_loader import CheckpointError, load_model
from tiny_models import BASE, hf_greedy, load_hf, make_checkpoint

PROMPTS = [[5, 17, 42, 99, 7, 3, 250, 11], [9, 8, 7, 6, 5, 4, 3, 2, 1, 100, 101, 102, 60]]
CPU = torch.device("cpu")


def raw(arch: str, **kw: object) -> dict:
    return {**BASE, "architectures": [arch], **kw}


def test_config_rules() -> None:
    mix = ModelConfig.from_dict(raw("MixtralForCausalLM", num_local_experts=8,
                                    num_experts_per_tok=2))
    assert mix.moe is not None and mix.moe.renormalize and mix.moe.num_experts == 8
    assert mix.moe.moe_layers == (0, 1) and mix.moe.moe_intermediate_size == 112
    q2 = ModelConfig.from_dict(raw(
        "Qwen2MoeForCausalLM", num_hidden_layers=4, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=48, decoder_sparse_step=2,
        mlp_only_layers=[3]))
    assert q2.moe is not None and q2.moe.moe_layers == (1,)  # 3 is dense by mlp_only_layers
    assert q2.moe.shared_expert_gate and not q2.moe.renormalize and q2.qkv_bias
    q3 = ModelConfig.from_dict(raw(
        "Qwen3MoeForCausalLM", num_local_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, norm_topk_prob=True))
    assert q3.moe is not None and q3.moe.renormalize and q3.qk_norm and not q3.qkv_bias
    assert q3.moe.shared_expert_intermediate_size == 0
    with pytest.raises(ConfigError, match="moe_intermediate_size"):
        ModelConfig.from_dict(raw("Qwen3MoeForCausalLM", num_experts=4, num_experts_per_tok=2))
    with pytest.raises(ConfigError, match=r"num_experts_per_tok \(5\) must be in \[1, "):
        ModelConfig.from_dict(raw("MixtralForCausalLM", num_local_experts=4,
                                  num_experts_per_tok=5))


def test_router_rules() -> None:
    """Mixtral: softmax over all experts, top-k, renormalised == softmax over the top-k
    logits. Qwen without norm_topk_prob: the top-k of the full softmax as they are."""
    logits = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    w, ids = select_experts(logits, 2, renormalize=True)
    assert torch.allclose(w, torch.softmax(logits.gather(1, ids), -1), atol=1e-6)
    raw_w, raw_ids = select_experts(logits, 2, renormalize=False)
    assert torch.equal(raw_ids, ids)
    assert torch.allclose(raw_w, torch.softmax(logits, -1).gather(1, ids))
    assert w.dtype == torch.float32


# variants of the FAMILIES entries: every sparse-step / renormalisation / top-k rule
VARIANTS = {
    "qwen2_moe_step2_norm": ("qwen2_moe", {"decoder_sparse_step": 2, "mlp_only_layers": [],
                                           "norm_topk_prob": True, "num_hidden_layers": 3}),
    "qwen3_moe_no_norm": ("qwen3_moe", {"norm_topk_prob": False, "num_experts_per_tok": 3}),
    "mixtral_top1_gqa1": ("mixtral", {"num_experts_per_tok": 1, "num_key_value_heads": 1}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_transformers(tmp_path: Path, variant: str) -> None:
    family, overrides = VARIANTS[variant]
    folder = make_checkpoint(tmp_path / variant, family, seed=5, **overrides)
    hf = load_hf(folder)
    llm = LLM(str(folder), block_size=4, max_num_batched_tokens=16, dtype="float32")  # chunked prefill too
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=5)
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params, use_tqdm=False)):
        ref_tokens, ref_top = hf_greedy(hf, prompt, 16)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, variant
        for ours, theirs in zip(got.logprobs, ref_top):
            for token, lp in theirs.items():
                assert abs(ours[token] - lp) < 1e-4, (variant, token)


def test_structure_and_checkpoint_errors(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "q2", "qwen2_moe", seed=1)
    cfg = ModelConfig.from_hf(folder)
    model = load_model(cfg, str(folder), dtype=torch.float32, device=CPU)
    layers = model.model.layers
    assert isinstance(layers[0].mlp, SparseMoEBlock) and isinstance(layers[1].mlp, LlamaMLP)
    assert tuple(layers[0].mlp.experts.w13_weight.shape) == (4, 64, 64)  # [E, 2 * inter, H]
    assert tuple(layers[0].mlp.experts.w2_weight.shape) == (4, 64, 32)  # [E, H, inter]
    tensors = load_file(folder / "model.safetensors")
    missing = "model.layers.0.mlp.experts.3.up_proj.weight"
    save_file({k: v for k, v in tensors.items() if k != missing}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors: .*experts\.w13_weight#\(3, 'up'\)"):
        load_model(cfg, str(folder), dtype=torch.float32, device=CPU)
    tensors[missing] = torch.zeros(16, 64)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"experts\.3\.up_proj\.weight \(16, 64\) "
                                              r"\(expected \(32, 64\)\)"):
        load_model(cfg, str(folder), dtype=torch.float32, device=CPU)


def test_triton_grouped_gemm_end_to_end(tmp_path: Path) -> None:
    """The Triton backend (interpreter on CPU) runs the MoE layers through moe_gemm and
    gives the torch backend's greedy tokens."""
    pytest.importorskip("triton")
    folder = make_checkpoint(tmp_path / "mix", "mixtral", seed=2)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=3)
    prompt = [PROMPTS[0]]
    ref = LLM(str(folder), block_size=8, kernel_backend="torch", dtype="float32").generate(
        prompt, params, use_tqdm=False)[0].outputs[0]
    got = LLM(str(folder), block_size=8, kernel_backend="triton", dtype="float32").generate(
        prompt, params, use_tqdm=False)[0].outputs[0]
    assert got.token_ids == ref.token_ids
    for ours, theirs in zip(got.logprobs, ref.logprobs):
        for token, lp in theirs.items():
            assert abs(ours[token] - lp) < 1e-3


def test_quantized_moe_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match=r"quantization \(fp8\) of Mixture-of-Experts models "
                                          "is not supported yet"):
        ModelConfig.from_dict(raw("MixtralForCausalLM", num_local_experts=4,
                                  num_experts_per_tok=2,
                                  quantization_config={"quant_method": "fp8"}))
