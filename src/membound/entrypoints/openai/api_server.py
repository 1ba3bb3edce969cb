"""The FastAPI app: ``build_app(engine, args)``.

```
request -> AccessLogMiddleware (one INFO line per request) -> BodyTimeoutMiddleware (408)
        -> DrainMiddleware (503 while shutting down) -> ConsolePages -> APIKeyMiddleware (401)
        -> BodySizeLimitMiddleware (413) -> ErrorMiddleware (500, no traceback)
        -> routes (OpenAIError -> its status; a body not declared application/json -> 415;
           bad JSON/types, unknown or unsupported fields -> 400)
```
The header read timeout and the graceful shutdown live around the app (lifecycle.py).
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from membound.engine.async_engine import AsyncLLMEngine
from membound.engine.engine_args import generation_defaults
from membound.engine.intake import short
from membound.engine.llm_engine import LLMEngine
from membound.entrypoints.openai import serving_chat, serving_completions
from membound.entrypoints.openai.access_log import AccessLogMiddleware
from membound.entrypoints.openai.console import mount_console
from membound.entrypoints.openai.errors import (
    OpenAIError,
    bad_request,
    error_body,
    internal_error,
    send_error,
    status_phrase,
)
from membound.entrypoints.openai.lifecycle import BodyTimeoutMiddleware, DrainMiddleware
from membound.entrypoints.openai.limits import BodySizeLimitMiddleware
from membound.entrypoints.openai.metrics import CONTENT_TYPE, ServerMetrics
from membound.entrypoints.openai.protocol import (
    DetokenizeRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)
from membound.entrypoints.openai.server_args import API_KEY_ENV, ServerArgs
from membound.entrypoints.openai.serving_base import (
    ClientDisconnected,
    ServerState,
    parse_body,
)

logger = logging.getLogger("membound.server")

__all__ = ["API_KEY_ENV", "ServerArgs", "build_app"]


def build_app(engine: AsyncLLMEngine | LLMEngine, args: ServerArgs | argparse.Namespace) -> FastAPI:
    """The OpenAI-compatible app around ``engine``; the app's lifespan starts and stops the
    engine loop."""
    server_args = args if isinstance(args, ServerArgs) else ServerArgs.from_cli_args(args)
    async_engine = engine if isinstance(engine, AsyncLLMEngine) else AsyncLLMEngine(engine)
    state = _make_state(async_engine, server_args)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await async_engine.start()
        try:
            yield
        finally:
            await async_engine.shutdown()

    app = FastAPI(title="membound", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.membound = state
    _add_routes(app, state)
    _add_exception_handlers(app)
    app.add_middleware(ErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=server_args.limits.max_body_bytes)
    if server_args.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=server_args.api_key)
    mount_console(app, state)  # its public pages wrap the API-key check
    _add_lifecycle_middleware(app, async_engine, server_args)
    return app


def _add_lifecycle_middleware(app: FastAPI, engine: AsyncLLMEngine, args: ServerArgs) -> None:
    """Outermost: shutdown 503s, the body read timeout, then the access log around all."""
    app.add_middleware(DrainMiddleware, engine=engine)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=args.body_timeout_s)
    if args.access_log:
        app.add_middleware(AccessLogMiddleware)


def _make_state(async_engine: AsyncLLMEngine, args: ServerArgs) -> ServerState:
    engine = async_engine.engine
    path = engine.config.model
    names = list(args.served_model_names) or [os.path.basename(os.path.normpath(path))]
    metrics = ServerMetrics(names[0], lambda: async_engine.latest_stats)
    async_engine.observer = metrics
    return ServerState(
        engine=async_engine, model_names=names, model_path=path,
        max_model_len=engine.config.scheduler_config.max_model_len,
        vocab_size=engine.config.model_config.vocab_size, tokenizer=engine.tokenizer,
        limits=args.limits, metrics=metrics,
        sampling_defaults=generation_defaults(engine.config),
        chat_template=args.read_chat_template(),
        parse_special_tokens_in_messages=args.parse_special_tokens_in_messages,
        tool_call_parser=args.tool_call_parser,
    )


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> Response:
        if state.engine.is_running:
            return Response(status_code=200)
        err = OpenAIError(503, "the engine loop is not running", code="engine_dead")
        return JSONResponse(err.body(), status_code=503)

    def card(name: str) -> ModelCard:
        return ModelCard(id=name, root=state.model_path, max_model_len=state.max_model_len)

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse(ModelList(data=[card(n) for n in state.model_names]).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        return JSONResponse(card(state.check_model(model_id)).model_dump())

    @app.get("/version")
    async def version() -> Response:
        return JSONResponse({"version": _version()})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Response:
        return await serving_completions.create_completion(state, raw)

    @app.post("/v1/chat/completions")
    async def chat(raw: Request) -> Response:
        return await serving_chat.create_chat_completion(state, raw)

    @app.post("/tokenize")
    async def tokenize(raw: Request) -> Response:
        return JSONResponse(await _tokenize(state, raw))

    @app.post("/detokenize")
    async def detokenize(raw: Request) -> Response:
        req = await parse_body(raw, DetokenizeRequest)
        state.check_model(req.model)
        tok = state.need_tokenizer("detokenize")
        ids = req.tokens
        bad = [t for t in ids if not 0 <= t < state.vocab_size]
        if bad:
            raise bad_request(f"tokens must be token ids in [0, {state.vocab_size}); got "
                              f"{short(bad)}", param="tokens", code="invalid_token_id")
        return JSONResponse({"prompt": tok.decode(ids, skip_special_tokens=False)})


async def _tokenize(state: ServerState, raw: Request) -> dict[str, Any]:
    req = await parse_body(raw, TokenizeRequest)
    state.check_model(req.model)
    tok = state.need_tokenizer("tokenize")
    if (req.prompt is None) == (req.messages is None):
        raise bad_request("send exactly one of prompt or messages", param="prompt")
    if req.prompt is not None:
        ids = tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    else:
        ids = serving_chat.encode_messages(state, req.messages or [], req.add_generation_prompt)
    return {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("membound")
    except PackageNotFoundError:
        return "unknown"


def _add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientDisconnected)
    async def disconnected(request: Request, exc: ClientDisconnected) -> Response:
        return JSONResponse(error_body("client disconnected", "invalid_request_error"), 499)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse(bad_request(f"invalid request: {exc.errors()[:1]}").body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else status_phrase(exc.status_code)
        if exc.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path}"
        err = OpenAIError(exc.status_code, message)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


class APIKeyMiddleware:
    """401 unless ``Authorization: Bearer <key>`` matches (constant-time); /health is open."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            await self.app(scope, receive, send)
            return
        auth = b""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                auth = value
                break
        scheme, _, token = auth.partition(b" ")
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)):
            await send_error(send, OpenAIError(
                401, "invalid or missing API key; send Authorization: Bearer <key>",
                code="invalid_api_key",
            ))
            return
        await self.app(scope, receive, send)


class ErrorMiddleware:
    """Turns an unexpected exception into a 500 without a traceback (logged instead)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:  # noqa: BLE001 - the client gets a plain 500
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(send, internal_error())
