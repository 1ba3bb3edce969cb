"""Running an asyncio scenario on a thread of its own (no event loop may be current on
pytest's thread), for tests that drive AsyncLLMEngine directly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable


def run_in_own_thread(scenario: Callable[[], Awaitable[None]], timeout_s: float = 120.0) -> None:
    """``asyncio.run(scenario())`` on a fresh thread; re-raises what it raised, fails if it
    has not finished within ``timeout_s``."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=timeout_s)
    assert not thread.is_alive(), f"the scenario did not finish within {timeout_s:g} s"
    if errors:
        raise errors[0]
