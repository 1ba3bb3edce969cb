"""The tokenizer a GGUF file describes, built with the ``tokenizers`` library.

A GGUF has no tokenizer.json: it stores ``tokenizer.ggml.model`` (the kind), the vocabulary,
the merges, each token's type and the special token ids. For the byte-level BPE kind
("gpt2": GPT-2, Llama 3, Qwen2, SmolLM, ...) this rebuilds the same tokenizer transformers'
GGUF loader builds (its ``byte_level_tokenizer``): BPE over the byte alphabet, the
pre-tokenizer split regex that ``tokenizer.ggml.pre`` names, control tokens (type 3) as
special added tokens and user-defined ones (type 4) as plain added tokens, BOS/EOS added
only when ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` say so. Returned as parts for
``membound.engine.tokenizer.Tokenizer`` (the backend, a tokenizer_config dict, the chat
templates), so this module never imports the engine.
"""

from __future__ import annotations

from typing import Any

from membound.gguf.reader import GGUFError, GGUFFile

CONTROL, USER_DEFINED = 3, 4

_GPT2_SPLIT = None  # ByteLevel's own GPT-2 regex
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> split regex (as transformers' GGUF_PRE_TOKENIZER_SPLITS); others: GPT-2's
PRE_TOKENIZER_SPLITS: dict[str, str] = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}
_SPECIAL_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def has_tokenizer(file: GGUFFile) -> bool:
    return isinstance(file.get("tokenizer.ggml.tokens"), list) and bool(
        file.get("tokenizer.ggml.model")
    )


def check_tokenizer(file: GGUFFile) -> None:
    """Raise GGUFError unless the file carries a tokenizer membound can build."""
    if not has_tokenizer(file):
        raise GGUFError(
            f"{file.path} has no tokenizer (no tokenizer.ggml.tokens / tokenizer.ggml.model in "
            "its metadata); pass tokenizer=<a Hugging Face tokenizer folder> (--tokenizer), or "
            "skip_tokenizer_init=True to send token ids only"
        )
    kind = file.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(
            f"{file.path}: GGUF tokenizer kind {kind!r} is not supported yet (membound builds "
            "byte-level BPE 'gpt2' vocabularies); pass tokenizer=<the model's Hugging Face "
            "tokenizer folder> (--tokenizer)"
        )
    if not isinstance(file.get("tokenizer.ggml.merges"), list):
        raise GGUFError(
            f"{file.path}: the BPE vocabulary has no tokenizer.ggml.merges; "
            "re-convert the file with llama.cpp's convert_hf_to_gguf.py"
        )


def tokenizer_parts(file: GGUFFile) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """(tokenizers.Tokenizer, tokenizer_config, chat templates by name) of a GGUF file."""
    from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    check_tokenizer(file)
    tokens: list[str] = file.get("tokenizer.ggml.tokens")
    types: list[int] = file.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8")): i
        for i, tok in enumerate(tokens)
    }
    merges = [tuple(m.split(" ")) for m in file.get("tokenizer.ggml.merges")]
    backend = Backend(
        BPE(
            vocab,
            merges,
            dropout=None,
            unk_token=None,
            fuse_unk=False,
            byte_fallback=False,
            continuing_subword_prefix="",
            end_of_word_suffix="",
        )
    )
    split = PRE_TOKENIZER_SPLITS.get(str(file.get("tokenizer.ggml.pre", "")), _GPT2_SPLIT)
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, k in zip(tokens, types)
        if k == CONTROL and set(t) <= alphabet
    ]
    backend.add_special_tokens(control)
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, k in zip(tokens, types)
        if k == USER_DEFINED and t in vocab
    ]
    backend.add_tokens(user)
    config = _special_tokens(file, tokens)
    backend.post_processor = _post_processor(file, config, processors)
    return backend, config, _chat_templates(file)


def _special_tokens(file: GGUFFile, tokens: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, key in _SPECIAL_IDS.items():
        token_id = file.get(f"tokenizer.ggml.{key}")
        if isinstance(token_id, int):
            if not 0 <= token_id < len(tokens):
                raise GGUFError(
                    f"{file.path}: tokenizer.ggml.{key}={token_id} is outside the vocabulary "
                    f"of {len(tokens)} tokens; re-convert the file"
                )
            config[name] = tokens[token_id]
    return config


def _post_processor(file: GGUFFile, config: dict[str, Any], processors: Any) -> Any:
    """BOS / EOS around the text only where the metadata asks for them (HF's template)."""
    bos = config.get("bos_token") if file.get("tokenizer.ggml.add_bos_token", False) else None
    eos = config.get("eos_token") if file.get("tokenizer.ggml.add_eos_token", False) else None
    single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
    pair = " ".join(
        [single, *([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])]
    )
    ids = file.get("tokenizer.ggml.bos_token_id"), file.get("tokenizer.ggml.eos_token_id")
    special = [(tok, i) for tok, i in zip((bos, eos), ids) if tok]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _chat_templates(file: GGUFFile) -> dict[str, str]:
    """tokenizer.chat_template (the default) and tokenizer.chat_template.<name> (named)."""
    templates: dict[str, str] = {}
    default = file.get("tokenizer.chat_template")
    if isinstance(default, str):
        templates["default"] = default
    prefix = "tokenizer.chat_template."
    for key, value in file.metadata.items():
        if key.startswith(prefix) and isinstance(value, str):
            templates[key[len(prefix) :]] = value
    return templates


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the byte-level alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))
