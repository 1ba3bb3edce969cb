"""CPU offloading of layer weights, with the CPU standing in for the device: outputs are
identical, and each offloaded layer is copied before it runs, prefetched ahead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from membound.config import ModelConfig
from membound.layers.attention.metadata import build_attention_metadata
from membound.worker.offload import WeightOffloader, layer_bytes, plan_offload
from membound.worker.weight_loader import load_model


@pytest.fixture(scope="module")
def model(tiny_llama: Path) -> torch.nn.Module:
    cfg = ModelConfig.from_hf(tiny_llama)
    return load_model(cfg, str(tiny_llama), dtype=torch.float32, device=torch.device("cpu"))


def logits(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    md = build_attention_metadata([len(ids)], [len(ids)], None, 4, torch.device("cpu"))
    with torch.inference_mode():
        return m.compute_logits(m(ids, torch.arange(len(ids)), None, md))


def test_plan_spreads_layers_within_budget() -> None:
    layers = torch.nn.ModuleList(torch.nn.Linear(10, 10) for _ in range(8))
    one = layer_bytes(layers[0])
    plan = plan_offload(layers, 4 * one + 1)
    assert plan.layer_indices == (0, 2, 4, 6) and plan.offloaded_bytes == 4 * one
    assert plan_offload(layers, one - 1).layer_indices == ()
    assert plan_offload(layers, 100 * one).layer_indices == tuple(range(8))


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_offloaded_outputs_identical_and_prefetched(model: torch.nn.Module, fraction: float) -> None:
    ids = torch.tensor([5, 9, 40, 77, 3, 12, 200, 31])
    before = logits(model, ids)
    layers = model.model.layers
    budget = int(sum(layer_bytes(x) for x in layers) * fraction)
    plan = plan_offload(layers, budget)
    trace: list[tuple[str, int]] = []
    off = WeightOffloader(layers, plan, torch.device("cpu"), prefetch=1, trace=trace)
    try:
        assert all(p.numel() == 0 for i in plan.layer_indices for p in layers[i].parameters())
        for _ in range(2):  # two steps: the second one's first layer was prefetched
            assert torch.equal(logits(model, ids), before)
        runs = [i for i, (kind, _) in enumerate(trace) if kind == "run"]
        for idx in runs:  # every run is preceded by the copy of the same layer
            layer = trace[idx][1]
            assert ("copy", layer) in trace[:idx]
        if len(plan.layer_indices) > 1:
            # with prefetch, the next layer's copy is issued while this one runs
            first_run = runs[0]
            assert trace[first_run + 1] == ("copy", plan.layer_indices[1])
    finally:
        off.remove()


def test_engine_on_cpu_accepts_and_ignores_offload(
    tiny_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine

    with caplog.at_level("INFO", logger="membound"):  # logged by the rank's worker
        eng = LLMEngine.from_engine_args(EngineArgs(model=str(tiny_llama), cpu_offload_gb=1.0))
    assert eng.executor.driver.offloader is None
    assert eng.info.memory_report.offloaded_bytes == 0
    assert "cpu_offload_gb=1.0 ignored" in caplog.text
