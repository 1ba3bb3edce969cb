"""Tensor parallelism and GGUF files held quantized: the engine refuses TP > 1 for quantized
models, naming the GGUF fix (load dense). The int8 table's vocabulary-row sharding itself is
checked layer-level in test_gguf_int8.py, ready for when that refusal is lifted."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_gguf import write_tiny_llama

gguf = pytest.importorskip("gguf")

from membound.config import ConfigError  # noqa: E402
from membound.engine.engine_args import EngineArgs  # noqa: E402


def test_quantized_gguf_at_tp2_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_llama(path, "Q4_0", embed_type="Q8_0")
    with pytest.raises(ConfigError, match="quantized models.*load_format='gguf_dequantized'"):
        EngineArgs(model=str(path), tensor_parallel_size=2).create_engine_config()
    dense = EngineArgs(model=str(path), tensor_parallel_size=2, load_format="gguf_dequantized")
    assert dense.create_engine_config().model_config.quantization is None
