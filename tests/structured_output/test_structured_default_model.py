"""The bundled default model (a small trained model, not tuned for JSON) under the grammar
mask: every finished reply parses and validates; a reply cut by max_tokens says 'length'."""

from __future__ import annotations

import json

import pytest

from membound.sampling_params import SamplingParams
from membound.sampling_params import StructuredOutputsParams as SO

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Oslo"]},
    },
    "required": ["name", "age", "city"],
}


def test_default_model_json_under_the_mask() -> None:
    from membound.entrypoints.llm import LLM

    llm = LLM(None)
    for temperature in (0.0, 1.5):
        params = SamplingParams(
            temperature=temperature, seed=0, n=4, max_tokens=96, structured_outputs=SO(json=SCHEMA)
        )
        (out,) = llm.generate(["Write a person as JSON:"], params, use_tqdm=False)
        for c in out.outputs:
            assert c.finish_reason == "stop", c.text
            jsonschema.validate(json.loads(c.text), SCHEMA)
    # json_object has no bound: a finished reply is an object, a cut one is marked 'length'
    params = SamplingParams(
        temperature=1.0, seed=0, n=4, max_tokens=48, structured_outputs=SO(json_object=True)
    )
    (out,) = llm.generate(["Write JSON:"], params, use_tqdm=False)
    for c in out.outputs:
        assert c.text.startswith("{")
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)
        else:
            assert c.finish_reason == "length" and len(c.token_ids) == 48
