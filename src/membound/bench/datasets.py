"""Benchmark prompts: random token ids of fixed length, or a JSONL / ShareGPT-style file.

``--dataset FILE`` accepts

* JSON Lines, one request per line: ``{"prompt": "text" | [token ids], "output_len": 128}``
  (``prompt_token_ids`` for ids; ``max_tokens`` / ``output_tokens`` also name the output
  length);
* ShareGPT: a JSON list (or JSON Lines) of ``{"conversations": [{"from": "human", "value":
  ...}, {"from": "gpt", "value": ...}, ...]}`` (``role`` / ``content`` keys also work). The
  first human turn is the prompt; the reply's token count (with a tokenizer) is the output
  length, as vLLM's ShareGPT benchmark does.

``--output-len`` overrides every record's output length. Records without a usable prompt or
output length are skipped; if fewer usable records than ``--num-prompts`` remain, they are
reused in order.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


@dataclass(frozen=True)
class SampleRequest:
    """One benchmark request. ``prompt_len`` is None when it cannot be known (text and no
    tokenizer); a server's reported usage then supplies it."""

    prompt: str | list[int]
    prompt_len: int | None
    output_len: int


def _lengths(mean: int, n: int, ratio: float, rng: random.Random) -> list[int]:
    """``n`` lengths uniform in [mean (1 - ratio), mean (1 + ratio)], at least 1."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {ratio}")
    lo, hi = max(1, int(mean * (1 - ratio))), max(1, int(mean * (1 + ratio)))
    return [rng.randint(lo, hi) for _ in range(n)]


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    vocab_size: int,
    *,
    seed: int = 0,
    range_ratio: float = 0.0,
    tokenizer: TokenizerLike | None = None,
) -> list[SampleRequest]:
    """Prompts of random token ids (ids 0..9 are avoided: special tokens live there in most
    vocabularies). With a tokenizer the ids become text of about the same token count (the
    server re-tokenizes it, so the length is approximate; the server's usage is what counts)."""
    if num_prompts < 1 or input_len < 1 or output_len < 1:
        raise ValueError("--num-prompts, --input-len and --output-len must be positive")
    rng = random.Random(seed)
    low = min(10, vocab_size - 1)
    ins = _lengths(input_len, num_prompts, range_ratio, rng)
    outs = _lengths(output_len, num_prompts, range_ratio, rng)
    requests = []
    for n_in, n_out in zip(ins, outs, strict=True):
        ids = [rng.randrange(low, vocab_size) for _ in range(n_in)]
        if tokenizer is None:
            requests.append(SampleRequest(ids, n_in, n_out))
        else:
            text, n_text = _text_of_length(tokenizer, ids)
            requests.append(SampleRequest(text, n_text, n_out))
    return requests


def _text_of_length(tokenizer: TokenizerLike, ids: list[int]) -> tuple[str, int]:
    """Random ids as text about ``len(ids)`` tokens long: decoded, re-encoded, cut to length
    and decoded again (vLLM's random dataset does the same); returns the text and its
    token count."""
    text = tokenizer.decode(ids)
    again = tokenizer.encode(text, add_special_tokens=False)[: len(ids)]
    text = tokenizer.decode(again)
    return text, len(tokenizer.encode(text, add_special_tokens=False))


def _read_records(path: str) -> list[Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith(".jsonl"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, list):
            return data
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e})") from e
    return records


def _turns(record: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for turn in record.get("conversations") or record.get("conversation") or []:
        if isinstance(turn, dict):
            role = str(turn.get("from", turn.get("role", ""))).lower()
            yield role, str(turn.get("value", turn.get("content", "")))


def _sharegpt(record: dict[str, Any]) -> tuple[str, str] | None:
    turns = list(_turns(record))
    for i, (role, text) in enumerate(turns[:-1]):
        if role in ("human", "user") and text.strip() and turns[i + 1][1].strip():
            return text, turns[i + 1][1]
    return None


def _parse(
    record: Any, tokenizer: TokenizerLike | None, output_len: int | None
) -> SampleRequest | None:
    if not isinstance(record, dict):
        return None
    reply = None
    prompt = record.get("prompt_token_ids", record.get("prompt"))
    if prompt is None:
        pair = _sharegpt(record)
        if pair is None:
            return None
        prompt, reply = pair
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) for t in prompt):
            return None
        prompt_len: int | None = len(prompt)
    elif isinstance(prompt, str) and prompt:
        prompt_len = len(tokenizer.encode(prompt)) if tokenizer is not None else None
    else:
        return None
    n_out = output_len
    for key in ("output_len", "max_tokens", "output_tokens"):
        if n_out is None and isinstance(record.get(key), int):
            n_out = record[key]
    if n_out is None and reply is not None and tokenizer is not None:
        n_out = len(tokenizer.encode(reply, add_special_tokens=False))
    if n_out is None or n_out < 1:
        return None
    return SampleRequest(prompt, prompt_len, n_out)


def load_dataset(
    path: str,
    num_prompts: int,
    *,
    tokenizer: TokenizerLike | None = None,
    output_len: int | None = None,
) -> list[SampleRequest]:
    """``num_prompts`` requests from a JSONL or ShareGPT file (see the module docstring)."""
    if num_prompts < 1:
        raise ValueError(f"--num-prompts must be positive, got {num_prompts}")
    usable = []
    for record in _read_records(path):
        req = _parse(record, tokenizer, output_len)
        if req is not None:
            usable.append(req)
        if len(usable) == num_prompts:
            break
    if not usable:
        hint = " (ShareGPT replies need a tokenizer or --output-len)" if tokenizer is None else ""
        raise ValueError(f"dataset {path!r} has no usable request{hint}")
    return [usable[i % len(usable)] for i in range(num_prompts)]


def token_id_prompts(
    requests: list[SampleRequest], tokenizer: TokenizerLike | None
) -> list[list[int]]:
    """Prompts as token ids for the offline engine (text needs the model's tokenizer)."""
    out = []
    for req in requests:
        if isinstance(req.prompt, list):
            out.append(req.prompt)
        elif tokenizer is None:
            raise ValueError("text prompts need a tokenizer; this model has none "
                             "(use the random dataset, or token ids in the file)")  # fmt: skip
        else:
            out.append(tokenizer.encode(req.prompt))
    return out
