"""The bundled default model (src/membound/assets/default_model): it loads, it matches
transformers, it writes Python, and its reported held-out perplexity is reproducible."""

from __future__ import annotations

import hashlib
import json
import keyword
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import membound
from membound.config import ModelConfig
from membound.layers.attention.metadata import build_attention_metadata
from membound.worker.weight_loader import load_model

ASSET = Path(membound.__file__).parent / "assets" / "default_model"
FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "training_curve.png",
    "metrics.json",
    "heldout.txt",
)
SOURCE = '''import os


class Cache(dict):
    """A dict that remembers\tthings."""

    def get_or_set(self, key, factory=None):
        if key not in self:
            self[key] = factory() if factory else None  # café ✓
        return self[key]
'''


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return ModelConfig.from_hf(ASSET)


@pytest.fixture(scope="module")
def model(config: ModelConfig) -> torch.nn.Module:
    return load_model(config, str(ASSET), dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(ASSET, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ASSET / "tokenizer.json"))


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((ASSET / "metrics.json").read_text(encoding="utf-8"))


def membound_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, T] -> logits [B, T, vocab], no KV cache (every sequence attends causally)."""
    batch, seq_len = ids.shape
    md = build_attention_metadata(
        query_lens=[seq_len] * batch,
        seq_lens=[seq_len] * batch,
        block_tables=None,
        block_size=16,
        device=torch.device("cpu"),
    )
    positions = torch.arange(seq_len).repeat(batch)
    with torch.no_grad():
        hidden = model(ids.flatten(), positions, None, md)
        return model.compute_logits(hidden).view(batch, seq_len, -1)


def greedy(step_logits, prompt: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(step_logits(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_files_exist_and_fit_the_size_budget() -> None:
    missing = [f for f in FILES if not (ASSET / f).is_file()]
    assert not missing, f"missing from {ASSET}: {missing}"
    total = sum(p.stat().st_size for p in ASSET.iterdir() if p.is_file())
    assert total < 30_000_000, f"default model folder is {total / 1e6:.1f} MB"


def test_config_loads(config: ModelConfig) -> None:
    assert config.architecture == "LlamaForCausalLM"
    assert config.vocab_size == 8192
    assert config.tie_word_embeddings
    assert config.torch_dtype == "float32"
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert 0 in config.eos_token_ids and 2 in config.eos_token_ids
    readme = (ASSET / "README.md").read_text(encoding="utf-8")
    assert "training_curve.png" in readme


def test_tokenizer_round_trips_python(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert tokenizer.get_vocab_size() == 8192
    for i, special in enumerate(("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
        assert tokenizer.token_to_id(special) == i
    ids = tokenizer.encode(SOURCE).ids
    assert len(ids) < len(SOURCE) / 2  # BPE learned Python: well under 2 chars per token
    assert tokenizer.decode(ids, skip_special_tokens=False) == SOURCE
    assert tokenizer.encode("x<|endoftext|>y").ids[1] == 0


def test_transformers_tokenizer_and_chat_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(ASSET)
    assert tok.eos_token == "<|endoftext|>"
    assert tok(SOURCE)["input_ids"] == tokenizer.encode(SOURCE).ids
    assert tok.decode(tok(SOURCE)["input_ids"]) == SOURCE
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "help('def')"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhelp('def')<|im_end|>\n<|im_start|>assistant\n"


def test_logits_match_transformers(model, hf_model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = torch.tensor([tokenizer.encode(SOURCE).ids[:64]])
    with torch.no_grad():
        theirs = hf_model(ids).logits
    ours = membound_logits(model, ids)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4


def test_greedy_matches_transformers(model, hf_model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = tokenizer.encode("import os\n\n\ndef main(argv):\n").ids

    def hf_logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return hf_model(ids).logits

    ours = greedy(lambda ids: membound_logits(model, ids), prompt, 32)
    theirs = greedy(hf_logits, prompt, 32)
    assert ours == theirs


PYTHON_MARKS = (
    "(",
    ")",
    ":",
    "=",
    ".",
    ",",
    "#",
    "self",
    "return",
    "def ",
    "import",
    "from ",
    "if ",
)
PYTHON_WORDS = frozenset(keyword.kwlist) | {"self", "cls"}


def sample(model, prompt: list[int], n: int, seed: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Temperature 0.7, top-k 40, seeded: a tiny model's greedy output tends to loop."""
    gen = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    for _ in range(n):
        logits = membound_logits(model, torch.tensor([ids]))[0, -1] / 0.7
        top, idx = logits.topk(40)
        ids.append(int(idx[torch.multinomial(top.softmax(-1), 1, generator=gen)]))
    return ids[len(prompt) :]


