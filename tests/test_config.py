from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from membound.config import (
    CacheConfig,
    ConfigError,
    ModelConfig,
    RopeScaling,
    SchedulerConfig,
)

LLAMA31 = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
}


def cfg(**over: Any) -> ModelConfig:
    return ModelConfig.from_dict({**LLAMA31, **over})


def test_llama31_fields() -> None:
    c = cfg()
    assert c.head_dim == 128 and c.num_queries_per_kv == 4
    assert c.rope_scaling == RopeScaling("llama3", 8.0, 8192, 1.0, 4.0)
    assert c.torch_dtype == "bfloat16" and c.eos_token_ids == (128001, 128008, 128009)
    assert c.kv_bytes_per_token(2) == 131072  # the reference figure for Llama-3-8B in BF16
    assert c.max_supported_len == 131072


def test_family_flags() -> None:
    qwen2 = cfg(architectures=["Qwen2ForCausalLM"], sliding_window=4096, use_sliding_window=False)
    assert qwen2.qkv_bias and not qwen2.qk_norm and qwen2.sliding_window is None
    qwen3 = cfg(architectures=["Qwen3ForCausalLM"], head_dim=128, hidden_size=2560)
    assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.head_dim == 128
    mistral = cfg(architectures=["MistralForCausalLM"], sliding_window=4096)
    assert mistral.sliding_window == 4096
    llama_bias = cfg(attention_bias=True)
    assert llama_bias.qkv_bias and llama_bias.o_bias


def test_rope_spellings_and_lengths() -> None:
    assert cfg(rope_scaling={"type": "linear", "factor": 2.0},
               max_position_embeddings=4096).max_supported_len == 8192
    dyn = cfg(rope_scaling={"rope_type": "dynamic", "factor": 4.0}, max_position_embeddings=2048)
    assert dyn.rope_scaling is not None and dyn.rope_scaling.original_max_position_embeddings == 2048
    assert cfg(rope_scaling={"rope_type": "default"}).rope_scaling is None
    assert cfg(dtype="float16", torch_dtype=None).torch_dtype == "float16"


@pytest.mark.parametrize("over,match", [
    ({"architectures": ["BloomForCausalLM"]}, "BloomForCausalLM.*not supported"),
    ({"architectures": []}, "no 'architectures'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, "'yarn' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8}}, "original_max_position_embeddings"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_key_value_heads": 5}, "multiple of num_key_value_heads"),
    ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantized.*'bitsandbytes'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"torch_dtype": "int8"}, "dtype 'int8'"),
    ({"architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True}, "use_sliding_window"),
])
def test_rejects_what_it_cannot_honour(over: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(**over)


def test_from_hf_reads_generation_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA31, "eos_token_id": 128001}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128009, 128001]}))
    assert ModelConfig.from_hf(tmp_path).eos_token_ids == (128009, 128001)
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_hf(tmp_path / "nope")


def test_engine_side_configs_validate() -> None:
    with pytest.raises(ConfigError, match="block_size"):
        CacheConfig(block_size=0)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        CacheConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="chunked prefill disabled"):
        SchedulerConfig(max_model_len=4096, max_num_batched_tokens=2048,
                        enable_chunked_prefill=False)
    assert SchedulerConfig.create(4096, enable_chunked_prefill=False).max_num_batched_tokens == 4096
