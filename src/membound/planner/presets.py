"""The reference model shapes, written as the Hugging Face ``config.json`` they come from.

Presets go through the same parser as a user's config file, so a preset and the real
checkpoint's config give the same plan. Only shape-relevant keys are kept.
"""

from __future__ import annotations

import os
from typing import Any

from membound.planner.errors import PlannerError, choices_text
from membound.planner.model_shape import ModelShape

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}


def _llama(layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int,
           **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {**_LLAMA, "num_hidden_layers": layers, "hidden_size": hidden,
            "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": ffn,
            "vocab_size": vocab, "tie_word_embeddings": False, **extra}  # fmt: skip


PRESET_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-2-7b": _llama(32, 4096, 32, 32, 11008, 32000, max_position_embeddings=4096),
    "llama-2-70b": _llama(80, 8192, 64, 8, 28672, 32000, max_position_embeddings=4096),
    "llama-3-8b": _llama(32, 4096, 32, 8, 14336, 128256, rope_theta=500000.0,
                         max_position_embeddings=8192),  # fmt: skip
    "llama-3-70b": _llama(80, 8192, 64, 8, 28672, 128256, rope_theta=500000.0,
                          max_position_embeddings=8192),  # fmt: skip
    "mistral-7b": {  # Mistral-7B-v0.1: 4096-token sliding window on every layer
        **_llama(32, 4096, 32, 8, 14336, 32000, max_position_embeddings=32768,
                 sliding_window=4096),  # fmt: skip
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
    },
    "mixtral-8x7b": {
        **_llama(32, 4096, 32, 8, 14336, 32000, max_position_embeddings=32768),
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1e6,
    },
    "qwen2.5-7b": {
        **_llama(28, 3584, 28, 4, 18944, 152064, max_position_embeddings=131072,
                 rope_theta=1e6, sliding_window=131072, use_sliding_window=False),  # fmt: skip
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
    },
    "qwen3-8b": {
        **_llama(36, 4096, 32, 8, 12288, 151936, max_position_embeddings=40960,
                 rope_theta=1e6, head_dim=128),  # fmt: skip
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
    },
    "falcon-180b": {
        "architectures": ["FalconForCausalLM"], "model_type": "falcon",
        "num_hidden_layers": 80, "hidden_size": 14848, "num_attention_heads": 232,
        "num_kv_heads": 8, "new_decoder_architecture": True, "parallel_attn": True,
        "bias": False, "alibi": False, "vocab_size": 65024, "max_position_embeddings": 2048,
    },
}  # fmt: skip

PRESET_ALIASES: dict[str, str] = {
    "llama-3.1-8b": "llama-3-8b",
    "llama-3.1-70b": "llama-3-70b",
    "llama-3.3-70b": "llama-3-70b",
    "mistral-7b-v0.1": "mistral-7b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "qwen2.5-7b-instruct": "qwen2.5-7b",
    "falcon-180b-chat": "falcon-180b",
}

PRESET_NAMES: tuple[str, ...] = tuple(PRESET_CONFIGS)


def _preset_key(name: str) -> str | None:
    key = name.strip().lower().rsplit("/", 1)[-1]
    for suffix in ("-hf", "-instruct", "-chat"):
        if key not in PRESET_CONFIGS and key not in PRESET_ALIASES and key.endswith(suffix):
            key = key[: -len(suffix)]
    key = PRESET_ALIASES.get(key, key)
    return key if key in PRESET_CONFIGS else None


def preset_shape(name: str) -> ModelShape:
    """The shape of a named reference model; an error lists the presets."""
    key = _preset_key(name)
    if key is None:
        raise PlannerError(
            f"model {name!r} is not a preset; use one of {choices_text(PRESET_NAMES)} "
            "or a path to a config.json (or a checkpoint folder holding one)"
        )
    return ModelShape.from_hf_dict(PRESET_CONFIGS[key], name=key)


def load_model(name_or_path: str) -> ModelShape:
    """A preset name, a ``config.json`` path, or a checkpoint folder holding one."""
    if os.path.exists(name_or_path):
        return ModelShape.from_file(name_or_path)
    if _preset_key(name_or_path) is not None:
        return preset_shape(name_or_path)
    if name_or_path.endswith(".json") or name_or_path.startswith((".", "/", "~")):
        raise PlannerError(f"model path {name_or_path!r} does not exist")
    return preset_shape(name_or_path)
