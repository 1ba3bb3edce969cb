"""`membound serve` on the SmolLM2 GGUF with the official openai client: the file's ChatML
template is applied and <|im_end|> (the GGUF's EOS) ends the reply."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints" / "openai"))


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path) -> Iterator[Any]:
    from openai_server_harness import start_server

    # dense: the reply takes a few decode steps and the CPU int4 path is the slow one here.
    # float32 (token-identical to transformers): the reply's first token is a near tie in
    # this model ("The" vs "L", 0.08 apart in log-probability), which bf16 kernels may flip
    live = start_server(
        smollm2_gguf,
        max_model_len=256,
        block_size=16,
        load_format="gguf_dequantized",
        dtype="float32",
        num_kv_blocks=32,
    )
    yield live
    live.stop()


def test_chat_completion_ends_at_im_end(server: Any, smollm2_gguf: Path) -> None:
    from openai_server_harness import API_KEY, MODEL

    from membound.engine.tokenizer import Tokenizer

    question = [{"role": "user", "content": "What is the capital of France?"}]
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as client:
        reply = client.chat.completions.create(
            model=MODEL,
            temperature=0,
            max_tokens=24,
            messages=question,
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert "Paris" in choice.message.content
    assert "<|im_end|>" not in choice.message.content
    # the GGUF's template (it adds SmolLM2's system prompt) rendered the prompt
    assert reply.usage.prompt_tokens == len(
        Tokenizer.from_pretrained(smollm2_gguf).encode_chat(question)
    )
    assert reply.usage.prompt_tokens > 30
