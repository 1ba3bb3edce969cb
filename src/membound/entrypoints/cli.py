"""The ``membound`` command line: generate, info, plan (and more as issues land)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Sequence

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from membound.engine.engine_args import EngineArgs

    p = sub.add_parser(
        "generate",
        help="generate text for one or more prompts",
        description="Generate text. MODEL (a checkpoint folder or hub id) may be omitted to "
        "use the bundled default model.",
    )
    p.add_argument("args", nargs="+", metavar="[MODEL] PROMPT", help="optional model, then prompts")
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
    """``generate`` takes an optional MODEL before the prompts: the first positional is the
    model if it is a checkpoint folder, or looks like a hub id and prompts follow it."""
    args = list(positional)
    if model is not None or not args:
        return model, args
    first = os.path.expanduser(args[0])
    if os.path.isfile(os.path.join(first, "config.json")):
        return args[0], args[1:]
    if len(args) > 1 and _HUB_ID.match(args[0]) and not os.path.exists(first):
        return args[0], args[1:]
    return None, args


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

    parser = argparse.ArgumentParser(
        prog="membound", description="Memory-centric LLM inference and GPU planning."
    )
    parser.add_argument("--version", action="version", version=f"membound {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    _add_info(sub)
    for module in (
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
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
