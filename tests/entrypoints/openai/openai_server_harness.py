"""Test harness: a live membound server (uvicorn on 127.0.0.1, a free port, in a thread)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.entrypoints.openai.api_server import ServerArgs, build_app
from membound.entrypoints.openai.limits import ServerLimits

API_KEY = "test-key-123"
MODEL = "tiny"
MAX_MODEL_LEN = 128


class LiveServer:
    """uvicorn serving ``app`` on a socket bound to a free port; ``stop()`` shuts it down."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    @property
    def state(self) -> Any:
        return self.app.state.membound

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def start_server(model: Path, limits: ServerLimits | None = None, api_key: str | None = API_KEY,
                 tool_call_parser: str | None = None, **engine_kwargs: Any) -> LiveServer:
    kwargs = {"max_model_len": MAX_MODEL_LEN, "block_size": 4, **engine_kwargs}
    engine = LLMEngine.from_engine_args(EngineArgs(model=str(model), **kwargs))
    args = ServerArgs(served_model_names=(MODEL,), api_key=api_key,
                      limits=limits or ServerLimits(), tool_call_parser=tool_call_parser)
    return LiveServer(build_app(engine, args))


def read_metrics(client: Any) -> dict[str, float]:
    """/metrics as {sample name: value summed over labels, 'name{labels}': value}."""
    text = client.get("/metrics").text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        values[name] = values.get(name, 0.0) + float(value)
        if name_labels != name:
            values[name_labels] = float(value)
    return values


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
