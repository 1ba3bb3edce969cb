from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from membound.engine.detokenizer import IncrementalDetokenizer, StopTokenHit, check_stop_token
from membound.engine.tokenizer import Tokenizer
from membound.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def qwen(byte_level_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(byte_level_dir)


@pytest.fixture
def llama(llama_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(llama_dir)


def stream(tok: Tokenizer, prompt: list[int], out: list[int], params: SamplingParams | None = None):
    """Feed ``out`` one id at a time; return (detokenizer, deltas, flushed tail)."""
    detok = IncrementalDetokenizer(tok, prompt, params or SamplingParams())
    deltas = [detok.update([t]) for t in out]
    return detok, deltas, detok.flush()


def expected_text(tok: Tokenizer, prompt: list[int], out: list[int]) -> str:
    full, head = tok.decode(prompt + out), tok.decode(prompt)
    assert full.startswith(head)
    return full[len(head) :]


def random_text(rng: random.Random, corpus: list[str]) -> str:
    line = rng.choice(corpus)
    start = rng.randrange(len(line))
    return line[start : start + rng.randrange(1, 25)]


def check_every_prefix(tok: Tokenizer, corpus: list[str], seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        prompt = tok.encode(random_text(rng, corpus)) if rng.random() < 0.7 else []
        out = tok.encode(
            random_text(rng, corpus) + random_text(rng, corpus), add_special_tokens=False
        )
        want = expected_text(tok, prompt, out)
        detok = IncrementalDetokenizer(tok, prompt, SamplingParams())
        streamed = ""
        for i, token_id in enumerate(out):
            delta = detok.update([token_id])
            assert "\ufffd" not in delta
            streamed += delta
            assert streamed == detok.output_text
            assert want.startswith(streamed)  # never ahead of the final text
            so_far = expected_text(tok, prompt, out[: i + 1])
            if not so_far.endswith("\ufffd"):  # never behind once the last character is whole
                assert streamed == so_far
        streamed += detok.flush()
        assert streamed == want == detok.output_text
        assert detok.token_ids == out and not detok.finished


def test_every_prefix_byte_level(qwen: Tokenizer, tk: SimpleNamespace) -> None:
    check_every_prefix(qwen, tk.CORPUS, seed=1)


def test_every_prefix_byte_fallback(llama: Tokenizer, tk: SimpleNamespace) -> None:
    check_every_prefix(llama, tk.CORPUS, seed=2)


def random_ids(rng: random.Random, tok: Tokenizer, byte_fallback: bool) -> list[int]:
    if not byte_fallback:  # byte-level: any id sequence, valid UTF-8 or not
        return [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 20))]
    # Byte fallback decodes a run of <0x..> tokens all-or-nothing (one invalid byte turns the
    # whole run into U+FFFD), so only runs that spell whole characters have a streaming-
    # independent answer: mix random non-byte ids with encoded multi-byte characters.
    ids: list[int] = []
    while len(ids) < rng.randrange(1, 20):
        if rng.random() < 0.3:
            ids += tok.encode(rng.choice("文😀é—ア"), add_special_tokens=False)[-4:]
        else:
            ids.append(rng.choice([3, 0, 1, 2, *range(259, tok.vocab_size)]))
    return ids


@pytest.mark.parametrize("with_prompt", [False, True])
def test_random_ids_match_full_decode(qwen: Tokenizer, llama: Tokenizer, with_prompt: bool) -> None:
    rng = random.Random(3)
    for tok in (qwen, llama):
        for _ in range(100):
            prompt = tok.encode("hello world") if with_prompt else []
            out = random_ids(rng, tok, byte_fallback=tok is llama)
            detok, deltas, tail = stream(tok, prompt, out)
            assert "".join(deltas) + tail == expected_text(tok, prompt, out)


def test_multibyte_char_waits_for_its_last_token(llama: Tokenizer) -> None:
    out = llama.encode("文😀!", add_special_tokens=False)
    assert llama.convert_ids_to_tokens(out)[-8:-1] == [
        "<0xE6>", "<0x96>", "<0x87>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"
    ]  # fmt: skip
    _, deltas, _ = stream(llama, llama.encode("hello"), out)
    assert deltas[-8:] == ["", "", "文", "", "", "", "😀", "!"]


def test_leading_space_kept_after_prompt(llama: Tokenizer, qwen: Tokenizer) -> None:
    for tok in (llama, qwen):
        prompt, out = tok.encode("hello"), tok.encode(" world", add_special_tokens=False)
        if tok is llama:
            out = tok.encode("hello world", add_special_tokens=False)[1:]
        detok, deltas, tail = stream(tok, prompt, out)
        assert "".join(deltas) + tail == " world"


def test_prompt_ending_inside_a_character(qwen: Tokenizer, llama: Tokenizer) -> None:
    for tok in (qwen, llama):
        ids = tok.encode("the fox 中文分词测试")
        cuts = [i for i in range(1, len(ids)) if tok.decode(ids[:i]).endswith("\ufffd")]
        assert cuts
        for cut in cuts:  # the output completes the prompt's last character: it gets all of it
            _, deltas, tail = stream(tok, ids[:cut], ids[cut:])
            text = "".join(deltas) + tail
            assert "\ufffd" not in text and "中文分词测试".endswith(text)
            assert tok.decode(ids[:cut]).rstrip("\ufffd") + text == tok.decode(ids)


def pieces_ids(tok: Tokenizer, pieces: list[str]) -> list[int]:
    return [i for p in pieces for i in tok.encode(p, add_special_tokens=False)]


def test_stop_string_split_across_tokens(qwen: Tokenizer) -> None:
    out = pieces_ids(qwen, ["Hello", " wor", "ld", "!", " more"])
    detok = IncrementalDetokenizer(qwen, [], SamplingParams(stop=["world"]))
    deltas = [detok.update([t]) for t in out]
    assert detok.finished and detok.stop_reason == "world"
    assert detok.output_text == "Hello " == "".join(deltas)
    assert len(detok.token_ids) == len(pieces_ids(qwen, ["Hello", " wor", "ld"]))
    assert detok.update(qwen.encode("x")) == "" and detok.flush() == ""  # ignored once finished


def test_stop_string_included_and_single_token(qwen: Tokenizer) -> None:
    out = pieces_ids(qwen, ["the fox", "<|im_end|>", "tail"])
    params = SamplingParams(stop=["fox"], include_stop_str_in_output=True)
    detok, deltas, _ = stream(qwen, [], out, params)
    assert detok.output_text == "the fox" == "".join(deltas)
    params = SamplingParams(stop="!", include_stop_str_in_output=False)
    detok, deltas, _ = stream(qwen, [], pieces_ids(qwen, ["ab", "!", "cd"]), params)
    assert (detok.output_text, detok.stop_reason) == ("ab", "!")


def test_earliest_of_several_stops_wins(qwen: Tokenizer) -> None:
    out = pieces_ids(qwen, ["one two three"])
    detok, _, _ = stream(qwen, [], out, SamplingParams(stop=["three", "two", "wo t"]))
    assert (detok.output_text, detok.stop_reason) == ("one ", "two")


def test_holdback_released_when_stop_does_not_complete(qwen: Tokenizer) -> None:
    out = pieces_ids(qwen, ["say ", "wo", "w", " ok", " wor"])
    detok = IncrementalDetokenizer(qwen, [], SamplingParams(stop=["world"]))
    deltas = [detok.update([t]) for t in out]
    streamed = "".join(deltas)
    assert detok.output_text == "say wow ok wor"
    assert streamed == "say wow ok "  # " wor" may still become "world": held back
    assert detok.flush() == "wor" and detok.flush() == ""
    with pytest.raises(RuntimeError, match="after flush"):
        detok.update([1])


def test_min_tokens_delays_stop_strings(qwen: Tokenizer) -> None:
    out = pieces_ids(qwen, ["a", "!", "b", "!", "c"])
    detok, _, _ = stream(qwen, [], out, SamplingParams(stop=["!"], min_tokens=2))
    assert detok.output_text == "a!b"


def test_stop_terminated_eos_text(qwen: Tokenizer) -> None:
    eos = qwen.token_to_id("<|im_end|>")
    ids = qwen.encode("hi")
    for include, want in ((False, "hi"), (True, "hi<|im_end|>")):
        params = SamplingParams(skip_special_tokens=False, include_stop_str_in_output=include)
        detok = IncrementalDetokenizer(qwen, [], params)
        text = detok.update(ids + [eos], stop_terminated=True) + detok.flush()
        assert text == want and detok.token_ids == ids + [eos]


def test_special_tokens_skipped_or_kept(qwen: Tokenizer) -> None:
    out = pieces_ids(qwen, ["a", "<|im_start|>", "b"])
    assert "".join(stream(qwen, [], out)[1]) == "ab"
    kept = SamplingParams(skip_special_tokens=False)
    assert "".join(stream(qwen, [], out, kept)[1]) == "a<|im_start|>b"


def test_long_output_compacts_window(qwen: Tokenizer) -> None:
    out = qwen.encode("the quick brown fox 中文 😀 " * 30)
    detok, deltas, tail = stream(qwen, [], out)
    assert "".join(deltas) + tail == qwen.decode(out)
    assert len(detok._ids) < 80


def test_check_stop_token() -> None:
    eos = (2, 7)
    assert check_stop_token(2, SamplingParams(), eos, 1) == StopTokenHit(2, is_eos=True)
    assert check_stop_token(2, SamplingParams(), eos, 1).stop_reason is None  # type: ignore[union-attr]
    assert check_stop_token(2, SamplingParams(ignore_eos=True), eos, 1) is None
    hit = check_stop_token(9, SamplingParams(stop_token_ids=[9]), eos, 1)
    assert hit is not None and hit.stop_reason == 9 and not hit.is_eos
    assert check_stop_token(5, SamplingParams(stop_token_ids=[9]), eos, 1) is None
    assert check_stop_token(7, SamplingParams(min_tokens=3), eos, 3) is None
    assert check_stop_token(7, SamplingParams(min_tokens=3), eos, 4) is not None


def test_multi_token_updates_match_single_steps(qwen: Tokenizer, llama: Tokenizer) -> None:
    rng = random.Random(5)
    for tok in (qwen, llama):
        prompt = tok.encode("the fox")
        out = tok.encode(" 中文分词测试 😀🎉 hello world, the end", add_special_tokens=False)
        for stop in (None, ["hello w", "😀🎉 h"]):
            params = SamplingParams(stop=stop)
            single, single_deltas, single_tail = stream(tok, prompt, out, params)
            detok, streamed, i = IncrementalDetokenizer(tok, prompt, params), "", 0
            while i < len(out):
                step = rng.randrange(1, 5)
                streamed += detok.update(out[i : i + step])
                i += step
            streamed += detok.flush()
            assert streamed == detok.output_text == single.output_text
            assert "".join(single_deltas) + single_tail == single.output_text
            assert detok.stop_reason == single.stop_reason
