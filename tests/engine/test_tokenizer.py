from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from membound.engine.chat_template import ChatTemplateError
from membound.engine.tokenizer import Tokenizer, TokenizerError

TEXTS = ["hello world", "中文分词测试：你好", "emoji 😀🎉 done", "café naïve", "the fox"]


def test_byte_level_special_tokens_and_eos_union(byte_level_dir: Path, tk: SimpleNamespace) -> None:
    tok = Tokenizer.from_pretrained(str(byte_level_dir))
    im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_ids == (im_end, eot)  # tokenizer's eos first, then generation_config
    assert tok.bos_token is None and tok.bos_token_id is None
    assert tok.pad_token_id == eot
    assert {im_end, eot, tok.token_to_id("<|im_start|>")} <= tok.all_special_ids
    assert tok.vocab_size == len(tok) == 420
    assert tok.chat_template == tk.CHATML_TEMPLATE


def test_llama_config_tokens_are_registered(llama_dir: Path) -> None:
    tok = Tokenizer.from_pretrained(llama_dir)
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token) == ("<s>", 1, "</s>")
    eot = tok.token_to_id("<|eot_id|>")
    assert eot == tok.vocab_size - 1  # declared by added_tokens_decoder at that exact id
    assert tok.eos_token_ids == (2, eot)
    assert {0, 1, 2, eot} <= tok.all_special_ids
    ids = tok.encode("<|eot_id|>")
    assert ids[0] == 1 and eot in ids  # BOS from the post-processor, special token not split
    assert tok.encode("hello", add_special_tokens=False)[0] != 1
    assert tok.decode([1, eot] + tok.encode("hello", add_special_tokens=False)) == "hello"


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip(byte_level_dir: Path, llama_dir: Path, text: str) -> None:
    for folder in (byte_level_dir, llama_dir):
        tok = Tokenizer.from_pretrained(folder)
        assert tok.decode(tok.encode(text)) == text


def test_byte_fallback_tokens(llama_dir: Path) -> None:
    tok = Tokenizer.from_pretrained(llama_dir)
    ids = tok.encode("文", add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[-3:] == ["<0xE6>", "<0x96>", "<0x87>"]
    assert tok.decode(ids) == "文"
    assert tok.decode(ids[:-1]).endswith("\ufffd")


def test_matches_transformers_oracle(byte_level_dir: Path, llama_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    rng = random.Random(0)
    for folder in (byte_level_dir, llama_dir):
        tok = Tokenizer.from_pretrained(folder)
        hf = transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"), clean_up_tokenization_spaces=False
        )
        base = hf.backend_tokenizer.get_vocab_size(with_added_tokens=True)
        for text in TEXTS:
            assert tok.encode(text) == hf.encode(text)
        for _ in range(50):
            ids = [rng.randrange(base) for _ in range(rng.randrange(1, 12))]
            for skip in (True, False):
                assert tok.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip)
            assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerError, match="no tokenizer.json.*tokenizer.model.*save_pretrained"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="not a directory"):
        Tokenizer.from_pretrained(tmp_path / "nope")


def test_bad_files_name_the_problem(tmp_path: Path, tk: SimpleNamespace) -> None:
    backend = tk.build_byte_level()
    folder = tk.save_folder(tmp_path / "a", backend)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_pretrained(folder)
    folder = tk.save_folder(tmp_path / "b", backend, generation_config={"eos_token_id": "x"})
    with pytest.raises(TokenizerError, match="eos_token_id"):
        Tokenizer.from_pretrained(folder)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match="could not be parsed"):
        Tokenizer.from_pretrained(tmp_path / "c")


def test_added_token_id_mismatch_is_an_error(tmp_path: Path, tk: SimpleNamespace) -> None:
    backend = tk.build_llama(metaspace=False)
    config = tk.llama_config(backend)
    config["added_tokens_decoder"] = {"999": {"content": "<|x|>", "special": True}}
    folder = tk.save_folder(tmp_path, backend, tokenizer_config=config)
    with pytest.raises(TokenizerError, match=r"'<\|x\|>' with id 999.*disagree"):
        Tokenizer.from_pretrained(folder)


