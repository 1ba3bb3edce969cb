"""The server's life around the app: slow clients and graceful shutdown.

```
connection --HeaderTimeoutProtocol (no complete headers in header_timeout_s: 408, closed)
           --> BodyTimeoutMiddleware (no next body piece in body_timeout_s: 408)
           --> DrainMiddleware (503 server_shutting_down once a drain began) --> the app
SIGTERM/SIGINT --> DrainingServer: drain begins (new requests 503); running requests get up
  to drain_timeout_s; then each open stream ends with an error event and [DONE]; uvicorn
  then closes the connections and the lifespan stops the engine. A second signal skips the
  rest of the drain. Exit code 0, one log line per event.
```
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from membound.engine.async_engine import AsyncLLMEngine
from membound.entrypoints.openai.errors import OpenAIError, error_body, json_bytes, send_error

logger = logging.getLogger("membound.server")

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a header read timeout: a connection that has not sent a
    complete request line and headers within ``header_timeout_s`` of connecting (or of the
    first byte of its next request) gets a 408 and is closed. uvicorn itself has none."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:
                self._arm_header_timer()  # part of the next request's headers
        else:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._cancel_header_timer()  # keep-alive idle time is uvicorn's timeout_keep_alive
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        logger.info(
            "closed a connection from %s that sent no complete request headers in %gs",
            _peer(self.client),
            self._header_timeout_s,
        )
        body = _timeout_body(
            f"the request headers did not arrive within {self._header_timeout_s:g}s"
        )
        self.transport.write(_TIMEOUT_408 % (len(body), body))
        self.transport.close()


def header_timeout_protocol(header_timeout_s: float) -> Any:
    """The class-like factory uvicorn.Config(http=...) takes."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout_s=header_timeout_s)


class BodyTimeoutMiddleware:
    """408 when a client stops sending its request body: each piece must arrive within
    ``timeout_s`` of the previous one (nginx's client_body_timeout)."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        started = False

        async def timed_receive() -> dict[str, Any]:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise _BodyTimeout from None
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, watch)
        except _BodyTimeout:
            logger.info(
                "%s %s: the request body stalled for %gs; answered 408",
                scope.get("method"),
                scope.get("path"),
                self.timeout_s,
            )
            if not started:
                await send_error(
                    send,
                    OpenAIError(
                        408,
                        f"the request body stalled: no data for {self.timeout_s:g}s",
                        code="request_timeout",
                        headers={"Connection": "close"},
                    ),
                )


class _BodyTimeout(Exception):
    pass


class DrainMiddleware:
    """Once the engine drains (shutdown began), every new request gets a 503 in OpenAI's
    shape, /health included (load balancers take the replica out)."""

    def __init__(self, app: Any, engine: AsyncLLMEngine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.engine.draining:
            await send_error(
                send,
                OpenAIError(
                    503,
                    "the server is shutting down; retry on another replica",
                    code="server_shutting_down",
                    headers={"Connection": "close"},
                ),
            )
            return
        await self.app(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM/SIGINT drains the engine before the usual shutdown, and
    exits normally (uvicorn would re-raise the signal, killing the process with it)."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLMEngine, drain_timeout_s: float):
        super().__init__(config)
        self._engine = engine
        self._drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._signals = 0

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        loop = self._loop
        if loop is None or not self.started:
            self.should_exit = True  # still starting up: nothing to drain
            return
        if self._signals == 1:
            loop.call_soon_threadsafe(self._start_drain, sig)
        elif self._signals == 2:
            loop.call_soon_threadsafe(self._engine.cut_drain)
        else:
            self.force_exit = True

    def _start_drain(self, sig: int) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        name = signal.Signals(sig).name
        running = self._engine.num_streams
        logger.warning(
            "%s received: draining %d running request(s) for up to %gs; new "
            "requests get 503 (signal again to end them now)",
            name,
            running,
            self._drain_timeout_s,
        )
        t0 = time.monotonic()
        cut = await self._engine.drain(self._drain_timeout_s)
        elapsed = time.monotonic() - t0
        if cut:
            logger.warning(
                "drain ended after %.1fs: %d request(s) still running were ended "
                "with an error event",
                elapsed,
                cut,
            )
        else:
            logger.warning("drain complete in %.1fs: every running request finished", elapsed)
        self.should_exit = True


def _timeout_body(message: str) -> bytes:
    return json_bytes(error_body(message, "invalid_request_error", None, "request_timeout"))


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"
