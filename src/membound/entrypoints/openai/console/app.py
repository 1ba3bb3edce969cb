"""``mount_console(app, state)``: the console's JSON routes and pages on the server's app.

```
GET  /console/api/state          queues, tokens/s, KV block map, memory split, latencies
GET  /console/api/plan/options   the planner form's choices and defaults
POST /console/api/plan           membound plan --json for the body's options (+ roofline)
GET  /, /console/{chat,dashboard,planner}, /console/static/*   pages (ConsolePages)
```

The JSON routes are ordinary routes, so the API key, body limit and error handling apply to
them as to every other route. The dashboard's snapshot is taken on the engine thread
between two steps (``AsyncLLMEngine.call_on_engine_thread``): LLMEngine is not thread-safe.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from membound.engine.async_engine import EngineDeadError
from membound.engine.kv_snapshot import EngineSnapshot, take_snapshot
from membound.entrypoints.openai.console.live import LiveRecorder, ObserverTee, state_document
from membound.entrypoints.openai.console.pages import ConsolePages
from membound.entrypoints.openai.console.plan_api import (
    PLAN_ERRORS,
    plan_options,
    run_web_plan,
)
from membound.entrypoints.openai.errors import OpenAIError, bad_request
from membound.entrypoints.openai.serving_base import ServerState, engine_dead, parse_body

SNAPSHOT_TIMEOUT_S = 10.0


class PlanBody(BaseModel):
    """Any JSON object; plan_api checks the fields (they mirror `membound plan`'s flags)."""

    model_config = ConfigDict(extra="allow")


def mount_console(app: FastAPI, state: ServerState) -> None:
    """Add the console to ``app``. Call it last in ``build_app``: the page middleware must
    wrap the API-key middleware (pages are public, data is not)."""
    engine = state.engine
    recorder = LiveRecorder(lambda: engine.latest_stats)
    engine.observer = ObserverTee(engine.observer, recorder)
    app.state.console = recorder

    @app.get("/console/api/state")
    async def console_state() -> Response:
        snap = await _snapshot(state)
        doc = state_document(snap, recorder, time.monotonic(), state.model_name,
                             state.max_model_len)
        return JSONResponse(doc)

    @app.get("/console/api/plan/options")
    async def console_plan_options() -> Response:
        return JSONResponse(plan_options())

    @app.post("/console/api/plan")
    async def console_plan(raw: Request) -> Response:
        body = (await parse_body(raw, PlanBody)).model_dump()
        try:
            doc = await asyncio.to_thread(run_web_plan, body)
        except PLAN_ERRORS as e:
            raise bad_request(str(e)) from None
        return JSONResponse(doc)

    app.add_middleware(ConsolePages)


async def _snapshot(state: ServerState) -> EngineSnapshot:
    try:
        return await asyncio.wait_for(
            state.engine.call_on_engine_thread(take_snapshot), SNAPSHOT_TIMEOUT_S
        )
    except EngineDeadError as e:
        raise engine_dead(e) from None
    except asyncio.TimeoutError:
        raise OpenAIError(503, f"the engine took more than {SNAPSHOT_TIMEOUT_S:.0f} s to answer "
                          "(a long step?); try again", code="engine_busy") from None