def test_special_tokens_map_fills_gaps_and_int_eos(tmp_path: Path, tk: SimpleNamespace) -> None:
    folder = tk.save_folder(
        tmp_path,
        tk.build_byte_level(),
        tokenizer_config={"eos_token": "<|im_end|>"},
        special_tokens_map={
            "eos_token": "<|endoftext|>",
            "pad_token": {"content": "<|endoftext|>"},
        },
        generation_config={"eos_token_id": 0},
    )
    tok = Tokenizer.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>"  # tokenizer_config wins
    assert tok.pad_token_id == 0
    assert tok.eos_token_ids == (2, 0)


def test_bad_inputs(byte_level_dir: Path) -> None:
    tok = Tokenizer.from_pretrained(byte_level_dir)
    with pytest.raises(TypeError, match="takes a str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="non-negative"):
        tok.decode([-1])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.convert_ids_to_tokens([10_000])
    assert tok.decode([10_000, 72]) == tok.decode([72])  # padded-vocab ids decode to nothing


def test_chat_template_sources(tmp_path: Path, tk: SimpleNamespace) -> None:
    backend = tk.build_byte_level()
    folder = tk.save_folder(
        tmp_path / "a",
        backend,
        tokenizer_config={"chat_template": tk.CHATML_TEMPLATE},
        chat_template_jinja="{{ 'from jinja file' }}",
    )
    msgs = [{"role": "user", "content": "hi"}]
    assert Tokenizer.from_pretrained(folder).apply_chat_template(msgs) == "from jinja file"
    named = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]
    folder = tk.save_folder(tmp_path / "b", backend, tokenizer_config={"chat_template": named})
    tok = Tokenizer.from_pretrained(folder)
    assert tok.chat_template == "D"
    assert tok.apply_chat_template(msgs) == "D"
    assert tok.apply_chat_template(msgs, tools=[{"name": "f"}]) == "T"
    assert tok.apply_chat_template(msgs, chat_template="tool_use") == "T"
    assert tok.apply_chat_template(msgs, chat_template="{{ messages[0].content }}!") == "hi!"


def test_no_chat_template_error(tmp_path: Path, tk: SimpleNamespace) -> None:
    tok = Tokenizer.from_pretrained(tk.save_folder(tmp_path, tk.build_byte_level()))
    assert tok.chat_template is None
    with pytest.raises(ChatTemplateError, match="no chat template.*chat_template="):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_encode_chat_never_doubles_bos(llama_dir: Path, byte_level_dir: Path) -> None:
    msgs = [{"role": "user", "content": "hello"}]
    tok = Tokenizer.from_pretrained(llama_dir)
    text = tok.apply_chat_template(msgs)
    assert text.startswith("<s><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>")
    ids = tok.encode_chat(msgs)
    assert ids.count(1) == 1 and ids[0] == 1
    assert ids == tok.encode(text, add_special_tokens=False)
    qwen = Tokenizer.from_pretrained(byte_level_dir)
    ids = qwen.encode_chat(msgs)
    assert qwen.decode(ids, skip_special_tokens=False) == qwen.apply_chat_template(msgs)


def test_tokenizer_json_is_not_modified(tmp_path: Path, tk: SimpleNamespace) -> None:
    backend = tk.build_llama(metaspace=True)
    folder = tk.save_folder(tmp_path, backend, tokenizer_config=tk.llama_config(backend))
    before = json.loads((folder / "tokenizer.json").read_text())
    Tokenizer.from_pretrained(folder)
    assert json.loads((folder / "tokenizer.json").read_text()) == before


def test_named_special_tokens_are_registered(tk: SimpleNamespace) -> None:
    backend = tk.build_byte_level()
    hello = backend.token_to_id("hell")  # an ordinary vocabulary entry
    config = {"bos_token": "hell", "eos_token": "<|new_eos|>"}
    tok = Tokenizer(backend, tokenizer_config=config)
    assert tok.bos_token_id == hello and hello in tok.all_special_ids
    assert tok.eos_token_ids == (420,) and tok.vocab_size == 421  # added at the next free id
    assert tok.encode("<|new_eos|>") == [420]
    assert tok.decode(tok.encode("hello")) == "o"  # 'hell' is special now: skipped


def test_processor_and_named_template_files(tmp_path: Path, tk: SimpleNamespace) -> None:
    folder = tk.save_folder(tmp_path, tk.build_byte_level(), chat_template={"chat_template": "P"})
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "rag.jinja").write_text("R")
    tok = Tokenizer.from_pretrained(folder)
    assert tok.chat_templates == {"default": "P", "rag": "R"}
    assert tok.apply_chat_template([], chat_template="rag") == "R"
