"""Per-request access log: one INFO line per HTTP request, written when the response ends
(after the last stream chunk):

    membound.access: 127.0.0.1:53512 "POST /v1/completions" 200 prompt_tokens=5
        completion_tokens=16 latency=0.412s

No query strings, headers or bodies (so no prompt or output text, and no API key). The
serving code reports token counts with ``note_tokens``; the record is found through a
context variable that the middleware sets for the request's task (streaming bodies run in
child tasks, which inherit it).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("membound.access")


@dataclass(slots=True)
class _Record:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


_CURRENT: ContextVar[_Record | None] = ContextVar("membound_access_record", default=None)


def note_tokens(prompt_tokens: int, completion_tokens: int) -> None:
    """Attach the token counts of the current request to its access log line."""
    record = _CURRENT.get()
    if record is not None:
        record.prompt_tokens = prompt_tokens
        record.completion_tokens = completion_tokens


class AccessLogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = _Record()
        token = _CURRENT.set(record)
        status = 0
        t0 = time.perf_counter()

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            _CURRENT.reset(token)
            tokens = ""
            if record.prompt_tokens is not None:
                tokens = (
                    f" prompt_tokens={record.prompt_tokens} "
                    f"completion_tokens={record.completion_tokens}"
                )
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            logger.info(
                '%s "%s %s" %s%s latency=%.3fs',
                peer,
                scope.get("method"),
                scope.get("path"),
                status or "-",
                tokens,
                time.perf_counter() - t0,
            )
