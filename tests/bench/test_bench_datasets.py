"""Random prompts and JSONL / ShareGPT datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from membound.bench.datasets import load_dataset, random_requests, token_id_prompts
from membound.engine.tokenizer import Tokenizer


def test_random_requests_fixed_and_ranged_lengths() -> None:
    reqs = random_requests(5, 12, 7, 320, seed=3)
    assert [len(r.prompt) for r in reqs] == [12] * 5 and {r.output_len for r in reqs} == {7}
    assert all(10 <= t < 320 for r in reqs for t in r.prompt)
    assert reqs == random_requests(5, 12, 7, 320, seed=3)  # seeded
    ranged = random_requests(200, 100, 50, 320, seed=0, range_ratio=0.5)
    assert all(50 <= r.prompt_len <= 150 and 25 <= r.output_len <= 75 for r in ranged)
    assert len({r.prompt_len for r in ranged}) > 10
    with pytest.raises(ValueError, match="range-ratio"):
        random_requests(1, 8, 8, 320, range_ratio=1.5)


def test_random_text_with_a_tokenizer(tiny_llama: Path) -> None:
    tok = Tokenizer.from_pretrained(tiny_llama)
    reqs = random_requests(4, 32, 4, len(tok), tokenizer=tok)
    for r in reqs:
        assert isinstance(r.prompt, str) and 24 <= r.prompt_len <= 40  # about 32
        assert r.prompt_len == len(tok.encode(r.prompt, add_special_tokens=False))


def test_jsonl_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [
        {"prompt": [5, 6, 7], "output_len": 4},
        {"prompt_token_ids": [9, 9], "max_tokens": 2},
        {"nothing": 1},
        {"prompt": "text", "output_len": 3},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    reqs = load_dataset(str(path), 5)
    assert [(r.prompt, r.prompt_len, r.output_len) for r in reqs[:3]] == [
        ([5, 6, 7], 3, 4),
        ([9, 9], 2, 2),
        ("text", None, 3),
    ]
    assert reqs[3] == reqs[0]  # too few records: reused in order
    assert {r.output_len for r in load_dataset(str(path), 3, output_len=9)} == {9}
    with pytest.raises(ValueError, match="tokenizer"):
        token_id_prompts(reqs, None)


def test_sharegpt_dataset(tmp_path: Path, tiny_llama: Path) -> None:
    tok = Tokenizer.from_pretrained(tiny_llama)
    data = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "Hello there"},
                {"from": "gpt", "value": "Hi! How can I help?"},
            ],
        },
        {"id": "b", "conversations": [{"from": "human", "value": "only a question"}]},
        {
            "id": "c",
            "conversation": [
                {"role": "user", "content": "Why?"},
                {"role": "assistant", "content": "Because."},
            ],
        },
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    reqs = load_dataset(str(path), 2, tokenizer=tok)
    assert [r.prompt for r in reqs] == ["Hello there", "Why?"]
    assert reqs[0].output_len == len(tok.encode("Hi! How can I help?", add_special_tokens=False))
    assert reqs[0].prompt_len == len(tok.encode("Hello there"))
    with pytest.raises(ValueError, match="tokenizer or --output-len"):
        load_dataset(str(path), 2)
    assert load_dataset(str(path), 1, output_len=5)[0].output_len == 5
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "missing.jsonl"), 1)
