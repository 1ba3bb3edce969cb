"""GGUF metadata -> ModelConfig fields (the GGUF half of the config layer).

llama.cpp names hyper-parameters ``<arch>.embedding_length``, ``<arch>.block_count``, ... and
stores the tensor table beside them. This module reads both (through ``membound.gguf``) and
returns the keyword arguments of a ModelConfig, after checking that the file is one membound
can load whole: a known architecture, tensor types it reads, the tensors the config implies.
"""

from __future__ import annotations

from typing import Any

from membound.config.errors import ConfigError
from membound.config.quantization import QuantizationConfig

_FUSED_GROUPS = (
    ("attn_q", "attn_k", "attn_v"),
    ("ffn_gate", "ffn_up"),
    ("attn_output",),
    ("ffn_down",),
)
_TABLES = (("token_embd.weight", "model.embed_tokens"), ("output.weight", "lm_head"))


def gguf_model_fields(file: Any, dequantize: bool) -> dict[str, Any]:
    """ModelConfig keyword arguments from a ``membound.gguf.reader.GGUFFile``."""
    from membound.gguf.names import GGUF_ARCHITECTURES

    arch = file.architecture
    if arch not in GGUF_ARCHITECTURES:
        raise ConfigError(
            f"{file.path}: GGUF architecture {arch!r} is not supported; membound loads GGUF "
            f"files of {', '.join(GGUF_ARCHITECTURES)}. Use a Hugging Face checkpoint folder "
            "of this model instead"
        )
    _check_tensor_types(file)

    def key(name: str, default: Any = None) -> Any:
        value = file.get(f"{arch}.{name}", default)
        if value is None:
            raise ConfigError(f"{file.path}: GGUF metadata has no {arch}.{name}; re-convert it")
        return value

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    kv_heads = key("attention.head_count_kv", heads)
    head_dim = int(key("attention.key_length", hidden // heads))
    rot = int(key("rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ConfigError(
            f"{file.path}: rope.dimension_count={rot} differs from head_dim={head_dim} "
            "(partial rotary embeddings are not supported)"
        )
    if "rope_freqs.weight" in file.tensors:
        raise ConfigError(
            f"{file.path} carries rope_freqs (Llama 3.1-style rope scaling) which membound "
            "does not read from GGUF yet; load the Hugging Face checkpoint folder instead"
        )
    embed = file.tensors.get("token_embd.weight")
    vocab = file.get(f"{arch}.vocab_size") or (embed.shape[0] if embed else None)
    tokens = file.get("tokenizer.ggml.tokens")
    if vocab is None and isinstance(tokens, list):
        vocab = len(tokens)
    max_pos = int(key("context_length", 2048))
    fields: dict[str, Any] = {
        "architecture": GGUF_ARCHITECTURES[arch],
        "vocab_size": int(key("vocab_size", vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads[0] if isinstance(kv_heads, list) else kv_heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(file, arch, max_pos),
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": "output.weight" not in file.tensors,
        "qkv_bias": "blk.0.attn_q.bias" in file.tensors,
        "qk_norm": "blk.0.attn_q_norm.weight" in file.tensors,
        "torch_dtype": "float16" if _mostly(file, "F16") else "bfloat16",
        "bos_token_id": _int_or_none(file.get("tokenizer.ggml.bos_token_id")),
        "eos_token_ids": _eos_ids(file),
        "model_type": arch,
        "quantization": None if dequantize else gguf_quantization(file),
    }
    return fields


def gguf_quantization(file: Any) -> QuantizationConfig | None:
    """How the file's quantized tensors stay quantized: the int4 layout for every fused linear
    whose GGUF tensors are all int4-block types; int8 per output row (``int8_modules``) for a
    fused linear of other block types (or a mix) and for a quantized token embedding / output
    table; the rest (float tensors) ``ignored``, loaded at the engine dtype. None when
    nothing stays quantized."""
    from membound.gguf.names import hf_module
    from membound.gguf.types import GROUP_SIZE, INT4_BLOCK_TYPES, QUANTIZED_TYPES

    kept, int8, ignored = 0, [], []
    for layer in range(int(file.get(f"{file.architecture}.block_count", 0))):
        for group in _FUSED_GROUPS:
            names = [f"blk.{layer}.{p}.weight" for p in group]
            types = [getattr(file.tensors.get(n), "ggml_type", None) for n in names]
            modules = [m for m in (hf_module(n) for n in names) if m is not None]
            if all(t in INT4_BLOCK_TYPES for t in types):
                kept += 1
            elif all(t in QUANTIZED_TYPES for t in types):
                int8 += modules
            else:
                ignored += modules
    for gguf_name, module in _TABLES:
        info = file.tensors.get(gguf_name)
        if info is not None and info.ggml_type in QUANTIZED_TYPES:
            int8.append(module)
    if kept == 0 and not int8:
        return None
    return QuantizationConfig(
        "gguf", "gguf", GROUP_SIZE, "none", ignored=tuple(ignored), int8_modules=tuple(int8)
    )


def _check_tensor_types(file: Any) -> None:
    from membound.gguf.types import LOADABLE_TYPES

    bad = sorted(
        f"{t.name} ({t.ggml_type})"
        for t in file.tensors.values()
        if t.ggml_type not in LOADABLE_TYPES
    )
    if bad:
        raise ConfigError(
            f"{file.path} holds tensor types membound cannot load: {', '.join(bad[:8])}"
            f"{' ...' if len(bad) > 8 else ''}. Supported: {', '.join(LOADABLE_TYPES)}; "
            "pick a file quantized as Q4_K_M, Q4_0, Q4_1, Q8_0 or F16 (or re-quantize this "
            "one with llama.cpp's llama-quantize)"
        )


def _rope_scaling(file: Any, arch: str, max_pos: int) -> Any:
    from membound.config.model import RopeScaling

    kind = file.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    factor = file.get(f"{arch}.rope.scaling.factor", 1.0)
    orig = file.get(f"{arch}.rope.scaling.original_context_length")
    raw = {"rope_type": kind, "factor": factor}
    if orig is not None:
        raw["original_max_position_embeddings"] = orig
    return RopeScaling.from_hf(raw, max_pos)


def _mostly(file: Any, ggml_type: str) -> bool:
    types = [t.ggml_type for t in file.tensors.values() if len(t.shape) == 2]
    return bool(types) and types.count(ggml_type) * 2 > len(types)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None


def _eos_ids(file: Any) -> tuple[int, ...]:
    """EOS, then the end-of-turn token llama.cpp also stops on, when the file names one."""
    ids = [file.get("tokenizer.ggml.eos_token_id"), file.get("tokenizer.ggml.eot_token_id")]
    return tuple(dict.fromkeys(int(i) for i in ids if isinstance(i, int)))
