from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every planner test gets its own local-device cache, never the user's."""
    cache = tmp_path / "membound-cache"
    monkeypatch.setenv("MEMBOUND_CACHE_DIR", str(cache))
    return cache
