from __future__ import annotations

from typing import Any

import pytest

from membound.sampling_params import SamplingParams, SamplingParamsError


def test_defaults_and_normalisation() -> None:
    p = SamplingParams(stop="###", top_k=-1, stop_token_ids=[5])
    assert p.stop == ("###",) and p.top_k == 0 and p.stop_token_ids == (5,)
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy


@pytest.mark.parametrize("kw,param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"logprobs": 50}, "logprobs"),
    ({"stop": [""]}, "stop"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"temperature": float("nan")}, "temperature"),
])
def test_invalid_values_name_the_parameter(kw: dict[str, Any], param: str) -> None:
    with pytest.raises(SamplingParamsError) as e:
        SamplingParams(**kw)
    assert e.value.param == param and param in str(e.value)


def test_token_controls_are_validated_and_normalized() -> None:
    from membound.sampling_params import StructuredOutputsParams

    p = SamplingParams(logit_bias={"7": 2, 3: -100}, allowed_token_ids=[4, 5], bad_words=["x"])
    assert p.logit_bias == {7: 2.0, 3: -100.0} and p.allowed_token_ids == (4, 5)
    for kwargs, param in [({"logit_bias": {"a": 1}}, "logit_bias"),
                          ({"logit_bias": {1: 101}}, "logit_bias"),
                          ({"logit_bias": {-1: 1}}, "logit_bias"),
                          ({"allowed_token_ids": []}, "allowed_token_ids"),
                          ({"allowed_token_ids": [True]}, "allowed_token_ids"),
                          ({"bad_words": [" "]}, "bad_words"),
                          ({"structured_outputs": {"json": {}}}, "structured_outputs")]:
        with pytest.raises(SamplingParamsError) as e:
            SamplingParams(**kwargs)
        assert e.value.param == param
    so = StructuredOutputsParams(json='{"type": "object"}')
    assert so.json == {"type": "object"}
    assert so.cache_key() == StructuredOutputsParams(json={"type": "object"}).cache_key()
    for kwargs in ({}, {"regex": "a", "grammar": "root ::= \"a\""}, {"choice": []},
                   {"json": "{not json"}, {"regex": ""}):
        with pytest.raises(SamplingParamsError):
            StructuredOutputsParams(**kwargs)
    with pytest.raises(SamplingParamsError, match="ignore_eos"):
        SamplingParams(ignore_eos=True, structured_outputs=so)
