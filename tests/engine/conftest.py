"""Tiny tokenizers built offline with the `tokenizers` library, saved as HF model folders."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "hello world, the quick brown fox jumps over the lazy dog.",
    "The weather is nice today; let's go for a walk in the park!",
    "中文分词测试：你好，世界。我们今天去公园散步。",
    "日本語のテキストも少し入れておきます。",
    "emoji time 😀🎉👍 and more 😀😀 fun 🚀",
    "café naïve résumé — “quotes” and ‘single’ ones…",
    "numbers 12345 67890 and symbols <>&{}[]",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if tools is not none %}
{{- '<|start_header_id|>system<|end_header_id|>\n\nTools: ' + tools | tojson + '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

LLAMA_WORDS = ["▁hello", "▁world", "▁the", "▁fox", "ing", "▁a", "he", "llo"]
LLAMA3_SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def save_folder(folder: Path, backend: Backend, **files: Any) -> Path:
    """Write tokenizer.json plus ``name=json-able`` extra files (``a_b`` -> ``a_b.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    for name, content in files.items():
        if name.endswith("_jinja"):
            (folder / (name[: -len("_jinja")] + ".jinja")).write_text(content, encoding="utf-8")
        else:
            (folder / f"{name}.json").write_text(json.dumps(content), encoding="utf-8")
    return folder


def build_byte_level() -> Backend:
    """GPT-2/Qwen-style byte-level BPE with a small vocabulary: CJK/emoji span tokens."""
    tok = Backend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def build_llama(metaspace: bool) -> Backend:
    """Llama-style SentencePiece BPE: <unk> <s> </s>, <0x00>..<0xFF> byte fallback, ▁ words.

    ``metaspace=False`` is the legacy Llama-2 layout (Prepend/Replace normalizer, Strip
    decoder); ``True`` uses the Metaspace pre-tokenizer and decoder.
    """
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzTHW,.!中":
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in LLAMA_WORDS:
        piece = word[0]
        for ch in word[1:]:
            if (piece + ch) not in vocab:
                merges.append((piece, ch))
                vocab[piece + ch] = len(vocab)
            piece += ch
    tok = Backend(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.ByteFallback(),
                decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False),
                decoders.Fuse(),
            ]
        )
    else:
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def llama_config(backend: Backend) -> dict[str, Any]:
    """tokenizer_config.json declaring Llama-3-style header tokens that tokenizer.json lacks."""
    first = backend.get_vocab_size(with_added_tokens=True)
    added = {str(first + i): {"content": t, "special": True} for i, t in enumerate(LLAMA3_SPECIALS)}
    return {
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "lstrip": False, "special": True},
        "unk_token": "<unk>",
        "added_tokens_decoder": added,
        "chat_template": [{"name": "default", "template": LLAMA3_TEMPLATE}],
    }


@pytest.fixture(scope="session")
def byte_level_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = build_byte_level()
    return save_folder(
        tmp_path_factory.mktemp("qwen_like"),
        backend,
        tokenizer_config={
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "bos_token": None,
            "chat_template": CHATML_TEMPLATE,
        },
        generation_config={"eos_token_id": [backend.token_to_id("<|im_end|>"), 0]},
    )


@pytest.fixture(scope="session", params=[False, True], ids=["legacy", "metaspace"])
def llama_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = build_llama(metaspace=request.param)
    config = llama_config(backend)
    eot = int(
        next(k for k, v in config["added_tokens_decoder"].items() if v["content"] == "<|eot_id|>")
    )
    return save_folder(
        tmp_path_factory.mktemp("llama_like"),
        backend,
        tokenizer_config=config,
        generation_config={"bos_token_id": 1, "eos_token_id": [2, eot]},
    )


@pytest.fixture(scope="session")
def tk() -> SimpleNamespace:
    """The builders and templates above, for tests (importing conftest directly is fragile)."""
    return SimpleNamespace(
        CHATML_TEMPLATE=CHATML_TEMPLATE,
        LLAMA3_TEMPLATE=LLAMA3_TEMPLATE,
        CORPUS=CORPUS,
        save_folder=save_folder,
        build_byte_level=build_byte_level,
        build_llama=build_llama,
        llama_config=llama_config,
    )
