"""FP8 KV cache (kv_cache_dtype="fp8") end to end: 4x the blocks of an fp32 cache in the
same memory; greedy output identical with prefix caching on and off, chunked and not,
preempted by recompute and by swap (swapped blocks stay FP8), and between the CPU backend,
the torch references and Triton (interpreted) reading the same FP8 cache contents; K/V scales
read from llm-compressor and ModelOpt checkpoint names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_kv_memory_equivalence import shared_prefix_prompts
from test_scheduling_equivalence import engine, run

from membound.config import ConfigError
from membound.kernels.kv_quant import FP8_KV_DTYPE
from membound.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
FP8 = {"kv_cache_dtype": "fp8"}


@pytest.fixture(scope="module")
def fp8_reference(tiny_llama: Path) -> list[list[int]]:
    eng = engine(tiny_llama, enable_prefix_caching=False, **FP8)
    return [run(eng, [p], GREEDY)[0] for p in shared_prefix_prompts()]


def test_fp8_cache_holds_four_times_the_blocks_of_fp32(tiny_llama: Path) -> None:
    budget = {"kv_cache_memory_bytes": 1 << 20, "max_model_len": 128}
    plain, fp8 = engine(tiny_llama, **budget), engine(tiny_llama, **budget, **FP8)
    assert fp8.executor.driver.runner.kv_caches[0].dtype == FP8_KV_DTYPE
    assert fp8.info.kv_precision == "float8_e4m3fn" and plain.info.kv_precision == "float32"
    assert fp8.info.num_blocks == 4 * plain.info.num_blocks
    assert fp8.info.memory_report.kv_bytes == plain.info.memory_report.kv_bytes


def test_fp8_prefix_caching_and_chunking_identical(
    tiny_llama: Path, fp8_reference: list[list[int]]
) -> None:
    eng = engine(tiny_llama, enable_prefix_caching=True, **FP8)
    assert run(eng, shared_prefix_prompts()[:1], GREEDY) == fp8_reference[:1]
    assert run(eng, shared_prefix_prompts(), GREEDY) == fp8_reference
    assert eng.stats().prefix_cache_hits_total > 0
    chunked = engine(tiny_llama, max_num_batched_tokens=16, enable_prefix_caching=False, **FP8)
    assert run(chunked, shared_prefix_prompts(), GREEDY) == fp8_reference


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_fp8_preemption_identical(
    tiny_llama: Path, fp8_reference: list[list[int]], mode: str
) -> None:
    eng = engine(tiny_llama, num_kv_blocks=40, max_num_batched_tokens=48, preemption_mode=mode,
                 swap_space=0.01, **FP8)  # fmt: skip
    assert run(eng, shared_prefix_prompts(), GREEDY) == fp8_reference
    assert eng.stats().num_preemptions > 0
    if mode == "swap":
        assert eng.stats().num_swaps_in > 0
        swap = eng.executor.driver.runner.kv_swap
        assert swap is not None and swap.cpu_caches[0].element_size() == 1  # FP8 bytes on CPU


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fp8_backends_identical(
    tiny_llama: Path, fp8_reference: list[list[int]], backend: str
) -> None:
    if backend == "triton":
        pytest.importorskip("triton")
    prompts = shared_prefix_prompts()[:3]
    eng = engine(tiny_llama, enable_prefix_caching=False, kernel_backend=backend, **FP8)
    assert run(eng, prompts, GREEDY) == fp8_reference[:3]


def _with_scales(src: Path, dst: Path, names: dict[str, str], value: float) -> Path:
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    for i in range(2):
        for kind, pattern in names.items():
            weights[pattern.format(i=i)] = torch.tensor(value if kind == "k" else value / 2)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("names", [
    {"k": "model.layers.{i}.self_attn.k_scale", "v": "model.layers.{i}.self_attn.v_scale"},
    {"k": "model.layers.{i}.self_attn.k_proj.k_scale",
     "v": "model.layers.{i}.self_attn.v_proj.v_scale"},
], ids=["llm-compressor", "modelopt"])
def test_checkpoint_scales_are_read(
    tiny_llama: Path, tmp_path: Path, names: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = _with_scales(tiny_llama, tmp_path / "scaled", names, 0.25)
    with caplog.at_level("INFO"):
        eng = engine(folder, **FP8)
    model = eng.executor.driver.model
    attn = [m for m in model.modules() if hasattr(m, "kv_scales_from_checkpoint")]
    assert [(a.k_scale, a.v_scale) for a in attn] == [(0.25, 0.125)] * 2
    assert "K/V scales from the checkpoint (2 of 2 layers" in caplog.text
    assert run(eng, shared_prefix_prompts()[:2], GREEDY)  # runs
    # a model-dtype cache ignores the scales: same tokens as the checkpoint without them
    assert run(engine(folder), shared_prefix_prompts()[:2], GREEDY) == run(
        engine(tiny_llama), shared_prefix_prompts()[:2], GREEDY
    )


def test_unknown_kv_cache_dtype_is_refused(tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="E5M2 is not supported"):
        engine(tiny_llama, kv_cache_dtype="fp8_e5m2")
    with pytest.raises(ConfigError, match="kv_cache_dtype='int4' is not one of auto, fp8"):
        engine(tiny_llama, kv_cache_dtype="int4")


def test_eval_compare_kv_cache(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from membound.entrypoints.eval import main

    args = ["eval", "compare", str(tiny_llama), "--kv-cache-dtype", "fp8", "--window", "64",
            "--max-num-batched-tokens", "16", "--json"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_cache_dtype"] == "fp8" and result["num_tokens"] > 100
    assert abs(result["perplexity_change"]) < 0.05  # a random tiny model: a loose bound
    assert 0.5 < result["top1_agreement"] <= 1.0 and 0.0 <= result["greedy_agreement"] <= 1.0
    assert main([*args[:3], "--kv-cache-dtype", "fp8", "--quantization", "int8"]) == 2
