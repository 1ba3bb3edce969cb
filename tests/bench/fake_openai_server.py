"""A tiny OpenAI-compatible streaming /v1/completions server (aiohttp.web) for the serve
benchmark's tests: one chunk per token after a fixed delay, and failures on request.

Prompts (text, or the first token id) select the behaviour: "FAIL" / 13 -> HTTP 500,
"EMPTY" -> a stream with no chunk, "ERROR" -> an error event, "NOUSAGE" -> no usage chunk,
"LENGTH" -> no usage, tokens two to a chunk, then an empty chunk with finish_reason "length"
(llama_cpp.server's streams).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

MODEL = "fake-model"


@dataclass
class ServerStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


def _kind(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "FAIL" if prompt and prompt[0] == 13 else "OK"
    return prompt if prompt in ("FAIL", "EMPTY", "ERROR", "NOUSAGE", "LENGTH") else "OK"


def make_app(stats: ServerStats, first_delay: float, gap: float) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stats.requests += 1
        kind = _kind(body["prompt"])
        if kind == "FAIL":
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await _stream(request, body, kind)
        finally:
            stats.in_flight -= 1

    async def _stream(request: web.Request, body: dict[str, Any], kind: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        if kind == "ERROR":
            await send({"error": {"message": "injected error event"}})
        elif kind != "EMPTY":
            await asyncio.sleep(first_delay)
            n = int(body["max_tokens"])
            if kind == "LENGTH":
                for i in range(0, n, 2):
                    await send({"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]})
                await send({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
                n = 0
            for i in range(n):
                if i:
                    await asyncio.sleep(gap)
                await send({"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]})
            if kind not in ("NOUSAGE", "LENGTH"):
                prompt = body["prompt"]
                n_in = len(prompt) if isinstance(prompt, list) else len(prompt.split())
                await send(
                    {"choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": n}}
                )
        await send("[DONE]")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return app


@contextmanager
def running_server(
    first_delay: float = 0.02, gap: float = 0.005
) -> Iterator[tuple[str, ServerStats]]:
    """Serve on 127.0.0.1 (a free port) in a background thread; yields (base URL, stats)."""
    stats = ServerStats()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(make_app(stats, first_delay, gap))

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "fake server did not start"
    try:
        yield f"http://127.0.0.1:{port}", stats
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
