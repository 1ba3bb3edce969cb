"""Compile StructuredOutputsParams to xgrammar grammars, with a cache and clear errors."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from membound.sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    import xgrammar

_CACHE_SIZE = 256


class GrammarError(ValueError):
    """A structured-output spec the grammar engine cannot compile; the message says why."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def import_xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError:
        raise GrammarError(
            "structured outputs need the xgrammar package; pip install 'membound[structured]'"
        ) from None
    return xgrammar


class GrammarCompiler:
    """One per engine: the tokenizer's vocabulary as xgrammar sees it, and compiled grammars
    by spec (LRU). ``tokenizer_json`` is the tokenizer serialized (``Tokenizer.to_json()``);
    ``vocab_size`` is the model's (the bitmask width), which may exceed the tokenizer's;
    ``stop_token_ids`` are the engine's EOS ids, the only tokens allowed once a grammar is
    complete. Thread-safe: the server compiles on worker threads while the engine thread
    makes matchers; a compile runs outside the lock, so a slow one never stalls a cache hit."""

    def __init__(self, tokenizer_json: str, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        self._tokenizer_json = tokenizer_json
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(stop_token_ids)
        self._compiler: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._init_lock = threading.Lock()

    def _xgr_compiler(self) -> Any:
        with self._init_lock:
            if self._compiler is None:
                self._compiler = self._build_compiler()
            return self._compiler

    def _build_compiler(self) -> Any:
        """xgrammar reads the vocabulary through a transformers fast tokenizer (its own
        dependency) to detect the byte-level / SentencePiece encoding."""
        xgr = import_xgrammar()
        from tokenizers import Tokenizer as _Backend
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_object=_Backend.from_str(self._tokenizer_json))
        info = xgr.TokenizerInfo.from_huggingface(
            hf, vocab_size=self.vocab_size, stop_token_ids=list(self.stop_token_ids) or None
        )
        return xgr.GrammarCompiler(info, max_threads=1)

    def compile(self, spec: StructuredOutputsParams) -> xgrammar.CompiledGrammar:
        """The compiled grammar of ``spec``; GrammarError names what could not compile."""
        key = spec.cache_key()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiler = self._xgr_compiler()
        try:
            compiled = _compile(compiler, spec)
        except GrammarError:
            raise
        except Exception as e:  # xgrammar raises RuntimeError / ValueError with a reason
            kind, param = _kind(spec)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GrammarError(
                f"the {kind} could not be compiled into a grammar: {reason}", param
            ) from None
        with self._cache_lock:
            self._cache[key] = compiled
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, spec: StructuredOutputsParams) -> Any:
        return import_xgrammar().GrammarMatcher(self.compile(spec))


def _kind(spec: StructuredOutputsParams) -> tuple[str, str]:
    if spec.json is not None:
        return "JSON schema", "json"
    if spec.regex is not None:
        return "regex", "regex"
    if spec.grammar is not None:
        return "grammar", "grammar"
    if spec.choice is not None:
        return "choice list", "choice"
    return "JSON object grammar", "json_object"


def _compile(compiler: Any, spec: StructuredOutputsParams) -> Any:
    if spec.json is not None:
        schema = spec.json
        if not isinstance(schema, dict):
            raise GrammarError("the JSON schema must be an object", "json")
        # no free whitespace: a model cannot pad forever between tokens
        return compiler.compile_json_schema(
            json.dumps(length_as_pattern(schema)), any_whitespace=False, strict_mode=spec.strict
        )
    if spec.json_object:
        return compiler.compile_json_schema(
            json.dumps({"type": "object"}), any_whitespace=False, strict_mode=False
        )
    if spec.regex is not None:
        return compiler.compile_regex(spec.regex)
    if spec.choice is not None:
        return compiler.compile_grammar(
            "root ::= " + " | ".join(json.dumps(c) for c in spec.choice)
        )
    assert spec.grammar is not None
    return compiler.compile_grammar(spec.grammar)


def length_as_pattern(schema: Any) -> Any:
    """A copy of ``schema`` whose length-bounded strings use an equivalent ``pattern``.

    xgrammar (0.2.9) compiles ``minLength``/``maxLength`` strings to a character class that
    lets raw control characters (U+0000-U+001F) through, which JSON forbids inside strings;
    its regex path for ``pattern`` excludes them. ``^.{min,max}$`` counts characters as the
    length keywords do."""
    if isinstance(schema, list):
        return [length_as_pattern(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: length_as_pattern(v) for k, v in schema.items()}
    bounded = "minLength" in out or "maxLength" in out
    if out.get("type") == "string" and bounded and "pattern" not in out and "format" not in out:
        low = int(out.pop("minLength", 0))
        high = out.pop("maxLength", None)
        out["pattern"] = f"^.{{{low},{'' if high is None else int(high)}}}$"
    return out
