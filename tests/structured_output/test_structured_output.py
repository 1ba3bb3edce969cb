"""Structured outputs through the Python API (SamplingParams.structured_outputs on LLM), the
grammar compiler's errors, and the one intake's rules."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from membound.engine.intake import InvalidRequestError
from membound.sampling_params import SamplingParams, SamplingParamsError
from membound.sampling_params import StructuredOutputsParams as SO

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "name": {"type": "string", "minLength": 1, "maxLength": 5},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["id", "name", "kind"],
}


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> Iterator[object]:
    from membound.entrypoints.llm import LLM

    yield LLM(str(tiny_llama), max_model_len=256, block_size=4)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 2.0])
def test_llm_json_schema_always_validates(llm: object, temperature: float) -> None:
    params = SamplingParams(
        temperature=temperature, seed=11, n=3, max_tokens=100, structured_outputs=SO(json=SCHEMA)
    )
    (out,) = llm.generate(["x"], params, use_tqdm=False)  # type: ignore[attr-defined]
    for c in out.outputs:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), SCHEMA)


def test_llm_regex_choice_grammar_in_one_batch(llm: object) -> None:
    specs = [
        SO(regex=r"\d{3}-[a-c]{2}"),
        SO(choice=["alpha", "beta"]),
        SO(grammar='root ::= "<" ("x" | "y")+ ">"'),
        None,
    ]
    params = [
        SamplingParams(
            temperature=1.0, seed=i, max_tokens=40, structured_outputs=s, ignore_eos=s is None
        )
        for i, s in enumerate(specs)
    ]
    outs = llm.generate(["a", "b", "c", "d"], params, use_tqdm=False)  # type: ignore[attr-defined]
    texts = [o.outputs[0].text for o in outs]
    assert re.fullmatch(r"\d{3}-[a-c]{2}", texts[0])
    assert texts[1] in ("alpha", "beta")
    assert re.fullmatch(r"<[xy]+>", texts[2]) or outs[2].outputs[0].finish_reason == "length"
    assert outs[3].outputs[0].finish_reason == "length"  # the unconstrained row is unaffected


def test_bad_specs_are_refused_by_name(llm: object) -> None:
    engine = llm.llm_engine  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequestError, match="regex could not be compiled") as e:
        engine.process_request("x", SamplingParams(structured_outputs=SO(regex="(a")))
    assert e.value.param == "regex"
    with pytest.raises(InvalidRequestError, match="JSON schema") as e:
        engine.process_request("x", SamplingParams(structured_outputs=SO(json={"type": 5})))
    assert e.value.param == "json"
    with pytest.raises(SamplingParamsError, match="exactly one"):
        SO(regex="a", choice=["a"])
    with pytest.raises(SamplingParamsError, match="min_tokens"):
        SamplingParams(min_tokens=1, structured_outputs=SO(regex="a"))


def test_intake_rules(llm: object) -> None:
    engine = llm.llm_engine  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequestError, match="maximum context length") as e:
        engine.process_request([1] * 10, SamplingParams(max_tokens=250))
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.process_request("", SamplingParams())
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        engine.process_request("x", SamplingParams(logit_bias={10**6: 1.0}))
    ok = engine.process_request([1, 2, 3], SamplingParams(max_tokens=None, bad_words=["ab"]))
    assert ok.params.max_tokens == 253 and ok.params.bad_words_token_ids


def test_length_as_pattern_rewrites_only_bounded_strings() -> None:
    from membound.structured_output.grammar import length_as_pattern

    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "maxLength": 4},
            "b": {"type": "string", "pattern": "x+"},
            "c": {"type": "array", "items": {"type": "string", "minLength": 2}},
        },
    }
    out = length_as_pattern(schema)
    assert out["properties"]["a"] == {"type": "string", "pattern": "^.{0,4}$"}
    assert out["properties"]["b"] == {"type": "string", "pattern": "x+"}
    assert out["properties"]["c"]["items"] == {"type": "string", "pattern": "^.{2,}$"}
    assert schema["properties"]["a"] == {"type": "string", "maxLength": 4}  # not modified
