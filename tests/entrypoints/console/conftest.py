"""Fixtures: one live server over the tiny model (a small KV cache, so the block map moves),
an authorised HTTP client, and headless Chromium driven by Playwright.

The browser tests need Debian's Chromium (/usr/bin/chromium, `apt-get install chromium`) and
the playwright Python package (`pip install playwright`; its own browser download is never
used: the system Chromium is launched through ``executable_path``). Without them they skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_NEEDED = ("fastapi", "uvicorn", "prometheus_client", "httpx")
collect_ignore_glob = (
    ["test_*.py"] if any(importlib.util.find_spec(m) is None for m in _NEEDED) else []
)

NUM_KV_BLOCKS = 96  # 3 full sequences of 128 tokens at block_size 4
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    path = os.environ.get("MEMBOUND_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.path.exists(path) else None


@pytest.fixture(scope="session")
def console_server(tiny_llama: Path) -> Iterator[Any]:
    from entrypoints.openai.openai_server_harness import start_server

    live = start_server(tiny_llama, num_kv_blocks=NUM_KV_BLOCKS)
    yield live
    live.stop()


@pytest.fixture()
def http(console_server: Any) -> Iterator[Any]:
    import httpx

    from entrypoints.openai.openai_server_harness import API_KEY

    with httpx.Client(base_url=console_server.url, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop current on this thread while it
    runs, which would break later tests' asyncio.run()."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: apt-get install chromium (Debian's package, /usr/bin/chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("no Playwright: pip install playwright (the system Chromium is used)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright gives every launch a fresh, empty profile (user data dir) of its own.
        b = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))

    def console_error(msg: Any) -> None:  # CSP violations and failed loads land here
        if msg.type == "error" and "status of 401" not in msg.text:  # 401: asks for the key
            errors.append(msg.text)

    pg.on("console", console_error)
    yield pg
    context.close()
    assert not errors, f"errors on the page: {errors}"


@pytest.fixture()
def slow_steps(console_server: Any, monkeypatch: pytest.MonkeyPatch) -> float:
    """Each engine step takes at least 25 ms more, so requests live long enough to watch."""
    import time

    delay = 0.025
    engine = console_server.state.engine.engine
    real_step = engine.step

    def slow_step() -> Any:
        time.sleep(delay)
        return real_step()

    monkeypatch.setattr(engine, "step", slow_step)
    return delay