def test_greedy_continuation_writes_a_method(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = "class Foo:\n    def __init__(self"
    text = tokenizer.decode(
        greedy(lambda ids: membound_logits(model, ids), tokenizer.encode(prompt).ids, 32)
    )
    found = [m for m in PYTHON_MARKS if m in text]
    assert "self" in text and ":" in text and "\n        " in text, text
    assert len(found) >= 6, f"continuation {text!r} has only {found}"


@pytest.mark.parametrize("prompt", ["import os\n", "def "])
def test_sampled_continuations_look_like_python(model, tokenizer, prompt: str) -> None:  # type: ignore[no-untyped-def]
    texts = []
    for seed in range(4):
        out = sample(model, tokenizer.encode(prompt).ids, 48, seed)
        text = tokenizer.decode(out)
        assert len(set(out)) >= 8, f"degenerate continuation {text!r}"
        assert sum(c.isascii() for c in text) >= 0.95 * len(text), text
        assert "\n" in text, text
        texts.append(text)
    joined = "".join(texts)
    found = [m for m in PYTHON_MARKS if m in joined]
    assert len(found) >= 5, f"continuations {texts!r} have only {found} of {PYTHON_MARKS}"
    words = re.findall(r"[A-Za-z_][A-Za-z_0-9]*", joined)
    share = sum(w in PYTHON_WORDS for w in words) / max(len(words), 1)
    assert share >= 0.2, f"only {share:.0%} of the words are Python keywords: {texts!r}"


def _heldout_ppl(model: torch.nn.Module, ids: list[int], window: int) -> tuple[float, int]:
    n = len(ids) // window
    windows = torch.tensor(ids[: n * window]).view(n, window)
    total, count = 0.0, 0
    for start in range(0, n, 16):
        chunk = windows[start : start + 16]
        logits = membound_logits(model, chunk)
        total += F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += chunk.shape[0] * (window - 1)
    return math.exp(total / count), count


def test_heldout_perplexity_slice_matches_metrics(model, tokenizer, metrics) -> None:  # type: ignore[no-untyped-def]
    method = metrics["method"]
    assert method["first_token_of_window_scored"] is False
    window = method["window_length"]
    sl = metrics["slice"]
    data = (ASSET / "heldout.txt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == method["data_sha256"]
    ids = tokenizer.encode(data.decode("utf-8")).ids
    assert len(ids) == method["total_tokens"]
    ppl, count = _heldout_ppl(model, ids[: sl["num_windows"] * window], window)
    assert count == sl["tokens_scored"]
    assert abs(ppl - sl["perplexity"]) / sl["perplexity"] < 0.01
    readme = (ASSET / "README.md").read_text(encoding="utf-8")
    assert f"{metrics['heldout_perplexity']:.2f}" in readme


@pytest.mark.slow
def test_heldout_perplexity_full_matches_metrics(model, tokenizer, metrics) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode((ASSET / "heldout.txt").read_bytes().decode("utf-8")).ids
    ppl, count = _heldout_ppl(model, ids, metrics["method"]["window_length"])
    assert count == metrics["method"]["tokens_scored"]
    assert abs(ppl - metrics["heldout_perplexity"]) / metrics["heldout_perplexity"] < 0.01


def test_engine_default_points_here() -> None:
    from membound.model_source import default_model_path, resolve_model_path

    assert Path(default_model_path()) == ASSET.resolve()
    assert Path(resolve_model_path(None)) == ASSET.resolve()


def test_eval_perplexity_command_reproduces_the_slice(
    metrics, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    """`membound eval perplexity` on the shipped held-out text, non-overlapping 256-token
    windows over the first 2048 tokens, lands within 1% of the figure in metrics.json."""
    from membound.entrypoints.cli import main

    folder = str(ASSET)
    rc = main(["eval", "perplexity", folder, "--dataset", f"{folder}/heldout.txt",
               "--window", "256", "--stride", "256", "--max-tokens", "2048", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(metrics["slice"]["perplexity"], rel=0.01)


def test_llm_without_a_model_uses_the_bundled_one_and_its_sampling_defaults() -> None:
    from membound import LLM

    llm = LLM(max_model_len=256)
    params = llm.get_default_sampling_params(max_tokens=8, seed=3)
    assert (params.temperature, params.top_k, params.max_tokens) == (0.7, 40, 8)
    a = llm.generate("import os\n", params, use_tqdm=False)[0].outputs[0]
    b = llm.generate("import os\n", use_tqdm=False)[0].outputs[0]  # defaults apply
    assert len(a.token_ids) == 8 and b.finish_reason in ("length", "stop")
    again = llm.generate("import os\n", params, use_tqdm=False)[0].outputs[0]
    assert again.token_ids == a.token_ids
