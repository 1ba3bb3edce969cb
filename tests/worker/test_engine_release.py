"""Dropping an engine frees it: no reference cycle keeps the model (and on a GPU its device
memory) alive, so a benchmark that builds engines one after another plans each KV cache with
the previous engine gone (issue 19: the offloader's hooks used to close such a cycle)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from membound.config import ModelConfig
from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.worker.offload import WeightOffloader, layer_bytes, plan_offload
from membound.worker.weight_loader import load_model


@contextmanager
def no_cycle_collector() -> Iterator[None]:
    """Only reference counting frees objects inside (what a cycle would defeat)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_offloaded_model_is_freed_without_the_cycle_collector(tiny_llama: Path) -> None:
    cfg = ModelConfig.from_hf(tiny_llama)
    model = load_model(cfg, str(tiny_llama), dtype=torch.float32, device=torch.device("cpu"))
    layers = model.model.layers
    plan = plan_offload(layers, sum(layer_bytes(x) for x in layers) // 2)
    assert plan.layer_indices
    with no_cycle_collector():
        offloader = WeightOffloader(layers, plan, torch.device("cpu"))
        dead_model, dead_offloader = weakref.ref(model), weakref.ref(offloader)
        del model, layers, offloader
        assert dead_offloader() is None, "the offloader outlived its last reference"
        assert dead_model() is None, "the offloaded model outlived its last reference"


def test_engine_is_garbage_collected(tiny_llama: Path) -> None:
    engine = LLMEngine.from_engine_args(
        EngineArgs(model=str(tiny_llama), device="cpu", load_format="dummy", max_model_len=64)
    )
    model = weakref.ref(engine.executor.driver.model)
    dead = weakref.ref(engine)
    del engine
    gc.collect()
    assert dead() is None and model() is None, "something still holds the engine or its model"
