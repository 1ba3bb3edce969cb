"""GGUF tensor names (llama.cpp's) <-> Hugging Face checkpoint names, for the Llama family.

Pure Python: the config layer uses it to name the modules a GGUF leaves unquantized, the
loader to hand tensors to the model under the names its ``load_weights`` knows, and
``benchmarks/hf_to_gguf.py`` to write an HF checkpoint as GGUF (``gguf_tensor_name``).
"""

from __future__ import annotations

import re

# GGUF general.architecture -> the HF architecture membound implements it with
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# llama.cpp's converter reorders q/k rows for these (its rotary pairs adjacent values)
PERMUTED_QK_ARCHITECTURES = ("llama", "mistral")

_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_HF_BLOCK_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_GLOBAL_NAME = re.compile(r"^([a-z_]+)\.(weight|bias)$")
# decoder linears: the weights the int4 path may keep quantized
LINEAR_PIECES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def hf_name(gguf_name: str) -> str | None:
    """The HF checkpoint name of a GGUF tensor, or None if membound has no place for it."""
    m = _BLOCK_NAME.match(gguf_name)
    if m is not None:
        piece = _BLOCK.get(m[2])
        return f"model.layers.{m[1]}.{piece}.{m[3]}" if piece else None
    m = _GLOBAL_NAME.match(gguf_name)
    if m is not None and m[1] in _GLOBAL:
        return f"{_GLOBAL[m[1]]}.{m[2]}"
    return None


def gguf_tensor_name(hf: str) -> str | None:
    """The GGUF name of an HF checkpoint tensor (``hf_name``'s inverse), or None if GGUF has
    no name for it."""
    m = _HF_BLOCK_NAME.match(hf)
    if m is not None:
        piece = next((g for g, h in _BLOCK.items() if h == m[2]), None)
        return f"blk.{m[1]}.{piece}.{m[3]}" if piece else None
    module, _, kind = hf.rpartition(".")
    piece = next((g for g, h in _GLOBAL.items() if h == module), None)
    return f"{piece}.{kind}" if piece and kind in ("weight", "bias") else None


def linear_piece(gguf_name: str) -> str | None:
    """The GGUF piece (attn_q, ffn_down, ...) of a decoder linear's weight; None otherwise."""
    m = _BLOCK_NAME.match(gguf_name)
    if m is None or m[3] != "weight" or m[2] not in LINEAR_PIECES:
        return None
    return m[2]


def hf_module(gguf_name: str) -> str | None:
    """model.layers.N.self_attn.q_proj for blk.N.attn_q.weight (None: not a decoder linear)."""
    if linear_piece(gguf_name) is None:
        return None
    name = hf_name(gguf_name)
    return name.rsplit(".", 1)[0] if name else None
