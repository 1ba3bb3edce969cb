from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import add_tokenizer, make_checkpoint


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GQA Llama with a byte-level tokenizer, shared by the engine tests."""
    folder = make_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "mistral", seed=1)
    return add_tokenizer(folder)
