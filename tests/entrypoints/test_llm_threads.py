"""LLM from several threads: calls are serialised, each gets exactly its own answers; an
interrupted call leaves the engine usable."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from membound import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(str(tiny_llama), max_model_len=128, block_size=4)


def _texts(llm: LLM, prompts: list[str]) -> list[str]:
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    return [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]


def test_generate_from_threads_matches_sequential(llm: LLM) -> None:
    batches = [[f"thread {t} prompt {i}" for i in range(3)] for t in range(4)]
    expected = [_texts(llm, b) for b in batches]
    results: list[list[str] | BaseException | None] = [None] * len(batches)
    start = threading.Barrier(len(batches))

    def work(t: int) -> None:
        start.wait(timeout=30)
        try:
            results[t] = _texts(llm, batches[t])
        except BaseException as e:  # noqa: BLE001 - reported below
            results[t] = e

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(batches))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert results == expected
    assert not llm.llm_engine.has_unfinished_requests()


def test_interrupted_generate_leaves_engine_usable(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _texts(llm, ["after the interrupt"])
    engine = llm.llm_engine
    real_step = engine.step
    calls = 0

    def interrupting_step() -> list:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(engine, "step", interrupting_step)
    with pytest.raises(KeyboardInterrupt):
        _texts(llm, ["interrupted one", "interrupted two"])
    monkeypatch.undo()
    assert not engine.has_unfinished_requests()
    assert _texts(llm, ["after the interrupt"]) == expected
