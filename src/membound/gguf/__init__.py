"""GGUF checkpoints (llama.cpp's single-file format), read with the ``gguf`` package.

    reader.py      open and validate a file: metadata, tensor table, truncation (GGUFError)
    tokenizer.py   the tokenizer a file's vocabulary, merges and special ids describe
    tensors.py     GGUF tensor names -> checkpoint names, llama.cpp's q/k row order undone,
                   block decoding (Q4_0/Q4_1/Q4_K -> int4 groups of 32) and dequantization
    loader.py      validate every tensor, then stream them into a built model

``ModelConfig.from_gguf`` (config/model.py) turns the metadata into a config; nothing here
imports torch at import time. See docs/gguf.md.
"""
