"""SamplingParams: how one request turns logits into tokens, validated at construction."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

_GREEDY_EPS = 1e-5


class SamplingParamsError(ValueError):
    """An invalid sampling parameter; the message names it and its valid range."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Constrain the output to a language (vLLM's ``StructuredOutputsParams``): exactly one of
    ``json`` (a JSON schema, dict or string), ``json_object`` (any JSON object), ``regex``,
    ``choice`` (one of these strings) or ``grammar`` (EBNF, GBNF-style).

    ``strict`` (json only): True, as OpenAI's ``strict: true``, forbids properties the schema
    does not list; False lets objects carry extra properties unless the schema says otherwise.
    The grammar is compiled by the engine (xgrammar) when the request is added; a schema it
    cannot compile is refused there with an error that names the problem.
    """

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    strict: bool = True

    def __post_init__(self) -> None:
        if self.choice is not None:
            choice = tuple(self.choice)
            if not choice or any(not isinstance(c, str) for c in choice):
                raise SamplingParamsError("choice must be a non-empty list of strings", "choice")
            object.__setattr__(self, "choice", choice)
        if isinstance(self.json, str):
            try:
                object.__setattr__(self, "json", json.loads(self.json))
            except ValueError as e:
                raise SamplingParamsError(f"json is not a valid JSON schema string: {e}",
                                          "json") from None
        if self.json is not None and not isinstance(self.json, (dict, bool)):
            raise SamplingParamsError("json must be a JSON schema (an object)", "json")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise SamplingParamsError(f"{name} must be a non-empty string", name)
        given = [k for k in self.kinds() if k]
        if len(given) != 1:
            raise SamplingParamsError(
                "structured outputs need exactly one of json, json_object, regex, choice or "
                f"grammar; got {len(given)}", "structured_outputs",
            )

    def kinds(self) -> tuple[bool, ...]:
        return (self.json is not None, bool(self.json_object), self.regex is not None,
                self.choice is not None, self.grammar is not None)

    def cache_key(self) -> str:
        """A canonical string: equal specs compile to the same grammar."""
        return json.dumps([self.json, self.json_object, self.regex, self.choice, self.grammar,
                           self.strict], sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings, with vLLM's names and meanings.

    ``temperature=0`` is greedy. ``top_k`` 0 or -1 disables top-k. ``logprobs=k`` returns,
    for every generated token, the sampled token's logprob and the top-k alternatives
    (raw model distribution, before temperature and filtering). ``prompt_logprobs=k`` does
    the same for every prompt token after the first.

    ``logit_bias`` ({token id: bias in [-100, 100]}) is added to the logits; ``allowed_token_ids``
    restricts sampling to those ids; ``bad_words`` are never generated (the intake turns them
    into ``bad_words_token_ids``: a one-token word is always banned, a longer one's last token
    is banned after its other tokens); ``structured_outputs`` constrains the output to a
    grammar (see StructuredOutputsParams).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] | list[str] | str | None = None
    stop_token_ids: tuple[int, ...] | list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: tuple[int, ...] | list[int] | None = None
    bad_words: tuple[str, ...] | list[str] | None = None
    bad_words_token_ids: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False)
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        else:
            stop = tuple(stop)
        if any(not isinstance(s, str) or s == "" for s in stop):
            raise SamplingParamsError("stop must be a list of non-empty strings", "stop")
        object.__setattr__(self, "stop", stop)
        ids = tuple(self.stop_token_ids or ())
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
            raise SamplingParamsError(
                "stop_token_ids must be non-negative integers", "stop_token_ids"
            )
        object.__setattr__(self, "stop_token_ids", ids)
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        self._normalize_token_controls()
        self._validate()

    def _normalize_token_controls(self) -> None:
        if self.logit_bias is not None:
            bias: dict[int, float] = {}
            for tok, value in dict(self.logit_bias).items():
                try:
                    tok_id = int(tok)
                except (TypeError, ValueError):
                    raise SamplingParamsError(
                        f"logit_bias keys must be token ids, got {tok!r}", "logit_bias") from None
                if tok_id < 0 or not _finite(value) or not -100 <= value <= 100:
                    raise SamplingParamsError(
                        f"logit_bias maps token ids >= 0 to biases in [-100, 100], got "
                        f"{tok!r}: {value!r}", "logit_bias")
                bias[tok_id] = float(value)
            object.__setattr__(self, "logit_bias", bias or None)
        if self.allowed_token_ids is not None:
            ids = tuple(self.allowed_token_ids)
            if not ids or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
                raise SamplingParamsError(
                    "allowed_token_ids must be a non-empty list of token ids >= 0",
                    "allowed_token_ids")
            object.__setattr__(self, "allowed_token_ids", ids)
        if self.bad_words is not None:
            words = tuple(self.bad_words)
            if any(not isinstance(w, str) or not w.strip() for w in words):
                raise SamplingParamsError("bad_words must be a list of non-empty strings",
                                          "bad_words")
            object.__setattr__(self, "bad_words", words or None)
        if self.bad_words_token_ids is not None:
            seqs = tuple(tuple(s) for s in self.bad_words_token_ids if s)
            object.__setattr__(self, "bad_words_token_ids", seqs or None)
        so = self.structured_outputs
        if so is not None and not isinstance(so, StructuredOutputsParams):
            raise SamplingParamsError("structured_outputs must be a StructuredOutputsParams",
                                      "structured_outputs")
        if so is not None and self.min_tokens > 0:
            raise SamplingParamsError(
                "min_tokens cannot be combined with structured outputs: the grammar decides "
                "where the output ends", "min_tokens")
        if so is not None and self.ignore_eos:
            raise SamplingParamsError(
                "ignore_eos cannot be combined with structured outputs: the output ends at EOS "
                "once the grammar is complete", "ignore_eos")

    def _validate(self) -> None:
        def bad(param: str, msg: str) -> SamplingParamsError:
            return SamplingParamsError(f"{param} {msg}, got {getattr(self, param)!r}", param)

        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", "must be an integer >= 1")
        if not _finite(self.temperature) or self.temperature < 0:
            raise bad("temperature", "must be a number >= 0 (0 means greedy)")
        if not _finite(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "must be an integer >= 0 (0 or -1 disables it)")
        if not _finite(self.min_p) or not (0.0 <= self.min_p <= 1.0):
            raise bad("min_p", "must be in [0, 1]")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "must be > 0 (1 disables it)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not (-2.0 <= value <= 2.0):
                raise bad(name, "must be in [-2, 2]")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise bad("seed", "must be an integer or None")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad("max_tokens", "must be an integer >= 1 or None")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise bad("min_tokens", "must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must not exceed max_tokens ({self.max_tokens})")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not (0 <= value <= 20)):
                raise bad(name, "must be an integer in [0, 20] or None")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def with_max_tokens(self, max_tokens: int) -> SamplingParams:
        from dataclasses import replace

        return replace(self, max_tokens=max_tokens)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
