"""ServerArgs: the server's own options (where to listen, auth, timeouts, shutdown, logging,
chat rendering), each declared once with its default and help; ``membound serve``'s flags
are derived from these fields (config/options.py). No server imports here: the CLI loads
this module without the server extras."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field

from membound.config.options import add_options, option, values_from
from membound.entrypoints.openai.limits import ServerLimits

API_KEY_ENV = "MEMBOUND_API_KEY"


@dataclass(frozen=True)
class ServerArgs:
    host: str = option("127.0.0.1", "address to bind")
    port: int = option(8000, "port to bind")
    served_model_names: tuple[str, ...] = option(
        (),
        "names clients must use in 'model' (the first is reported in metrics); a last "
        "value written as a path (/x, ./x, ~/x) or naming a folder is taken as MODEL",
        flag="--served-model-name",
        dest="served_model_name",
        metavar="NAME",
        default_text="the model folder's name",
    )
    api_key: str | None = option(
        None,
        "require 'Authorization: Bearer KEY' on every route but /health",
        default_text=f"${API_KEY_ENV}",
    )
    chat_template: str | None = option(
        None,
        "chat template to use instead of the model's: a Jinja file, or the template itself",
        metavar="FILE|STRING",
        default_text="the model's",
    )
    parse_special_tokens_in_messages: bool = option(
        False,
        "encode special-token text inside chat message content (e.g. '<|im_start|>') "
        "as control tokens; only for trusted callers (default off: it is encoded as text)",
    )
    tool_call_parser: str | None = option(
        None,
        "how the model writes tool calls, for tool_choice 'auto' (vLLM's flag): hermes "
        "(Hermes, Qwen), llama3_json (Llama 3.x), mistral",
        choices=("hermes", "llama3_json", "mistral"),
        default_text="none: tool_choice 'auto' is refused",
    )
    drain_timeout_s: float = option(
        30.0,
        "on SIGTERM/SIGINT: seconds running requests may take to finish (new ones get "
        "503) before open streams are ended with an error event",
    )
    header_timeout_s: float = option(
        10.0, "seconds a client may take to send its request line and headers"
    )
    body_timeout_s: float = option(
        30.0, "seconds the server waits for the next piece of a request body (408 after)"
    )
    keep_alive_timeout_s: float = option(5.0, "seconds an idle keep-alive connection stays open")
    access_log: bool = option(
        True, "one INFO line per request: method, path, status, tokens, latency"
    )
    uvicorn_log_level: str = option(
        "warning",
        "uvicorn's own log level",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        type=str.lower,
    )
    limits: ServerLimits = field(default_factory=ServerLimits)

    def __post_init__(self) -> None:
        for name in (
            "drain_timeout_s",
            "header_timeout_s",
            "body_timeout_s",
            "keep_alive_timeout_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("server")
        add_options(g, ServerArgs)
        g.add_argument(
            "--disable-log-requests",
            dest="access_log",
            action="store_false",
            help="vLLM's spelling of --no-access-log",
        )
        ServerLimits.add_cli_args(parser)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        values = values_from(cls, args)
        if not values.get("api_key"):
            values["api_key"] = os.environ.get(API_KEY_ENV) or None
        return cls(**values, limits=ServerLimits.from_cli_args(args))

    def read_chat_template(self) -> str | None:
        """The --chat-template text: a file's contents when it names a file, else itself."""
        value = self.chat_template
        if value is None:
            return None
        path = os.path.expanduser(value)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
        if "{" not in value:
            raise ValueError(
                f"--chat-template {value!r} is neither a file nor a Jinja template; pass the "
                "path of a .jinja file or the template text"
            )
        return value


def take_model_from_names(args: argparse.Namespace) -> argparse.Namespace:
    """``serve --served-model-name m /path``: argparse lets the names swallow the model; give
    it back when no MODEL was parsed and the last name is written as a path or names a
    folder (a hub id stays a name: put MODEL first, or end the names with ``--``)."""
    names = list(getattr(args, "served_model_name", None) or ())
    if getattr(args, "model", None) is not None or len(names) < 2:
        return args
    last = names[-1]
    if last.startswith(("/", "./", "../", "~")) or os.path.isdir(last):
        return argparse.Namespace(**{**vars(args), "model": last, "served_model_name": names[:-1]})
    return args
