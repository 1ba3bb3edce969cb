"""``membound serve [MODEL]``: the OpenAI-compatible server.

This module is imported by the main CLI even when the server extras are missing, so fastapi,
uvicorn and prometheus-client are imported only inside ``run_server``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

logger = logging.getLogger("membound.server")

_SERVER_MODULES = ("fastapi", "uvicorn", "pydantic", "prometheus_client")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from membound.engine.engine_args import EngineArgs
    from membound.entrypoints.openai.limits import ServerLimits

    p = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible HTTP server",
        description="Serve a model over an OpenAI-compatible API (/v1/completions, "
        "/v1/chat/completions, /v1/models, /health, /metrics, /tokenize, /detokenize). MODEL "
        "(a checkpoint folder or hub id) may be omitted to use the bundled default model.",
    )
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $MEMBOUND_API_KEY)")
    p.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="model name(s) clients use (default: the model folder's name)")
    p.add_argument("--uvicorn-log-level", default="warning",
                   help="uvicorn's log level (access logs carry paths, never bodies)")
    ServerLimits.add_cli_args(p)
    EngineArgs.add_cli_args(p)
    p.set_defaults(func=run_server)
    return p


def missing_server_modules() -> list[str]:
    return [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]


def run_server(args: argparse.Namespace) -> int:
    missing = missing_server_modules()
    if missing:
        print(f"error: `membound serve` needs {', '.join(missing)}, which are not installed; "
              "install the server extras with: pip install 'membound[server]'", file=sys.stderr)
        return 2
    import uvicorn

    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine
    from membound.entrypoints.openai.api_server import ServerArgs, build_app

    server_args = ServerArgs.from_cli_args(args)  # validates the limits before loading
    engine = LLMEngine.from_engine_args(EngineArgs.from_cli_args(args), progress=True)
    app = build_app(engine, server_args)
    names = ", ".join(app.state.membound.model_names)
    print(f"membound: serving {names} on http://{args.host}:{args.port}/v1 "
          f"(auth {'on' if server_args.api_key else 'off'})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                timeout_graceful_shutdown=5)
    return 0
