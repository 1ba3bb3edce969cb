"""Dummy weights: drawn where the weights live with a seeded per-device generator,
reproducible, and in row chunks for large tensors (quantized layers too)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from membound.engine.engine_args import EngineArgs
from membound.worker import weight_loader
from membound.worker.weight_loader import load_model


def _weights(folder: Path, quantization: str | None = None) -> dict[str, torch.Tensor]:
    cfg = EngineArgs(model=str(folder), device="cpu", load_format="dummy",
                     quantization=quantization).create_engine_config().model_config  # fmt: skip
    model = load_model(cfg, None, dtype=torch.float32, device=torch.device("cpu"),
                       load_format="dummy", seed=3)  # fmt: skip
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_seeded_and_chunked(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _weights(tiny_llama)
    assert all(torch.equal(a, b) for a, b in zip(whole.values(), _weights(tiny_llama).values()))
    monkeypatch.setattr(weight_loader, "_CHUNK_ELEMENTS", 1000)  # every matrix in chunks
    chunked = _weights(tiny_llama)
    for name, w in chunked.items():
        if name.endswith("norm.weight"):
            assert torch.equal(w, torch.ones_like(w))
        elif w.dim() == 2:
            assert w.shape == whole[name].shape and abs(w.std().item() - 0.02) < 0.005
    quantized = _weights(tiny_llama, "int8")
    assert any(w.dtype == torch.int8 for w in quantized.values())
