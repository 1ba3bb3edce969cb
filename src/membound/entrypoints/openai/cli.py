"""``membound serve [MODEL]``: the OpenAI-compatible server.

This module is imported by the main CLI even when the server extras are missing, so fastapi,
uvicorn and prometheus-client are imported only inside ``run_server``. Every flag is derived
from a field: ServerArgs (server_args.py), ServerLimits and the engine's configs.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

logger = logging.getLogger("membound.server")

_SERVER_MODULES = ("fastapi", "uvicorn", "pydantic", "prometheus_client")
# after the drain, how long uvicorn may take to close connections and stop tasks
_CLOSE_GRACE_S = 5.0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from membound.engine.engine_args import EngineArgs
    from membound.entrypoints.openai.server_args import ServerArgs

    p = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible HTTP server",
        description="Serve a model over an OpenAI-compatible API (/v1/completions, "
        "/v1/chat/completions, /v1/models, /health, /metrics, /tokenize, /detokenize). MODEL "
        "(a checkpoint folder or hub id) may be omitted to use the bundled default model.",
    )
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="checkpoint folder or hub id (default: the bundled model)")
    ServerArgs.add_cli_args(p)
    EngineArgs.add_cli_args(p)
    p.set_defaults(func=run_server, default_log_level="INFO")
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

    from membound.engine.async_engine import AsyncLLMEngine
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine
    from membound.entrypoints.openai.api_server import build_app
    from membound.entrypoints.openai.lifecycle import DrainingServer, header_timeout_protocol
    from membound.entrypoints.openai.server_args import ServerArgs, take_model_from_names

    args = take_model_from_names(args)
    server_args = ServerArgs.from_cli_args(args)  # validates the server options before loading
    server_args.read_chat_template()
    engine_args = EngineArgs.from_cli_args(args)
    engine = AsyncLLMEngine.build(lambda: LLMEngine.from_engine_args(engine_args, progress=True))
    app = build_app(engine, server_args)
    names = ", ".join(app.state.membound.model_names)
    print(f"membound: serving {names} on http://{server_args.host}:{server_args.port}/v1 "
          f"(auth {'on' if server_args.api_key else 'off'})", file=sys.stderr)
    config = uvicorn.Config(
        app, host=server_args.host, port=server_args.port,
        log_level=server_args.uvicorn_log_level, access_log=False,
        http=header_timeout_protocol(server_args.header_timeout_s),
        timeout_keep_alive=server_args.keep_alive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(_CLOSE_GRACE_S),
    )
    DrainingServer(config, engine, server_args.drain_timeout_s).run()
    logger.warning("server stopped")
    return 0
