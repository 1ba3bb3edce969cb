"""End to end: greedy output of the Triton path (kernels interpreted on CPU; compiled, with
CUDA graphs, on a GPU) and of the CPU backend equals the torch-reference path on tiny
models. The batch mixes fresh prompts, chunked prefill (a small token budget), decodes
beside prefill chunks and a shared prefix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from membound import LLM, SamplingParams
from membound.kernels.contract import KernelBackend
from tiny_models import make_checkpoint

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="needs the triton package")  # fmt: skip

PROMPTS = [
    [5, 17, 42, 99, 7],
    list(range(10, 31)),
    [3],
    list(range(10, 26)) + [250, 251],  # shares 16 tokens (4 blocks) with prompt 1
]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3)


def generate(folder: Path, backend: str) -> tuple[list[list[int]], list, LLM]:
    llm = LLM(str(folder), block_size=4, max_num_batched_tokens=12, kernel_backend=backend,
              dtype="float32")
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], [o.outputs[0].logprobs for o in outs], llm


def check_same_greedy(folder: Path, backend: str = "triton") -> None:
    ref_tokens, ref_lps, ref_llm = generate(folder, "torch")
    tokens, lps, llm = generate(folder, backend)
    assert ref_llm.llm_engine.info.kernel_backend == KernelBackend.TORCH.value
    assert llm.llm_engine.info.kernel_backend == KernelBackend(backend).value
    assert tokens == ref_tokens
    for ours, theirs in zip(lps, ref_lps, strict=True):
        for step_ours, step_theirs in zip(ours, theirs, strict=True):
            for token, lp in step_theirs.items():
                assert abs(step_ours[token] - lp) < 1e-3, (token, step_ours[token], lp)


@needs_triton
def test_triton_path_matches_reference(tiny_llama: Path) -> None:
    check_same_greedy(tiny_llama)


@needs_triton
@pytest.mark.parametrize("family", ["mistral_window", "qwen3_qknorm", "llama_head_dim"])
def test_triton_path_matches_reference_variants(tmp_path: Path, family: str) -> None:
    """Sliding window, q/k RMSNorm over strided heads, a non-power-of-two head_dim (24)."""
    check_same_greedy(make_checkpoint(tmp_path / family, family, seed=2))


@pytest.mark.parametrize("family", ["mistral_window", "llama_head_dim", "llama_mha_untied"])
def test_cpu_backend_matches_reference(tmp_path: Path, family: str) -> None:
    """The CPU backend (bucketed decode attention, column-major wide weights, an untied LM
    head among them) against the references."""
    check_same_greedy(make_checkpoint(tmp_path / family, family, seed=2), "cpu")
