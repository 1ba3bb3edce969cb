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

Whatever the ids, the streamed text concatenates to ``decode(prompt + output)`` minus the
prompt's text, with one exception: a run of ``<0x..>`` byte-fallback tokens that is not valid
UTF-8 decodes all-or-nothing to U+FFFD, so bytes streamed before the run went bad may differ.

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
_MAX_PROMPT_CONTEXT_TOKENS = 23
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
        self.token_ids: list[int] = []
        self.finished = False
        self.stop_reason: str | int | None = None
        self._returned: list[str] = []  # deltas already handed out
        self._pending = ""  # decoded text not handed out yet
        self._closed = False
        # ids of the decode windows: a little prompt context, then the generated ids
        self._ids: list[int] = self._prompt_context(prompt_token_ids)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._skip_chars = self._align_to_character()

    def _align_to_character(self) -> int:
        """A prompt that ends inside a character: move read_offset back to where it starts.

        Windows must start on a character boundary. The output then begins with text the
        prompt's last tokens already spelled in part; return how many characters of it the
        prompt's decoded text (minus its trailing U+FFFD) already shows, to be dropped, so that
        decode(prompt) without its trailing U+FFFD, followed by output_text, is
        decode(prompt + output).
        """
        shown = self._decode(self._ids)
        if not shown.endswith(_REPLACEMENT_CHAR):
            return 0
        shown = shown.rstrip(_REPLACEMENT_CHAR)
        clean = shown + _REPLACEMENT_CHAR
        # (byte fallback turns a whole run of byte tokens into U+FFFD when it ends in a partial
        # character, so the prompt may show fewer whole characters than its tokens spell)
        while self._read_offset > 0 and (
            clean.endswith(_REPLACEMENT_CHAR) or len(clean) > len(shown)
        ):
            self._read_offset -= 1
            clean = self._decode(self._ids[: self._read_offset])
        return len(shown) - len(clean)

    def _prompt_context(self, prompt_token_ids: Sequence[int]) -> list[int]:
        """The shortest prompt suffix (>= 5 ids) that decodes cleanly, as vLLM picks it.

        A suffix that starts inside a character decodes to U+FFFD, and with byte fallback
        that garbage can swallow the bytes the output adds; the whole prompt is the fallback
        (it starts on a character boundary by definition).
        """
        n = len(prompt_token_ids)
        for size in range(_PROMPT_CONTEXT_TOKENS, min(n, _MAX_PROMPT_CONTEXT_TOKENS) + 1):
            suffix = list(prompt_token_ids[n - size :])
            # a partial character at the very end is fine (_align_to_character handles it)
            text = self._decode(suffix).rstrip(_REPLACEMENT_CHAR)
            if text and _REPLACEMENT_CHAR not in text:
                return suffix
        return list(prompt_token_ids)

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

    # ------------------------------------------------------------------ text and stop strings
    # output_text = "".join(_returned) + _pending. Only _pending (text not yet returned: a held
    # stop-string prefix plus the newest characters) is scanned, so a step costs O(1) however
    # long the output grows. A new stop match always starts inside _pending: the text before
    # it was held back exactly because it could still become that stop string.
    @property
    def output_text(self) -> str:
        """All text decoded so far, cut at the stop string once one matched."""
        if len(self._returned) > 1:
            self._returned[:] = ["".join(self._returned)]
        return (self._returned[0] if self._returned else "") + self._pending

    @property
    def returned_text(self) -> str:
        """The text already handed out by update()/flush(): safe to stream, since nothing a
        later stop string could cut is in it."""
        if len(self._returned) > 1:
            self._returned[:] = ["".join(self._returned)]
        return self._returned[0] if self._returned else ""

    def _append_text(self, text: str) -> None:
        if self._skip_chars:
            skipped = min(self._skip_chars, len(text))
            text, self._skip_chars = text[skipped:], self._skip_chars - skipped
        if not text:
            return
        self._pending += text
        # vLLM semantics: stop strings only count once more than min_tokens ids were generated.
        if self._stops and len(self.token_ids) > self._min_tokens:
            self._check_stop_strings(len(text))

    def _check_stop_strings(self, new_chars: int) -> None:
        text = self._pending
        best: tuple[int, str] | None = None
        for stop in self._stops:
            # only a match that ends inside the new characters is new
            index = text.find(stop, max(0, len(text) - new_chars - len(stop) + 1))
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return
        index, stop = best
        self._pending = text[: index + len(stop) if self._include_stop else index]
        self.finished = True
        self.stop_reason = stop

    def _held_back(self) -> int:
        """Length of the longest tail of _pending that is a proper prefix of a stop string."""
        text = self._pending
        for k in range(min(self._max_stop_len - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(len(stop) > k and stop.startswith(tail) for stop in self._stops):
                return k
        return 0

    def _take_delta(self, final: bool) -> str:
        end = len(self._pending) if final else len(self._pending) - self._held_back()
        if end <= 0:
            return ""
        delta, self._pending = self._pending[:end], self._pending[end:]
        self._returned.append(delta)
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
