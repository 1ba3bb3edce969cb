"""Tiny Llama GGUF files written with gguf.GGUFWriter, for fast per-type and bad-input tests.

``write_tiny_llama`` takes float weights in Hugging Face layout, applies llama.cpp's q/k row
permutation (as convert_hf_to_gguf.py does) and stores each linear in the requested ggml type;
the returned dict holds the HF-layout float weights the file was made from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from membound.gguf.names import gguf_tensor_name

gguf = __import__("pytest").importorskip("gguf")

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 2
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (q: n_head, k: n_head_kv)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def byte_vocab() -> tuple[list[str], list[int], list[str]]:
    """A byte-level BPE vocabulary: 3 control tokens, the 256 byte symbols, a few merges."""
    from membound.gguf.tokenizer import _bytes_to_unicode

    symbols = list(_bytes_to_unicode().values())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    merged = ["Ġt", "he", "Ġthe", "in", "Ġa"]
    tokens = specials + symbols + merged
    types = [3] * len(specials) + [1] * (len(symbols) + len(merged))
    return tokens, types, merges


def hf_weights(seed: int = 0, vocab: int = 264) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)

    kv = KV_HEADS * HIDDEN // HEADS
    w = {
        "model.embed_tokens.weight": mat(vocab, HIDDEN),
        "model.norm.weight": (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w |= {
            p + "self_attn.q_proj.weight": mat(HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": mat(kv, HIDDEN),
            p + "self_attn.v_proj.weight": mat(kv, HIDDEN),
            p + "self_attn.o_proj.weight": mat(HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": mat(FFN, HIDDEN),
            p + "mlp.up_proj.weight": mat(FFN, HIDDEN),
            p + "mlp.down_proj.weight": mat(HIDDEN, FFN),
            p + "input_layernorm.weight": np.ones(HIDDEN, np.float32),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        }
    return w


def write_tiny_llama(
    path: Path,
    linear_type: str = "F32",
    *,
    arch: str = "llama",
    tokenizer: bool = True,
    embed_type: str = "F32",
    weights: dict[str, np.ndarray] | None = None,
    raw_linear: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Write the file; ``raw_linear`` maps GGUF names to (raw uint8 data, ggml type) to store
    as given (types the Python quantizer cannot make, such as Q4_K)."""
    w = weights or hf_weights()
    tokens, types, merges = byte_vocab()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(False)
        writer.add_chat_template(TEMPLATE)
    raw_linear = raw_linear or {}
    for hf, value in w.items():
        name = gguf_tensor_name(hf)
        if name in raw_linear:
            data, qtype = raw_linear[name]
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[qtype])
            continue
        if arch == "llama" and ".attn_q." in name:
            value = llama_cpp_permute(value, HEADS)
        elif arch == "llama" and ".attn_k." in name:
            value = llama_cpp_permute(value, KV_HEADS)
        kind = "F32" if value.ndim == 1 else embed_type if "token_embd" in name else linear_type
        _add(writer, name, value, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return w


def _add(writer: Any, name: str, value: np.ndarray, kind: str) -> None:
    qtype = gguf.GGMLQuantizationType[kind]
    if kind == "F32":
        writer.add_tensor(name, value)
    elif kind == "F16":
        writer.add_tensor(name, value.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)


def random_q4_k(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random but valid Q4_K blocks (small positive fp16 d / dmin, random 6-bit scales)."""
    rng = np.random.default_rng(seed)
    n = rows * cols // 256
    blocks = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    d = (rng.random(n) * 0.01 + 0.001).astype(np.float16)
    dmin = (rng.random(n) * 0.01).astype(np.float16)
    blocks[:, 0:2] = d.view(np.uint8).reshape(n, 2)
    blocks[:, 2:4] = dmin.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, cols // 256 * 144)
