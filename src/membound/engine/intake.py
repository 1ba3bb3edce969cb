"""The one intake: (prompt, SamplingParams) -> a validated request, or a clear error.

The server, ``LLM`` and ``LLMEngine.add_request`` all go through ``process_request``, so the
prompt-length, vocabulary, max_tokens and grammar rules exist once. Errors are
``InvalidRequestError`` (a RequestRejectedError, so a ValueError) carrying the offending parameter and, for context
overflows, OpenAI's ``context_length_exceeded`` code; the server maps them to 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from membound.core.scheduler import RequestRejectedError
from membound.sampling_params import SamplingParams

if TYPE_CHECKING:
    from membound.engine.tokenizer import Tokenizer
    from membound.structured_output.manager import StructuredOutputManager


class InvalidRequestError(RequestRejectedError):
    """A request that cannot be served as sent; the message names the problem and the fix."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class IntakeLimits:
    vocab_size: int  # the model's; token ids must be in [0, vocab_size)
    max_model_len: int  # prompt + output tokens
    kv_capacity_tokens: int  # the whole KV cache; a prompt must fit in it


@dataclass(frozen=True)
class ValidatedRequest:
    """A request the engine can run: token ids checked, max_tokens resolved, bad words
    tokenized, grammar compiled (cached by the engine's compiler)."""

    prompt: str | None  # the text when the prompt was text; token-id prompts carry none
    prompt_token_ids: list[int]
    params: SamplingParams


def process_request(
    prompt: str | Sequence[int],
    params: SamplingParams,
    *,
    limits: IntakeLimits,
    tokenizer: Tokenizer | None,
    grammars: StructuredOutputManager | None = None,
) -> ValidatedRequest:
    text, ids = _prompt_ids(prompt, tokenizer, limits.vocab_size)
    _check_prompt_len(len(ids), limits)
    params = _resolve_max_tokens(params, len(ids), limits.max_model_len)
    _check_token_ids(params, limits.vocab_size)
    params = _tokenize_bad_words(params, tokenizer)
    if params.structured_outputs is not None:
        if grammars is None:
            raise InvalidRequestError(
                "structured outputs are not available on this engine", "structured_outputs"
            )
        from membound.structured_output.grammar import GrammarError

        try:
            grammars.check(params.structured_outputs)
        except GrammarError as e:
            raise InvalidRequestError(str(e), e.param or "structured_outputs") from None
    return ValidatedRequest(text, ids, params)


def _prompt_ids(
    prompt: str | Sequence[int], tokenizer: Tokenizer | None, vocab_size: int
) -> tuple[str | None, list[int]]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise InvalidRequestError(
                "this model has no tokenizer; send token ids instead of text", "prompt"
            )
        return prompt, tokenizer.encode(prompt)
    ids = list(prompt)
    bad = [
        t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size
    ]
    if bad:
        raise InvalidRequestError(
            f"prompt token ids must be integers in [0, {vocab_size}); got {short(bad)}",
            "prompt",
            "invalid_token_id",
        )
    return None, ids


def _check_prompt_len(n: int, limits: IntakeLimits) -> None:
    if n == 0:
        raise InvalidRequestError("the prompt is empty; send at least one token", "prompt")
    if n >= limits.max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {limits.max_model_len} tokens. However, "
            f"your prompt has {n} tokens, which leaves no room for output. Please shorten it.",
            "prompt",
            "context_length_exceeded",
        )
    if n >= limits.kv_capacity_tokens:
        raise InvalidRequestError(
            f"the prompt has {n} tokens but the whole KV cache holds only "
            f"{limits.kv_capacity_tokens}; shorten the prompt or give the KV cache more memory",
            "prompt",
            "context_length_exceeded",
        )


def _resolve_max_tokens(params: SamplingParams, n: int, max_model_len: int) -> SamplingParams:
    """None -> the rest of the context; beyond the context -> an error clients can parse."""
    room = max_model_len - n
    if params.max_tokens is None:
        return replace(params, max_tokens=room)
    if params.max_tokens > room:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {short([n + params.max_tokens])} tokens ({n} in the prompt, "
            f"{short([params.max_tokens])} in the completion). Please reduce the prompt or "
            "max_tokens.",
            "max_tokens",
            "context_length_exceeded",
        )
    return params


def _check_token_ids(params: SamplingParams, vocab_size: int) -> None:
    named = (
        ("stop_token_ids", params.stop_token_ids or ()),
        ("logit_bias", tuple(params.logit_bias or ())),
        ("allowed_token_ids", params.allowed_token_ids or ()),
    )
    for param, ids in named:
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(
                f"{param} token ids must be in [0, {vocab_size}); got {short(bad)}", param
            )


def _tokenize_bad_words(params: SamplingParams, tokenizer: Tokenizer | None) -> SamplingParams:
    """Each bad word as encoded alone and after a space (vLLM's rule), without specials."""
    if not params.bad_words:
        return params
    if tokenizer is None:
        raise InvalidRequestError(
            "bad_words needs a tokenizer and this model has none", "bad_words"
        )
    seqs: dict[tuple[int, ...], None] = {}
    for word in params.bad_words:
        for text in (word, " " + word.lstrip()):
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if ids:
                seqs[ids] = None
    return replace(params, bad_words_token_ids=tuple(seqs))


def short(values: Sequence[int]) -> str:
    """At most five values, huge ones abbreviated (error messages echo client input)."""
    shown = [
        v if not isinstance(v, int) or abs(v) < 10**20 else f"<{len(str(v))}-digit number>"
        for v in values[:5]
    ]
    more = f" and {len(values) - 5} more" if len(values) > 5 else ""
    return f"{shown}{more}" if len(values) != 1 else f"{shown[0]}"
