"""Decode CUDA graphs: the capture ladder, the padded static batch (checked eagerly on CPU:
padding rows must not disturb the live ones), and on a GPU graph replay == eager forward of
the same batch, bit for bit, and identical greedy output with graphs on and off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kernel_testing import gpu, needs_cuda

from membound import LLM, SamplingParams
from membound.config import KernelConfig
from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.layers.attention.metadata import build_attention_metadata
from membound.worker.cuda_graph import CUDAGraphRunner, decode_graph_sizes


def test_capture_ladder() -> None:
    default = decode_graph_sizes(KernelConfig(), 256)
    assert default[:5] == [1, 2, 4, 8, 16] and default[-1] == 256 and len(default) == 35
    assert decode_graph_sizes(KernelConfig(), 20) == [1, 2, 4, 8, 16, 20]
    assert decode_graph_sizes(KernelConfig(cuda_graph_sizes=(8, 1, 4, 4, 64)), 32) == [1, 4, 8]


def test_kernel_config_validates() -> None:
    with pytest.raises(ValueError, match="kernel backend 'cuda'"):
        KernelConfig(backend="cuda")
    with pytest.raises(ValueError, match="positive integers"):
        KernelConfig(cuda_graph_sizes=(0, 4))


def _engine(folder: Path, backend: str, device: str) -> LLMEngine:
    args = EngineArgs(model=str(folder), block_size=4, kernel_backend=backend, device=device,
                      enforce_eager=True, dtype="float32")  # fmt: skip
    return LLMEngine.from_engine_args(args)


def _prefill_then_decode_metadata(eng: LLMEngine, lens: list[int]) -> tuple:
    """Prefill sequences of ``lens`` tokens into hand-made block tables; return the next
    decode step's (input_ids, positions, metadata)."""
    worker = eng.executor.driver  # rank 0's worker: its model and KV cache
    dev, bs = worker.device, 4
    tables, next_block = [], 0
    for n in lens:
        count = n // bs + 1
        tables.append(list(range(next_block, next_block + count)))
        next_block += count
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (sum(lens),), generator=gen).to(dev)
    pos = torch.cat([torch.arange(n) for n in lens]).to(dev)
    md = build_attention_metadata(lens, lens, tables, bs, dev, eng.config.model_config.sliding_window)
    with torch.inference_mode():
        worker.model(ids, pos, worker.runner.kv_caches, md)
    dec_ids = torch.randint(5, 300, (len(lens),), generator=gen).to(dev)
    dec_pos = torch.tensor(lens, device=dev)
    md = build_attention_metadata([1] * len(lens), [n + 1 for n in lens], tables, bs, dev,
                                  eng.config.model_config.sliding_window)  # fmt: skip
    return dec_ids, dec_pos, md


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_padded_static_batch_matches_eager(tiny_llama: Path, backend: str) -> None:
    """3 live decodes in a batch padded to 4: the live rows equal the plain eager step."""
    if backend == "triton":
        pytest.importorskip("triton")
    eng = _engine(tiny_llama, backend, "cpu")
    ids, pos, md = _prefill_then_decode_metadata(eng, [9, 5, 7])
    w = eng.executor.driver
    graphs = CUDAGraphRunner(w.model, w.runner.kv_caches, [1, 4], 64, 4, None, w.device)
    with torch.inference_mode():
        expected = w.model(ids, pos, w.runner.kv_caches, md)  # [3, hidden]
        assert graphs.fits(md) and not graphs.can_run(md) and graphs.padded_size(3) == 4
        graphs.load_inputs(ids, pos, md, 4)
        got = graphs.forward_static(4)  # [4, hidden]
    torch.testing.assert_close(got[:3], expected, atol=1e-5, rtol=1e-5)
    assert not torch.isnan(got).any()


@gpu
@needs_cuda
def test_graph_replay_is_bitwise_eager(tiny_llama: Path) -> None:
    eng = _engine(tiny_llama, "triton", "cuda")
    ids, pos, md = _prefill_then_decode_metadata(eng, [9, 5, 70])
    w = eng.executor.driver
    graphs = CUDAGraphRunner(w.model, w.runner.kv_caches, [1, 4, 8], 128, 4, None,
                             w.device)  # fmt: skip
    graphs.capture()
    with torch.inference_mode():
        replayed = graphs.run(ids, pos, md).clone()
        eager = graphs.forward_static(4)[:3]
    assert torch.equal(replayed, eager)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_identical_with_and_without_graphs(tiny_llama: Path, dtype: str) -> None:
    prompts = [[5, 17, 42], list(range(10, 60)), [3] * 9, [7, 8]]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    def run(eager: bool) -> list[list[int]]:
        llm = LLM(str(tiny_llama), dtype=dtype, block_size=16, enforce_eager=eager,
                  cuda_graph_sizes=[1, 2, 4])  # fmt: skip
        assert (llm.llm_engine.executor.driver.runner.cuda_graphs is None) == eager
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    assert run(eager=False) == run(eager=True)
