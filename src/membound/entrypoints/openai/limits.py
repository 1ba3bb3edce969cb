"""Request limits (each configurable, each with a safe default) and their enforcement.

The body size is enforced by an ASGI middleware before any JSON parsing; the others are
checked per request and answered with a 400 that names the parameter and its limit. A full
waiting queue is a 503 with Retry-After.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

from membound.config.options import add_options, option, values_from
from membound.entrypoints.openai.errors import OpenAIError, bad_request, send_error

_DRAIN_CAP_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Per-request limits; each field's option() is its flag (config/options.py)."""

    max_body_bytes: int = option(8 * 1024 * 1024, "largest request body; bigger ones get 413")
    max_n: int = option(16, "largest n per request")
    max_tokens: int | None = option(
        None, "largest max_tokens per request", flag="--max-tokens-limit",
        dest="max_tokens_limit", default_text="the context length")
    max_stop: int = option(16, "most stop strings per request")
    max_logprobs: int = option(20, "largest logprobs / top_logprobs (at most 20)")
    max_prompts: int = option(64, "most prompts in one completions request")
    max_waiting_requests: int = option(
        1024, "waiting-queue bound; beyond it requests get 503 + Retry-After")
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{f.name} must be an integer >= 0, got {value!r}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        add_options(parser.add_argument_group("limits"), ServerLimits)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerLimits:
        return cls(**values_from(cls, args))

    # ---- per-request checks ------------------------------------------------------------
    def check(self, *, n: int, max_tokens: int | None, stop: list[str], logprobs: int | None,
              num_prompts: int = 1, logprobs_param: str = "logprobs") -> None:
        """Raise a 400 OpenAIError for the first parameter beyond its limit."""
        _in_range("n", n, 1, self.max_n)
        if self.max_tokens is not None and max_tokens is not None:
            _in_range("max_tokens", max_tokens, 1, self.max_tokens)
        _at_most("stop", len(stop), self.max_stop, "stop strings")
        if logprobs is not None:
            _in_range(logprobs_param, logprobs, 0, min(self.max_logprobs, 20))
        _at_most("prompt", num_prompts, self.max_prompts, "prompts")

    def check_queue(self, num_waiting: int) -> None:
        if num_waiting >= self.max_waiting_requests:
            raise OpenAIError(
                503,
                f"the server is overloaded: {num_waiting} requests are waiting (limit "
                f"{self.max_waiting_requests}); retry later",
                code="server_overloaded",
                headers={"Retry-After": str(self.retry_after_s)},
            )


def _in_range(param: str, value: int, low: int, high: int) -> None:
    if value > high:  # values below ``low`` are SamplingParams' to report
        raise bad_request(
            f"{param} must be between {low} and {high} on this server, got {_shown(value)}",
            param=param,
        )


def _at_most(param: str, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise bad_request(
            f"{param} may hold at most {limit} {what} on this server, got {count}", param=param
        )


def _shown(value: int) -> str:
    text = str(value)
    return text if len(text) <= 20 else f"a {len(text)}-digit number"


class BodySizeLimitMiddleware:
    """Reads a request body up to ``max_bytes`` and answers 413 beyond it; the app then
    gets the whole body as one message, and later receive() calls (disconnects) as usual."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drain(receive, declared)
            await send_error(send, self._too_large(declared))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > self.max_bytes:
                if more:
                    await _drain(receive, None)
                await send_error(send, self._too_large(None))
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int | None) -> OpenAIError:
        got = f" ({size} bytes)" if size is not None else ""
        return OpenAIError(
            413, f"the request body is too large{got}; the limit is {self.max_bytes} bytes",
            code="request_too_large",
        )


async def _drain(receive: Any, declared: int | None) -> None:
    """Read and drop the rest of an oversized body (up to _DRAIN_CAP_BYTES), so that the
    client, still sending, reads the 413 instead of a reset connection."""
    if declared is not None and declared > _DRAIN_CAP_BYTES:
        return
    seen = 0
    while seen <= _DRAIN_CAP_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
