"""Shared tiny float model for the quantization tests: sizes that every format's groups and
blocks divide (hidden 128, intermediate 256, head_dim 32), GQA, q/k/v biases (Qwen2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import make_checkpoint

QUANT_BASE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 2}


@pytest.fixture(scope="session")
def float_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("float"), "qwen2_bias", seed=5, **QUANT_BASE)
