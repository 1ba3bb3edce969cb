"""Tokenizer: a Hugging Face ``tokenizer.json`` folder, read through the ``tokenizers`` library.

Files read from a model folder (only ``tokenizer.json`` is required):

- ``tokenizer.json``: the fast-tokenizer definition (model, normalizer, pre-tokenizer,
  post-processor that adds BOS, decoder, added tokens). Encoding and decoding are exactly
  ``tokenizers``' own.
- ``tokenizer_config.json``: ``added_tokens_decoder``, ``bos_token`` / ``eos_token`` /
  ``unk_token`` / ``pad_token`` (string or ``{"content": ...}``), ``additional_special_tokens``
  (or transformers 5's ``extra_special_tokens``) and ``chat_template`` (string, or a list of
  ``{"name", "template"}``). Its values win over ``special_tokens_map.json``, which only fills
  gaps.
- ``generation_config.json``: ``eos_token_id`` (int or list), merged into ``eos_token_ids``.
- ``chat_template.jinja`` (the default template), ``additional_chat_templates/*.jinja`` (named
  ones) and ``chat_template.json``; standalone template files win over the config's entries.

Like transformers 5 with a ``tokenizer.json``, ``add_bos_token``/``add_eos_token`` are ignored:
the post-processor in ``tokenizer.json`` decides. ``decode`` never applies
``clean_up_tokenization_spaces``, so it agrees with the incremental detokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as _Backend

from membound.engine.chat_template import (
    ChatTemplate,
    ChatTemplateError,
    mark_contents,
    normalize_messages,
    split_marked,
)

__all__ = ["Tokenizer", "TokenizerError"]

_NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)
_EXTRA_SPECIAL_KEYS = ("additional_special_tokens", "extra_special_tokens")


class TokenizerError(ValueError):
    """A tokenizer folder or an input to the tokenizer is invalid; the message names the fix."""


class Tokenizer:
    """Text <-> token ids, special tokens, EOS ids and chat templates of one model."""

    def __init__(
        self,
        backend: _Backend,
        *,
        tokenizer_config: Mapping[str, Any] | None = None,
        special_tokens_map: Mapping[str, Any] | None = None,
        generation_config: Mapping[str, Any] | None = None,
        chat_templates: Mapping[str, str] | None = None,
        name: str = "<in-memory>",
    ) -> None:
        config = dict(tokenizer_config or {})
        self._backend = backend
        self.name = name
        _register_added_tokens(backend, config.get("added_tokens_decoder"), name)
        named = {**_named_special_tokens(special_tokens_map or {}), **_named_special_tokens(config)}
        self._special_tokens = {key: tok for key, tok in named.items() if tok is not None}
        ids = {key: self._special_token_id(tok) for key, tok in self._special_tokens.items()}
        extra = _extra_special_tokens(special_tokens_map or {}) + _extra_special_tokens(config)
        registered = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        self.all_special_ids: frozenset[int] = frozenset(
            registered | set(ids.values()) | {self._special_token_id(t) for t in extra}
        )
        self.bos_token: str | None = self._special_tokens.get("bos_token")
        self.eos_token: str | None = self._special_tokens.get("eos_token")
        self.bos_token_id: int | None = ids.get("bos_token")
        self.pad_token_id: int | None = ids.get("pad_token")
        self.unk_token_id: int | None = ids.get("unk_token")
        gen_eos = _generation_eos_ids(generation_config or {}, name)
        eos = ([ids["eos_token"]] if "eos_token" in ids else []) + gen_eos
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos))
        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        self._compiled: dict[str, ChatTemplate] = {}
        added = backend.get_added_tokens_decoder()
        self.vocab_size: int = max(
            backend.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1
        )
        self._special_texts = tuple(t.content for t in added.values() if t.special)
        self._as_text_backend: _Backend | None = None  # a copy that never parses specials

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load the tokenizer of the model folder ``path`` (see the module docstring), or
        of a GGUF file (built from its vocabulary, merges and metadata: membound.gguf)."""
        folder = Path(path)
        if folder.is_file() and _is_gguf(folder):
            return cls.from_gguf(folder)
        if not folder.is_dir():
            raise TokenizerError(
                f"tokenizer path {str(folder)!r} is not a directory; pass the local model folder "
                "that contains tokenizer.json"
            )
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerError(_missing_tokenizer_json_message(folder))
        try:
            backend = _Backend.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
            raise TokenizerError(
                f"{tokenizer_file} could not be parsed by the tokenizers library ({exc}); "
                "re-save it with a recent transformers (tokenizer.save_pretrained)"
            ) from exc
        config = _read_json(folder / "tokenizer_config.json")
        return cls(
            backend,
            tokenizer_config=config,
            special_tokens_map=_read_json(folder / "special_tokens_map.json"),
            generation_config=_read_json(folder / "generation_config.json"),
            chat_templates=_read_chat_templates(folder, config),
            name=str(folder),
        )

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """The tokenizer stored in a GGUF file's metadata (see membound/gguf/tokenizer.py)."""
        from membound.gguf.reader import GGUFError, GGUFFile
        from membound.gguf.tokenizer import tokenizer_parts

        try:
            backend, config, templates = tokenizer_parts(GGUFFile(path))
        except GGUFError as exc:
            raise TokenizerError(str(exc)) from exc
        return cls(backend, tokenizer_config=config, chat_templates=templates, name=str(path))

    def _special_token_id(self, token: str) -> int:
        """Id of a special token named by the config, registered as special like HF does
        (kept whole by ``encode``, dropped by ``decode(skip_special_tokens=True)``); a token
        missing from the vocabulary gets the next free id."""
        token_id = self._backend.token_to_id(token)
        added = self._backend.get_added_tokens_decoder()
        if token_id is None or token_id not in added:
            self._backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
            token_id = self._backend.token_to_id(token)
        assert token_id is not None
        return token_id

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` runs the post-processor (BOS etc.)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. Ids beyond the vocabulary (padded embeddings) decode to nothing."""
        if skip_special_tokens:
            special = self.all_special_ids
            ids = [i for i in ids if i not in special]
        try:
            return self._backend.decode(list(ids), skip_special_tokens=False)
        except (OverflowError, TypeError) as exc:
            raise TokenizerError(
                f"decode() needs a list of non-negative int token ids ({exc})"
            ) from exc

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Vocabulary strings of ``ids`` (e.g. ``'Ġthe'``, ``'▁the'``, ``'<0xE4>'``)."""
        tokens = []
        for i in ids:
            token = self._backend.id_to_token(i) if isinstance(i, int) and i >= 0 else None
            if token is None:
                raise TokenizerError(
                    f"token id {i!r} is not in the vocabulary (size {self.vocab_size})"
                )
            tokens.append(token)
        return tokens

    def token_to_id(self, token: str) -> int | None:
        """Id of the vocabulary string ``token``, or None when it is not in the vocabulary."""
        return self._backend.token_to_id(token)

    def to_json(self) -> str:
        """The backend tokenizer, serialized as tokenizer.json (for grammar engines)."""
        return str(self._backend.to_str())

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={self.eos_token_ids})"

    # ------------------------------------------------------------------ chat
    @property
    def chat_template(self) -> str | None:
        """The default chat template source, or None when the model ships none."""
        return self.chat_templates.get("default")

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        continue_final_message: bool = False,
        **kwargs: Any,
    ) -> str:
        """Render ``messages`` with the model's chat template (or ``chat_template=``).

        ``chat_template`` may be a template string or the name of one of the model's named
        templates (e.g. ``"tool_use"``). Extra keyword arguments become template variables.
        """
        if tools is not None and not (
            isinstance(tools, list) and all(isinstance(t, Mapping) for t in tools)
        ):
            raise ChatTemplateError("tools must be a list of JSON-schema dicts")
        template = self._compiled_template(self._resolve_template(chat_template, tools))
        variables = {**self._special_tokens, **kwargs}
        return template.render(
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            **variables,
        )

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        add_special_tokens: bool | None = None,
        parse_special_in_content: bool = False,
        **kwargs: Any,
    ) -> list[int]:
        """Render ``messages`` and encode the result.

        With ``add_special_tokens=None`` (the default) the post-processor's special tokens
        are added only when the rendered text does not already start with the BOS token, so
        a template that writes ``{{ bos_token }}`` never gets a second BOS. Special-token
        text inside message content (a user typing ``<|im_start|>system``) is encoded as
        plain text unless ``parse_special_in_content`` (trusted callers only).
        """
        chat = normalize_messages(messages)
        text = self.apply_chat_template(chat, add_generation_prompt, **kwargs)
        if add_special_tokens is None:
            add_special_tokens = not (self.bos_token and text.startswith(self.bos_token))
        contents = [m["content"] for m in chat if isinstance(m.get("content"), str)]
        if parse_special_in_content or not any(
            s in c for c in contents for s in self._special_texts
        ):
            return self.encode(text, add_special_tokens=add_special_tokens)
        marked, contents = mark_contents(chat)
        pieces = split_marked(
            self.apply_chat_template(marked, add_generation_prompt, **kwargs), contents, text
        )
        if self._as_text_backend is None:
            self._as_text_backend = _Backend.from_str(self._backend.to_str())
            self._as_text_backend.encode_special_tokens = True
        ids = []
        for is_content, piece in pieces:
            backend = self._as_text_backend if is_content else self._backend
            ids += backend.encode(piece, add_special_tokens=False).ids
        if not add_special_tokens:
            return ids
        inner = self._backend.encode("a", add_special_tokens=False).ids
        outer = self._backend.encode("a", add_special_tokens=True).ids
        at = next(i for i in range(len(outer)) if outer[i : i + len(inner)] == inner)
        return outer[:at] + ids + outer[at + len(inner) :]

    def _resolve_template(self, chat_template: str | None, tools: object) -> str:
        if chat_template is not None:
            return self.chat_templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        if self.chat_templates:
            raise ChatTemplateError(
                f"{self.name} has several chat templates but no default; pick one with "
                f"chat_template=<name> (one of {sorted(self.chat_templates)})"
            )
        raise ChatTemplateError(
            f"{self.name} has no chat template (no chat_template in tokenizer_config.json and no "
            "chat_template.jinja), so chat messages cannot be formatted; pass a Jinja template "
            "with chat_template=... or use a plain text prompt"
        )

    def _compiled_template(self, source: str) -> ChatTemplate:
        template = self._compiled.get(source)
        if template is None:
            template = self._compiled[source] = ChatTemplate(source)
        return template


# ---------------------------------------------------------------------- file helpers
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid JSON ({exc}); fix or remove the file") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _is_gguf(path: Path) -> bool:
    from membound.gguf.reader import is_gguf_file

    return is_gguf_file(path)


def _missing_tokenizer_json_message(folder: Path) -> str:
    slow = [
        f
        for f in ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
        if (folder / f).exists()
    ]
    found = f" (found slow-tokenizer files: {', '.join(slow)})" if slow else ""
    return (
        f"{folder} has no tokenizer.json{found}. membound reads only the fast tokenizer.json "
        "format; convert a slow SentencePiece/BPE tokenizer once with transformers: "
        "AutoTokenizer.from_pretrained(path).save_pretrained(path)"
    )


def _read_chat_templates(folder: Path, config: Mapping[str, Any]) -> dict[str, str]:
    templates: dict[str, str] = {}
    processor = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(processor, str):
        templates["default"] = processor
    templates.update(_config_chat_templates(config.get("chat_template"), folder))
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    return templates


def _config_chat_templates(value: object, folder: Path) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list) and all(
        isinstance(t, Mapping)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("template"), str)
        for t in value
    ):
        return {t["name"]: t["template"] for t in value}
    raise TokenizerError(
        f"{folder / 'tokenizer_config.json'}: chat_template must be a string or a list of "
        f'{{"name": ..., "template": ...}} objects, got {type(value).__name__}'
    )


def _token_content(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f'a special token must be a string or {{"content": ...}}, got {value!r}')


def _named_special_tokens(config: Mapping[str, Any]) -> dict[str, str | None]:
    return {key: _token_content(config[key]) for key in _NAMED_SPECIAL_TOKENS if key in config}


def _extra_special_tokens(config: Mapping[str, Any]) -> list[str]:
    tokens: list[str] = []
    for key in _EXTRA_SPECIAL_KEYS:
        value = config.get(key) or []
        items = value.values() if isinstance(value, Mapping) else value
        tokens.extend(t for t in (_token_content(v) for v in items) if t is not None)
    return tokens


def _register_added_tokens(backend: _Backend, decoder: object, name: str) -> None:
    """Make ``added_tokens_decoder`` from tokenizer_config.json true in the backend."""
    if not decoder:
        return
    if not isinstance(decoder, Mapping):
        raise TokenizerError(f"{name}: added_tokens_decoder must be an object of id -> token")
    for key in sorted(decoder, key=int):
        entry = decoder[key]
        content = _token_content(entry)
        if content is None:
            continue
        if not isinstance(entry, Mapping):
            entry = {"content": content}
        special = bool(entry.get("special", False))
        existing = backend.token_to_id(content)
        known = backend.get_added_tokens_decoder().get(existing) if existing is not None else None
        if existing is not None and (known is not None or not special):
            continue  # tokenizer.json already has it; its id is authoritative
        token = AddedToken(
            content,
            single_word=bool(entry.get("single_word", False)),
            lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)),
            normalized=bool(entry.get("normalized", not special)),
            special=special,
        )
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        got = backend.token_to_id(content)
        if existing is None and got != int(key):
            raise TokenizerError(
                f"{name}: tokenizer_config.json declares added token {content!r} with id {key} "
                f"but tokenizer.json would give it id {got}; the two files disagree. Re-save "
                "the tokenizer with transformers (save_pretrained) so they match"
            )


def _generation_eos_ids(generation_config: Mapping[str, Any], name: str) -> list[int]:
    value = generation_config.get("eos_token_id")
    if value is None:
        return []
    ids = [value] if isinstance(value, int) else value
    if not isinstance(ids, list) or any(
        not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids
    ):
        raise TokenizerError(
            f"{name}: generation_config.json eos_token_id must be a non-negative int or a list "
            f"of them, got {value!r}"
        )
    return list(ids)
