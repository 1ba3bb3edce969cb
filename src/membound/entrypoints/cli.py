"""The ``membound`` command line: generate, info, plan (and more as issues land)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LOG_LEVEL = "WARNING"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default (once; options derived from config fields say it already)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS) or not (
            action.option_strings
        ):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every (sub)command parser: defaults in ``--help``, and the global flags accepted
    after the subcommand too (``membound serve --log-level INFO``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--log-level", type=str.upper, choices=_LOG_LEVELS, default=argparse.SUPPRESS,
            help=f"log level (default: {DEFAULT_LOG_LEVEL}; serve: INFO, for its access log)",
        )


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from membound.engine.engine_args import EngineArgs

    p = sub.add_parser(
        "generate",
        help="generate text for one or more prompts",
        description="Generate text. MODEL (a checkpoint folder, .gguf file or hub id) may be "
        "omitted to "
        "use the bundled default model.",
    )
    p.add_argument("args", nargs="+", metavar="[MODEL] PROMPT",
                   help="optional model (a folder, ./relative or /absolute path, or hub id "
                   "ORG/NAME), then prompts")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 means greedy (default: the model's generation_config, else 1.0)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None, help="0 disables")
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", dest="sampling_seed", type=int, default=None,
                   help="per-request sampling seed (reproducible output)")
    p.add_argument("--n", type=int, default=1, help="completions per prompt")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--chat", action="store_true",
                   help="treat each prompt as a user message and apply the chat template")
    EngineArgs.add_cli_args(p, seed_flag="--engine-seed")
    p.set_defaults(func=_run_generate)


def split_model_and_prompts(
    positional: Sequence[str], model: str | None
) -> tuple[str | None, list[str]]:
    """``generate`` takes an optional MODEL before the prompts. The first positional is the
    model if it is a checkpoint folder, if it is written as a path (``/x``, ``./x``, ``../x``,
    ``~/x``, no spaces: a missing one is then an error naming it, not a prompt), or if it
    looks like a hub id ``ORG/NAME`` and prompts follow it."""
    args = list(positional)
    if model is not None or not args:
        return model, args
    first = args[0]
    expanded = os.path.expanduser(first)
    gguf = expanded.lower().endswith(".gguf") and os.path.isfile(expanded)
    if os.path.isfile(os.path.join(expanded, "config.json")) or gguf or _looks_like_path(first):
        return first, args[1:]
    if len(args) > 1 and _HUB_ID.match(first) and not os.path.exists(expanded):
        return first, args[1:]
    return None, args


def _looks_like_path(text: str) -> bool:
    return not any(c.isspace() for c in text) and (
        text.startswith(("/", "./", "../", "~")) or (os.sep in text and os.path.exists(text))
    )


def _run_generate(args: argparse.Namespace) -> int:
    from membound.engine.engine_args import EngineArgs
    from membound.entrypoints.llm import LLM

    model, prompts = split_model_and_prompts(args.args, args.model)
    if not prompts:
        print("error: no prompt given; usage: membound generate [MODEL] PROMPT...",
              file=sys.stderr)
        return 2
    engine_args = EngineArgs.from_cli_args(args)
    kwargs = {k: v for k, v in vars(engine_args).items() if k != "model"}
    llm = LLM(model, **kwargs)
    params = llm.get_default_sampling_params(
        n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.sampling_seed,
        max_tokens=args.max_tokens, stop=args.stop, ignore_eos=args.ignore_eos,
    )
    t0 = time.perf_counter()
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    else:
        outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    n_prompt = sum(len(o.prompt_token_ids) for o in outs)
    n_out = sum(len(c.token_ids) for o in outs for c in o.outputs)
    for prompt, out in zip(prompts, outs):
        for c in out.outputs:
            tag = f" [{c.index}]" if len(out.outputs) > 1 else ""
            print(f"--- prompt{tag}: {prompt!r}")
            print(c.text if args.chat else prompt + c.text)
    print(
        f"--- {len(outs)} prompt(s): {n_prompt} prompt tokens, {n_out} output tokens in "
        f"{elapsed:.2f}s ({n_out / max(elapsed, 1e-9):.1f} output tokens/s)"
    )
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print device, memory and versions")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from membound.entrypoints.sysinfo import collect_info

    for key, value in collect_info().items():
        print(f"{key:>22}: {value}")
    return 0


def _add_optional(sub: argparse._SubParsersAction, module: str) -> None:
    """Subcommands owned by other packages register themselves through ``add_parser``."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if e.name is None or not module.startswith(e.name):
            raise
        return
    mod.add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    from membound import __version__

    parser = Parser(prog="membound", description="Memory-centric LLM inference and GPU planning.")
    parser.add_argument("--version", action="version", version=f"membound {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_generate(sub)
    _add_info(sub)
    for module in (
        "membound.entrypoints.chat_cli",
        "membound.entrypoints.openai.cli",
        "membound.bench.cli",
        "membound.entrypoints.eval",
        "membound.planner.cli",
    ):
        _add_optional(sub, module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(args, "log_level", None) or getattr(args, "default_log_level", DEFAULT_LOG_LEVEL)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def console_main() -> None:
    """The ``membound`` command: re-executes itself once with transparent huge pages for
    glibc's allocations (kernels/cpu_hugepages.py), then runs ``main``."""
    from membound.kernels.cpu_hugepages import reexec_with_hugepages

    reexec_with_hugepages(sys.argv)
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
