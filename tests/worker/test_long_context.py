"""Long context: a 128K max_model_len costs memory for the KV cache only; per-step work
follows the actual sequence lengths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.sampling_params import SamplingParams
from tiny_models import make_checkpoint


def test_128k_context_steps_scale_with_actual_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_checkpoint(tmp_path / "long", "llama3_tied", max_position_embeddings=131072)
    eng = LLMEngine.from_engine_args(EngineArgs(
        model=str(folder), max_model_len=131072, kv_cache_memory_bytes=80 << 20))
    assert eng.info.memory_report.kv_tokens >= 131072
    widths: list[int] = []
    batch = eng.executor.driver.runner.input_batch
    real = batch.prepare

    def spy(*args: Any, **kwargs: Any) -> Any:
        inputs = real(*args, **kwargs)
        d = inputs.attn.decode
        if d is not None:
            widths.append(d.block_tables.shape[1] * 16)  # keys a decode's table covers
        return inputs

    monkeypatch.setattr(batch, "prepare", spy)
    eng.add_request("a", list(range(5, 45)), SamplingParams(temperature=0, max_tokens=8,
                                                             ignore_eos=True))
    while eng.has_unfinished_requests():
        eng.step()
    assert widths and max(widths) <= 64  # 48 tokens -> 3 blocks of 16, not 131072
