"""membound eval: sliding-window perplexity (transformers is the oracle) and the quantized vs
float comparison, through the functions and the command line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from quant_checkpoints import write_quantized
from test_quant_formats import load

from membound.entrypoints.eval import main, perplexity, sliding_windows
from tiny_models import CORPUS, add_tokenizer, load_hf

TEXT = "".join(CORPUS) * 2


@pytest.fixture(scope="module")
def with_tokenizer(float_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "m"
    shutil.copytree(float_ckpt, folder)
    return add_tokenizer(folder)


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (33, 8, 8), (5, 16, 3), (20, 7, 1)])
def test_every_token_scored_once(n: int, window: int, stride: int) -> None:
    scored = []
    for begin, end, first in sliding_windows(n, window, stride):
        assert end - begin <= window and begin < first <= end
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_perplexity_matches_transformers(float_ckpt: Path) -> None:
    ids = [(i * 37) % 300 + 3 for i in range(24)]
    with torch.no_grad():
        loss = load_hf(float_ckpt)(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    result = perplexity(load(float_ckpt), ids, window=32, stride=16, device=torch.device("cpu"))
    assert result.num_tokens == 23
    assert abs(result.nll - loss) < 1e-4 and abs(result.perplexity - math.exp(loss)) < 1e-3
    windowed = perplexity(load(float_ckpt), ids, window=8, stride=4, device=torch.device("cpu"))
    assert windowed.num_tokens == 23 and windowed.nll != result.nll  # less context


def test_cli_perplexity_and_compare(with_tokenizer: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    args = [str(with_tokenizer), "--window", "32", "--stride", "16", "--json", "--device", "cpu"]
    assert main(["eval", "perplexity", *args, "--dataset", str(data)]) == 0
    ppl = json.loads(capsys.readouterr().out)
    assert ppl["num_tokens"] > 50 and ppl["perplexity"] > 1
    results = {}
    for q in ("int8", "int4"):
        assert main(["eval", "compare", *args, "--quantization", q, "--max-tokens", "80"]) == 0
        results[q] = json.loads(capsys.readouterr().out)
        assert results[q]["num_tokens"] == 79 and 0 <= results[q]["top1_agreement"] <= 1
    assert 0 < results["int8"]["kl_divergence"] < results["int4"]["kl_divergence"]
    assert results["int8"]["top1_agreement"] >= results["int4"]["top1_agreement"]


def test_cli_compare_prequantized_needs_reference(with_tokenizer: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_quantized(with_tokenizer, tmp_path / "awq", "awq")
    common = ["--window", "16", "--max-tokens", "40", "--device", "cpu"]
    assert main(["eval", "compare", str(tmp_path / "awq"), *common]) == 2
    assert "pass the float checkpoint" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path / "awq"), "--reference", str(with_tokenizer),
                 *common]) == 0
    assert "awq vs unquantized over 39 tokens" in capsys.readouterr().out
