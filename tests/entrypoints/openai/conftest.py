"""Fixtures: one live server over the tiny model for the whole session, and an HTTP client."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_NEEDED = ("fastapi", "uvicorn", "prometheus_client", "httpx")
# Without the server and test extras there is nothing to test here.
collect_ignore_glob = (
    ["test_*.py"] if any(importlib.util.find_spec(m) is None for m in _NEEDED) else []
)


@pytest.fixture(scope="session")
def server(tiny_llama: Path) -> Iterator[Any]:
    from openai_server_harness import start_server

    live = start_server(tiny_llama)
    yield live
    live.stop()


@pytest.fixture()
def http(server: Any) -> Iterator[Any]:
    import httpx
    from openai_server_harness import API_KEY

    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


