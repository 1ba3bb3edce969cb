"""The offline API as a vLLM user would use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from membound import LLM, RequestOutput, SamplingParams
from membound.core.scheduler import RequestRejectedError


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(str(tiny_llama), max_model_len=128, block_size=4)


def test_prompt_forms_and_order(llm: LLM) -> None:
    tok = llm.get_tokenizer()
    assert tok is not None
    ids = tok.encode("def add(a, b):")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = llm.generate(
        ["def add(a, b):", ids, {"prompt_token_ids": ids}, {"prompt": "def add(a, b):"}], params,
        use_tqdm=False,
    )
    assert all(isinstance(o, RequestOutput) for o in outs)
    assert [o.prompt_token_ids for o in outs] == [ids] * 4
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 1
    assert outs[0].prompt == "def add(a, b):"
    text = outs[0].outputs[0].text
    assert text == tok.decode(outs[0].outputs[0].token_ids)
    assert outs[0].outputs[0].finish_reason == "length"
    single = llm.generate(ids, params, use_tqdm=False)
    assert len(single) == 1 and single[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_per_prompt_params_and_n(llm: LLM) -> None:
    p1 = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    p2 = SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=5, ignore_eos=True)
    a, b = llm.generate(["import os", "class Foo:"], [p1, p2], use_tqdm=False)
    assert len(a.outputs) == 1 and len(a.outputs[0].token_ids) == 3
    assert [c.index for c in b.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 5 for c in b.outputs)
    again = llm.generate(["class Foo:"], p2, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in b.outputs]
    with pytest.raises(ValueError, match="2 SamplingParams for 1 prompts"):
        llm.generate(["x"], [p1, p2])


def test_seeded_sampling_reproduces_alone_and_in_batch(llm: LLM) -> None:
    seeded = SamplingParams(temperature=0.9, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    other = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    alone = llm.generate(["for i in"], seeded, use_tqdm=False)[0].outputs[0].token_ids
    batch = llm.generate(["import sys", "for i in", "x = 1"], [other, seeded, other],
                         use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone


def test_logprobs_and_prompt_logprobs(llm: LLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=3, prompt_logprobs=2,
                            ignore_eos=True)
    out = llm.generate(["def f(x):"], params, use_tqdm=False)[0]
    comp = out.outputs[0]
    assert comp.logprobs is not None and len(comp.logprobs) == 4
    for tok, lps in zip(comp.token_ids, comp.logprobs):
        assert tok in lps and max(lps.values()) == lps[tok]  # greedy picks the best
        assert len(lps) >= 3
    assert comp.cumulative_logprob == pytest.approx(
        sum(lp[t] for t, lp in zip(comp.token_ids, comp.logprobs)))
    plp = out.prompt_logprobs
    assert plp is not None and len(plp) == len(out.prompt_token_ids) and plp[0] is None
    for tok, entry in zip(out.prompt_token_ids[1:], plp[1:]):
        assert entry is not None and tok in entry and all(v <= 0 for v in entry.values())


def test_stop_strings_cut_text(llm: LLM) -> None:
    base = llm.generate(["import os"], SamplingParams(temperature=0, max_tokens=20,
                        ignore_eos=True), use_tqdm=False)[0].outputs[0]
    text = base.text
    assert len(text) > 6
    stop = text[3:6]  # lands inside the text, likely across a token boundary
    out = llm.generate(["import os"], SamplingParams(temperature=0, max_tokens=20, stop=[stop],
                       ignore_eos=True), use_tqdm=False)[0].outputs[0]
    assert out.text == text[: text.index(stop)]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    kept = llm.generate(["import os"], SamplingParams(temperature=0, max_tokens=20, stop=[stop],
                        include_stop_str_in_output=True, ignore_eos=True), use_tqdm=False)
    assert kept[0].outputs[0].text == text[: text.index(stop) + len(stop)]
    # the engine released the request: every block is free again
    eng = llm.llm_engine
    assert eng.kv_manager.pool.num_free_blocks == eng.kv_manager.num_blocks


def test_stop_token_ids(llm: LLM) -> None:
    base = llm.generate(["x = "], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0]
    stop_tok = base.token_ids[3]
    out = llm.generate(["x = "], SamplingParams(temperature=0, max_tokens=10,
                       stop_token_ids=[stop_tok], ignore_eos=True), use_tqdm=False)[0].outputs[0]
    first = base.token_ids.index(stop_tok)
    assert out.token_ids == base.token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_tok


def test_chat_applies_template(llm: LLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    out = llm.chat([{"role": "user", "content": "hi"}], params, use_tqdm=False)[0]
    tok = llm.get_tokenizer()
    assert tok is not None
    rendered = tok.decode(out.prompt_token_ids, skip_special_tokens=False)
    assert rendered.startswith("<|im_start|>user\nhi<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_bad_requests_add_nothing(llm: LLM) -> None:
    eng = llm.llm_engine
    with pytest.raises(RequestRejectedError, match="maximum context length is 128 tokens"):
        llm.generate(["ok", list(range(5, 200))], SamplingParams(max_tokens=2))
    with pytest.raises(RequestRejectedError, match="token ids must be integers"):
        llm.generate([[1, 2, 100000]])
    with pytest.raises(TypeError, match="prompt 0 is a float"):
        llm.generate([1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="unknown option"):
        LLM(None, max_model_length=5)  # type: ignore[call-arg]
    assert not eng.has_unfinished_requests()
    assert eng.kv_manager.pool.num_free_blocks == eng.kv_manager.num_blocks


def test_eos_from_tokenizer_stops(llm: LLM) -> None:
    eng = llm.llm_engine
    assert 2 in eng.eos_token_ids
