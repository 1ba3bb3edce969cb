"""ModelShape parses any HF config.json: Llama family via ModelConfig, MoE, Falcon, ..."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from membound.config import ModelConfig
from membound.planner.errors import PlannerError
from membound.planner.model_cost import param_counts
from membound.planner.model_shape import ModelShape
from membound.planner.presets import PRESET_CONFIGS, load_model, preset_shape

TINY = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}

# Parameter counts from transformers (sum(p.numel()) of AutoModelForCausalLM.from_config);
# test_counts_match_transformers (marked slow) recomputes them.
TINY_CONFIGS: dict[str, tuple[dict, int]] = {
    "llama": ({**TINY, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
               "intermediate_size": 96, "num_hidden_layers": 2}, 78_144),
    "mixtral": ({**TINY, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                 "intermediate_size": 96, "num_hidden_layers": 2, "num_local_experts": 4,
                 "num_experts_per_tok": 2}, 189_248),
    "qwen2_moe": ({**TINY, "model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"],
                   "intermediate_size": 96, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 48, "num_hidden_layers": 4,
                   "decoder_sparse_step": 2, "num_experts": 4, "num_experts_per_tok": 2,
                   "mlp_only_layers": []}, 171_712),
    "qwen3_moe": ({**TINY, "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
                   "intermediate_size": 96, "moe_intermediate_size": 32, "head_dim": 16,
                   "num_hidden_layers": 3, "num_experts": 4, "num_experts_per_tok": 2,
                   "mlp_only_layers": [1]}, 121_888),
    "falcon_new": ({"model_type": "falcon", "architectures": ["FalconForCausalLM"],
                    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
                    "num_kv_heads": 2, "new_decoder_architecture": True, "parallel_attn": True,
                    "bias": False, "vocab_size": 128}, 94_848),
    "falcon_mqa": ({"model_type": "falcon", "architectures": ["FalconForCausalLM"],
                    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
                    "multi_query": True, "parallel_attn": True, "bias": False,
                    "vocab_size": 128}, 92_544),
    "falcon_sequential_bias": ({"model_type": "falcon", "architectures": ["FalconForCausalLM"],
                                "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 8, "multi_query": False,
                                "parallel_attn": False, "bias": True, "vocab_size": 128},
                               108_288),
    "qwen2_tied": ({**TINY, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                    "intermediate_size": 96, "num_hidden_layers": 2,
                    "tie_word_embeddings": True}, 70_208),
    "qwen3": ({**TINY, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
               "intermediate_size": 96, "num_hidden_layers": 2, "head_dim": 32,
               "tie_word_embeddings": False}, 102_848),
}  # fmt: skip


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_param_counts_match_transformers_exactly(name: str) -> None:
    raw, expected = TINY_CONFIGS[name]
    assert param_counts(ModelShape.from_hf_dict(raw, name)).total == expected


@pytest.mark.slow
def test_counts_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    for name, (raw, expected) in TINY_CONFIGS.items():
        kwargs = {k: v for k, v in raw.items() if k != "architectures"}
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**kwargs)
        )
        assert sum(p.numel() for p in model.parameters()) == expected, name


@pytest.mark.parametrize("preset", ["llama-2-70b", "llama-3-8b", "qwen2.5-7b", "qwen3-8b"])
def test_llama_family_agrees_with_engine_model_config(preset: str) -> None:
    cfg = ModelConfig.from_dict(PRESET_CONFIGS[preset])
    shape = preset_shape(preset)
    assert shape.num_kv_heads == cfg.num_key_value_heads
    assert shape.head_dim == cfg.head_dim
    assert shape.qkv_bias == cfg.qkv_bias
    assert shape.qk_norm == cfg.qk_norm
    assert shape.tie_word_embeddings == cfg.tie_word_embeddings
    assert shape.kv_size * 2 * shape.num_layers * 2 == cfg.kv_bytes_per_token(2)


def test_features_the_engine_refuses_still_parse() -> None:
    raw = {**PRESET_CONFIGS["qwen2.5-7b"], "rope_scaling": {"type": "yarn", "factor": 4.0},
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}  # fmt: skip
    shape = ModelShape.from_hf_dict(raw, "qwen-awq")
    assert shape.num_kv_heads == 4
    assert shape.checkpoint_precision == "int4-awq"
    sliding = {**PRESET_CONFIGS["qwen2.5-7b"], "use_sliding_window": True,
               "sliding_window": 4096, "max_window_layers": 20}  # fmt: skip
    shape = ModelShape.from_hf_dict(sliding, "qwen-swa")
    assert (shape.sliding_window, shape.num_sliding_layers) == (4096, 8)


def test_falcon_180b_shape() -> None:
    shape = preset_shape("falcon-180b")
    assert (shape.num_kv_heads, shape.head_dim, shape.gated_mlp) == (8, 64, False)
    assert shape.parallel_attention and shape.intermediate_size == 4 * 14848


def test_moe_layer_pattern() -> None:
    shape = ModelShape.from_hf_dict(TINY_CONFIGS["qwen2_moe"][0])
    assert (shape.num_moe_layers, shape.num_dense_layers) == (2, 2)
    assert shape.shared_expert_gate and shape.shared_expert_intermediate_size == 48
    shape = ModelShape.from_hf_dict(TINY_CONFIGS["qwen3_moe"][0])
    assert (shape.num_moe_layers, shape.qk_norm) == (2, True)


def test_quantization_config_spellings() -> None:
    base = PRESET_CONFIGS["llama-3-8b"]
    for qcfg, expected in [
        ({"quant_method": "gptq"}, "int4-gptq"),
        ({"quant_method": "fp8"}, "fp8"),
        ({"quant_method": "mxfp4"}, "mxfp4"),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "nvfp4"),
        ({"quant_method": "bitsandbytes"}, None),
    ]:
        shape = ModelShape.from_hf_dict({**base, "quantization_config": qcfg})
        assert shape.checkpoint_precision == expected


def test_errors_name_the_problem() -> None:
    with pytest.raises(PlannerError, match="latent attention"):
        ModelShape.from_hf_dict({**PRESET_CONFIGS["llama-3-8b"], "kv_lora_rank": 512})
    with pytest.raises(PlannerError, match="vocab_size"):
        ModelShape.from_hf_dict({"hidden_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 4})  # fmt: skip
    with pytest.raises(PlannerError, match="multiple"):
        ModelShape.from_hf_dict({**TINY, "num_key_value_heads": 3, "num_hidden_layers": 2,
                                 "intermediate_size": 8, "model_type": "x"})  # fmt: skip


def test_load_model_from_path_and_preset(tmp_path: Path) -> None:
    folder = tmp_path / "Mixtral-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIGS["mixtral"][0]))
    assert load_model(str(folder)).num_experts == 4
    assert load_model(str(folder / "config.json")).name == "Mixtral-tiny"
    assert load_model("meta-llama/Llama-2-70b-hf").name == "llama-2-70b"
    assert load_model("Llama-3.1-8B-Instruct").name == "llama-3-8b"
    with pytest.raises(PlannerError, match="does not exist"):
        load_model(str(tmp_path / "missing.json"))
    with pytest.raises(PlannerError, match="llama-2-7b"):
        load_model("gpt-7")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlannerError, match="JSON"):
        load_model(str(tmp_path / "bad.json"))


def test_text_config_nesting() -> None:
    raw = {"architectures": ["LlavaForConditionalGeneration"],
           "text_config": {**PRESET_CONFIGS["llama-2-7b"]}}  # fmt: skip
    assert ModelShape.from_hf_dict(raw).num_kv_heads == 32
