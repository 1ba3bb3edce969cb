"""``membound bench {throughput, latency, serve, report}``.

The engine's CLI imports this module on every invocation and calls ``add_parser``; heavy
imports (torch via the engine, matplotlib, aiohttp, pynvml) happen inside the commands.
Standalone: ``python -m membound.bench.cli latency --load-format dummy ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _add_lengths(p: argparse.ArgumentParser, output_default: int | None) -> None:
    p.add_argument("--input-len", type=_positive_int, default=128, help="prompt tokens")
    p.add_argument("--output-len", type=_positive_int, default=output_default,
                   help="output tokens per request (a dataset's own lengths when unset; "
                        "128 for random prompts)")  # fmt: skip


def _add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-prompts", type=_positive_int, default=1000, help="requests to send")
    p.add_argument("--dataset", metavar="FILE", default=None,
                   help="JSONL ({'prompt', 'output_len'} per line) or ShareGPT JSON; "
                        "random token ids when unset")  # fmt: skip
    p.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="random lengths uniform in [L(1-r), L(1+r)]",
    )


def _add_throughput(sub: argparse._SubParsersAction) -> None:
    from membound.bench.offline import add_common_args, add_engine_args

    p = sub.add_parser("throughput", help="offline throughput: all requests at once",
                       description="Offline throughput of the engine: every request submitted "
                       "at once; requests/s, tokens/s, output tokens/s per GPU.")  # fmt: skip
    add_engine_args(p)
    _add_lengths(p, None)
    _add_dataset(p)
    add_common_args(p)
    p.set_defaults(func=_lazy("membound.bench.throughput"))


def _add_latency(sub: argparse._SubParsersAction) -> None:
    from membound.bench.offline import add_common_args, add_engine_args

    p = sub.add_parser("latency", help="TTFT/TPOT of one batch, achieved GB/s and TFLOP/s",
                       description="Latency of one batch: TTFT and TPOT over iterations, "
                       "achieved bandwidth and prefill TFLOP/s against the device's "
                       "datasheet and measured ceilings.")  # fmt: skip
    add_engine_args(p)
    p.add_argument("--batch-size", type=_positive_int, default=1, help="requests per batch")
    _add_lengths(p, 128)
    p.add_argument("--num-iters", type=_positive_int, default=5, help="timed iterations")
    p.add_argument("--num-iters-warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument(
        "--skip-ceilings", action="store_true", help="do not measure copy bandwidth and matmul rate"
    )
    add_common_args(p)
    p.set_defaults(func=_lazy("membound.bench.latency"))


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from membound.bench.offline import add_common_args

    p = sub.add_parser(
        "serve",
        help="load an OpenAI-compatible server (Poisson arrivals)",
        description="An asyncio load generator for any OpenAI-compatible /v1/completions "
        "streaming server, with vLLM's metric definitions.",
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server address")
    p.add_argument("--endpoint", default="/v1/completions", help="completions path")
    p.add_argument(
        "--model",
        default=None,
        help="model name sent to the server (default: the first of /v1/models)",
    )
    p.add_argument(
        "--model-label",
        default=None,
        help="model name recorded in the JSON (a planner preset such as llama-3-8b)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder: text prompts and ShareGPT output lengths",
    )
    p.add_argument(
        "--vocab-size",
        type=_positive_int,
        default=None,
        help="random token ids stay below this when there is no tokenizer (default: ids "
        "from the server's own /tokenize, always inside its vocabulary)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="send 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY)",
    )
    _add_lengths(p, None)
    _add_dataset(p)
    _add_serve_load(p)
    _add_server_facts(p)
    add_common_args(p)
    p.set_defaults(func=_lazy("membound.bench.serve"))


def _add_serve_load(p: argparse.ArgumentParser) -> None:
    """How the load arrives: rate, burstiness, concurrency, request body."""
    from membound.bench.serve import parse_rate

    p.add_argument(
        "--request-rate",
        type=parse_rate,
        default=float("inf"),
        help="requests per second (Poisson), or inf for all at once",
    )
    p.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="gamma shape of the arrival gaps (1 = Poisson; <1 burstier)",
    )
    p.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=None,
        help="most requests in flight at once (default: no limit)",
    )
    p.add_argument("--ignore-eos", action="store_true", help="ask for exactly --output-len tokens")
    p.add_argument("--extra-body", default=None, help="JSON merged into every request body")
    p.add_argument("--seed", type=int, default=0, help="prompts and arrival times")


def _add_server_facts(p: argparse.ArgumentParser) -> None:
    """What the JSON records about the server (for cost, energy and the planner)."""
    p.add_argument("--num-gpus", type=_positive_int, default=1, help="GPUs serving (cost, per GPU)")
    p.add_argument("--device-name", default=None, help="the server's GPU (default: this host's)")
    p.add_argument(
        "--precision", default=None, help="the server's weight precision, e.g. bf16 (planner)"
    )
    p.add_argument("--kv-dtype", default=None, help="the server's KV dtype (default: precision)")
    p.add_argument(
        "--energy-gpus",
        default="all",
        help="NVML indices to meter, comma-separated; 'all' or 'none'",
    )


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compare benchmark JSON files",
        description="A comparison table (and charts) across benchmark runs.",
    )
    p.add_argument("files", nargs="+", metavar="RESULT.json")
    p.add_argument("--output-json", metavar="FILE", default=None, help="write the table rows")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="throughput against batch/concurrency, and latency CDFs",
    )
    p.set_defaults(func=_lazy("membound.bench.report"))


def _lazy(module: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(importlib.import_module(module).main(args) or 0)

    return run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench`` and its subcommands on the ``membound`` command line."""
    p = subparsers.add_parser("bench", help="throughput, latency and serving benchmarks",
                              description="Benchmarks that report roofline units, energy and "
                              "cost, and write JSON the planner can calibrate from.")  # fmt: skip
    sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    _add_throughput(sub)
    _add_latency(sub)
    _add_serve(sub)
    _add_report(sub)

    def no_benchmark(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_benchmark)


def finish(doc: dict[str, Any], args: argparse.Namespace) -> int:
    """Write ``--output-json`` and ``--plot`` for a finished run."""
    if getattr(args, "output_json", None):
        from membound.bench.results import write_json

        write_json(doc, args.output_json)
        print(f"results written to {args.output_json}")
    if getattr(args, "plot", None):
        from membound.bench.plots import plot_result

        plot_result(doc, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="membound")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
