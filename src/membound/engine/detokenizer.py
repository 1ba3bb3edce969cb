"""Incremental detokenization and stop strings for one generated sequence.

Token ids arrive one step at a time; the text they spell must be streamed out without ever
emitting half a character. Decoding each token on its own is wrong for byte-level BPE (one
character may span tokens, one token may end inside a character), for SentencePiece byte
fallback (``<0xE4><0xB8><0xAD>`` is one character) and for Metaspace (``▁word`` loses its
space when it is the first token decoded). So we decode a short *window* of tokens and diff:

```
 ids:  ... | prefix window          | read window          |
           ^ prefix_offset          ^ read_offset          ^ len(ids)
 prefix_text = decode(ids[prefix_offset:read_offset])      (already emitted)
 new_text    = decode(ids[prefix_offset:])
 delta       = new_text[len(prefix_text):]   unless new_text ends in U+FFFD (incomplete char)
 on a delta: prefix_offset <- read_offset, read_offset <- len(ids)
```

The prefix window supplies the context that makes the diff exact and the windows stay a few
tokens long, so each step costs O(1) amortised. The last few prompt tokens seed the first window,
so the first generated word keeps its leading space, as in ``decode(prompt + output)``.

Stop strings are matched on the text after every token, so a stop string split across tokens is
found. Any tail of the text that could still grow into a stop string is held back from the
streamed delta until it cannot, and ``flush()`` releases it when the request ends.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from membound.engine.tokenizer import Tokenizer
    from membound.sampling_params import SamplingParams

__all__ = ["IncrementalDetokenizer", "StopTokenHit", "check_stop_token"]

_REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens kept as context for the first window (vLLM uses the same number).
_PROMPT_CONTEXT_TOKENS = 5
# Drop ids before prefix_offset once this many have accumulated (keeps slices short).
_COMPACT_AFTER = 64


class IncrementalDetokenizer:
    """Turns one sequence's generated token ids into streamed text, honouring stop strings.

    ``output_text`` is all text decoded so far (cut at a stop string once one matches);
    ``update()`` and ``flush()`` return only the part not returned before. The engine handles
    EOS and stop token ids (see :func:`check_stop_token`) and calls ``flush()`` when the request
    ends for any reason other than a stop string.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = params.skip_special_tokens
        self._stops: tuple[str, ...] = tuple(params.stop or ())
        self._max_stop_len = max((len(s) for s in self._stops), default=0)
        self._include_stop = params.include_stop_str_in_output
        self._min_tokens = params.min_tokens
        self.output_text = ""
        self.token_ids: list[int] = []
        self.finished = False
        self.stop_reason: str | int | None = None
        self._emitted = 0  # chars of output_text already returned
        self._closed = False
        # ids of the decode windows: a little prompt context, then the generated ids
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        # A prompt that ends inside a multi-byte character: start reading at that character so
        # the output, which completes it, contains it whole.
        while self._read_offset > 0 and self._decode(self._ids[: self._read_offset]).endswith(
            _REPLACEMENT_CHAR
        ):
            self._read_offset -= 1

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> str:
        """Append generated ids; return the text that became final (possibly ``""``).

        ``stop_terminated=True`` says the last id is an EOS / stop token id: it is recorded but
        its text is left out unless ``include_stop_str_in_output``. Ids after a matched stop
        string are ignored.
        """
        if self._closed:
            raise RuntimeError("IncrementalDetokenizer.update() called after flush()")
        last = len(new_token_ids) - 1
        for i, token_id in enumerate(new_token_ids):
            if self.finished:
                break
            self.token_ids.append(token_id)
            if i == last and stop_terminated and not self._include_stop:
                break
            self._ids.append(token_id)
            self._append_text(self._decode_step())
        return self._take_delta(final=self.finished)

    def flush(self) -> str:
        """End of request: decode whatever is still pending and return all held-back text."""
        if not self._closed and not self.finished:
            prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
            new_text = self._decode(self._ids[self._prefix_offset :])
            self._append_text(new_text[len(prefix_text) :])
        self._closed = True
        return self._take_delta(final=True)

    # ------------------------------------------------------------------ decoding
    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _decode_step(self) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""  # nothing new yet, or the last character is still incomplete
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        if self._prefix_offset >= _COMPACT_AFTER:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return new_text[len(prefix_text) :]

    # ------------------------------------------------------------------ stop strings
    def _append_text(self, text: str) -> None:
        if not text:
            return
        self.output_text += text
        # vLLM semantics: stop strings only count once more than min_tokens ids were generated.
        if self._stops and len(self.token_ids) > self._min_tokens:
            self._check_stop_strings(len(text))

    def _check_stop_strings(self, new_chars: int) -> None:
        text = self.output_text
        best: tuple[int, str] | None = None
        for stop in self._stops:
            # only a match that ends inside the new characters is new
            index = text.find(stop, max(0, len(text) - new_chars - len(stop) + 1))
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return
        index, stop = best
        self.output_text = text[: index + len(stop) if self._include_stop else index]
        self._emitted = min(self._emitted, len(self.output_text))
        self.finished = True
        self.stop_reason = stop

    def _held_back(self) -> int:
        """Length of the longest tail of output_text that is a proper prefix of a stop string."""
        text = self.output_text
        for k in range(min(self._max_stop_len - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(len(stop) > k and stop.startswith(tail) for stop in self._stops):
                return k
        return 0

    def _take_delta(self, final: bool) -> str:
        end = len(self.output_text) if final else len(self.output_text) - self._held_back()
        if end <= self._emitted:
            return ""
        delta = self.output_text[self._emitted : end]
        self._emitted = end
        return delta


@dataclass(frozen=True, slots=True)
class StopTokenHit:
    """A generated token id that ends the request: an EOS id or one of ``stop_token_ids``."""

    token_id: int
    is_eos: bool

    @property
    def stop_reason(self) -> int | None:
        """OpenAI/vLLM ``stop_reason``: the stop token id, or None for EOS."""
        return None if self.is_eos else self.token_id


def check_stop_token(
    token_id: int, params: SamplingParams, eos_ids: Collection[int], num_output_tokens: int
) -> StopTokenHit | None:
    """Does ``token_id`` (the ``num_output_tokens``-th generated id) end the request?

    EOS ids count unless ``params.ignore_eos``; ``params.stop_token_ids`` always count. Neither
    counts while ``num_output_tokens <= params.min_tokens`` (at least ``min_tokens`` tokens
    precede the stop), matching :class:`IncrementalDetokenizer`'s rule for stop strings. The
    ``max_tokens`` limit is the engine's to check.
    """
    if num_output_tokens <= params.min_tokens:
        return None
    if not params.ignore_eos and token_id in eos_ids:
        return StopTokenHit(token_id, is_eos=True)
    if token_id in (params.stop_token_ids or ()):
        return StopTokenHit(token_id, is_eos=False)
    return None
