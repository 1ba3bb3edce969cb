"""Write a Hugging Face Llama checkpoint without a tokenizer as a GGUF file, for llama.cpp.

The benchmarks' random checkpoints (``cpu_peers.py --tinyllama``) have no tokenizer and are
fed token ids, so the file gets a placeholder vocabulary of ``vocab_size`` tokens (the 256
byte symbols, one merge, then ``<|tN|>``), enough for llama.cpp and membound to load and
detokenize. The weights are
stored as llama.cpp's converter (convert_hf_to_gguf.py) stores them: its tensor names
(``membound.gguf.names.gguf_tensor_name``), q/k rows permuted for its rotary
(``membound.gguf.tensors.permute_rows``), 1-D tensors in F32, the rest in F16 or F32.
Quantize the result with llama.cpp's own quantizer (``cpu_peers_worker.py
llamacpp-quantize``).

    python benchmarks/hf_to_gguf.py MODEL_DIR OUT.gguf [--type F16|F32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

ARCHITECTURES = ("LlamaForCausalLM",)
TYPES = ("F16", "F32")


def placeholder_vocab(size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, types, merges) of a ``size``-token byte-level BPE vocabulary: the 256 byte
    symbols, one merge (" t": BPE loaders want merges), then ``<|tN|>``, all normal."""
    from membound.gguf.tokenizer import _bytes_to_unicode

    if size < 257:
        raise ValueError(f"vocab_size {size} is under the 256 byte tokens and a merge")
    tokens = [*_bytes_to_unicode().values(), "\u0120t"]
    tokens += [f"<|t{i}|>" for i in range(len(tokens), size)]
    return tokens, [1] * size, ["\u0120 t"]


def _config(folder: Path) -> dict[str, Any]:
    cfg = json.loads((folder / "config.json").read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{folder}: architecture {arch} is not one this writer handles "
                         f"({', '.join(ARCHITECTURES)})")  # fmt: skip
    if (folder / "tokenizer.json").exists():
        raise ValueError(f"{folder} has a tokenizer: use llama.cpp's convert_hf_to_gguf.py, "
                         "which carries it over; this writer only makes placeholder vocabularies")  # fmt: skip
    return cfg


def write_gguf(folder: str | Path, out: str | Path, dtype: str = "F16") -> None:
    """Convert ``folder`` (config.json + *.safetensors) into ``out``; refuses a tensor it has
    no GGUF name for before writing anything."""
    import gguf
    import torch
    from safetensors import safe_open

    from membound.gguf.names import gguf_tensor_name
    from membound.gguf.tensors import permute_rows

    if dtype not in TYPES:
        raise ValueError(f"--type {dtype}: choose one of {', '.join(TYPES)}")
    folder = Path(folder)
    cfg = _config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} has no .safetensors files")
    heads = {"attn_q": cfg["num_attention_heads"],
             "attn_k": cfg.get("num_key_value_heads", cfg["num_attention_heads"])}  # fmt: skip
    names: dict[Path, dict[str, str]] = {}  # file -> {HF name: GGUF name}
    for f in files:
        with safe_open(f, "pt") as st:
            hf_names = list(st.keys())
        missing = [hf for hf in hf_names if gguf_tensor_name(hf) is None]
        if missing:
            raise ValueError(f"{f}: no GGUF name for tensor(s) {', '.join(missing)}")
        names[f] = {hf: str(gguf_tensor_name(hf)) for hf in hf_names}
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads["attn_q"])
    writer.add_head_count_kv(heads["attn_k"])
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "F16" else gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = placeholder_vocab(cfg["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(int(cfg.get("bos_token_id", 1)))
    writer.add_eos_token_id(int(cfg.get("eos_token_id", 2)))
    writer.add_add_bos_token(False)
    for f, file_names in names.items():
        with safe_open(f, "pt") as st:
            for hf, name in file_names.items():
                value = st.get_tensor(hf).to(torch.float32).numpy()
                piece = name.split(".")[2] if name.startswith("blk.") else ""
                if piece in heads:
                    value = permute_rows(value, heads[piece])
                if value.ndim > 1 and dtype == "F16":
                    value = value.astype(np.float16)
                writer.add_tensor(name, np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("model", help="HF folder: config.json and *.safetensors, no tokenizer")
    ap.add_argument("out", help="the GGUF file to write")
    ap.add_argument("--type", default="F16", choices=TYPES, help="2-D tensors' type")
    a = ap.parse_args()
    write_gguf(a.model, a.out, a.type)


if __name__ == "__main__":
    main()
