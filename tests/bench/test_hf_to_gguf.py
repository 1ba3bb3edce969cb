"""benchmarks/hf_to_gguf.py: a tokenizer-less HF Llama checkpoint written as GGUF loads in
membound with the same weights (q/k rows permuted as llama.cpp's converter does, names
mapped), and inputs it cannot convert are refused by name before anything is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("gguf")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def h2g():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("hf_to_gguf", BENCH / "hf_to_gguf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=320,
                      max_position_embeddings=128, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def _greedy(model: str, **kw):  # type: ignore[no-untyped-def]
    from membound import LLM, SamplingParams

    llm = LLM(model, dtype="float32", num_kv_blocks=16, max_model_len=64, **kw)
    sp = SamplingParams(temperature=0, max_tokens=6, logprobs=3, ignore_eos=True)
    prompt = {"prompt_token_ids": [5, 9, 40, 77, 3, 120]}
    return llm.generate([prompt], sp, use_tqdm=False)[0].outputs[0]


def test_gguf_gives_the_checkpoints_logits(h2g, hf_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.gguf"
    h2g.write_gguf(hf_folder, out, "F32")
    ref, got = _greedy(str(hf_folder)), _greedy(str(out))
    assert got.token_ids == ref.token_ids
    for a, b in zip(ref.logprobs, got.logprobs):
        assert a.keys() == b.keys()
        assert all(abs(a[t] - b[t]) < 1e-4 for t in a)
    from membound.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(out)  # the placeholder vocabulary loads and detokenizes
    assert tok.decode([300]) == "<|t300|>"


def test_f16_halves_the_matrices(h2g, hf_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import gguf

    h2g.write_gguf(hf_folder, tmp_path / "m.gguf", "F16")
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["output.weight"] == "F16"
    assert kinds["blk.0.attn_norm.weight"] == "F32"


def test_refusals(h2g, hf_folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x.gguf"
    with pytest.raises(ValueError, match="--type Q4_0"):
        h2g.write_gguf(hf_folder, out, "Q4_0")
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((hf_folder / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not one this writer handles"):
        h2g.write_gguf(other, out)
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no .safetensors"):
        h2g.write_gguf(other, out)
    (other / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="has a tokenizer: use llama.cpp's convert_hf_to_gguf"):
        h2g.write_gguf(other, out)
    with pytest.raises(ValueError, match="vocab_size 100"):
        h2g.placeholder_vocab(100)
    assert not out.exists()
