"""``membound plan``: will it fit, how fast, at what cost and energy, on which GPU.

The engine's CLI registers this with ``add_parser(subparsers)``; for a standalone run:
``python -m membound.planner.cli plan --model llama-3-8b --gpu h100,h200``.
Bad input is an error naming the problem and the valid choices, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence

from membound.config import ConfigError
from membound.planner.calibrate import Calibration
from membound.planner.errors import PlannerError
from membound.planner.hardware import HardwareTable, load_hardware
from membound.planner.precision import KV_DTYPES, WEIGHT_PRECISIONS, normalize_kv_dtype
from membound.planner.roofline import Efficiency

PROG = "membound plan"


def _kv_dtype(text: str) -> str:
    try:
        return normalize_kv_dtype(text)
    except PlannerError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _seconds(text: str) -> float:
    """``0.2``, ``0.2s`` or ``200ms`` -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 0.2, 0.2s or 200ms")
    value = float(match.group(1))
    return value / 1e3 if match.group(2) == "ms" else value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME|PATH", help="preset name or config.json / folder")
    p.add_argument("--gpu", metavar="NAME[,NAME...]", help="GPUs to compare (default: all)")
    p.add_argument(
        "--precision",
        choices=WEIGHT_PRECISIONS,
        help="weight precision (default: the checkpoint's quantization, else bf16)",
    )
    p.add_argument(
        "--kv-dtype",
        type=_kv_dtype,
        default="bf16",
        metavar="|".join(KV_DTYPES),
        help="KV-cache dtype (default: bf16)",
    )
    p.add_argument(
        "--tp", type=_positive_int, help="tensor-parallel degree (default: smallest that fits)"
    )
    p.add_argument("--input-len", type=_positive_int, default=1024, help="prompt tokens (1024)")
    p.add_argument("--output-len", type=_positive_int, default=256, help="generated tokens (256)")
    p.add_argument("--concurrency", type=_positive_int, default=1, help="requests in flight (1)")
    p.add_argument("--target-ttft", type=_seconds, metavar="SECONDS", help="e.g. 0.5 or 500ms")
    p.add_argument("--target-tpot", type=_seconds, metavar="SECONDS", help="e.g. 0.05 or 50ms")
    p.add_argument(
        "--price-per-gpu-hour",
        metavar="USD|NAME=USD,...",
        help="override prices: one figure for all GPUs, or per GPU",
    )
    p.add_argument("--hardware-file", metavar="FILE", help="TOML or JSON adding/overriding GPUs")
    p.add_argument("--calibration", metavar="FILE", help="output of 'membound plan calibrate'")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="FRACTION")
    p.add_argument(
        "--power-fraction",
        type=float,
        metavar="FRACTION",
        help="average power as a share of TDP for the energy estimate (default 1.0)",
    )
    p.add_argument("--list", action="store_true", help="list known GPUs and model presets")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", help="draw the roofline with each option on it")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``plan`` (with its ``calibrate`` and ``audit`` modes) on ``subparsers``."""
    plan = subparsers.add_parser(
        "plan",
        help="will it fit, how fast, at what cost, on which GPU",
        description="Plan a deployment from a roofline model: memory fit, TTFT, TPOT, "
        "tokens/s, $/M tokens and J/token per GPU option. See docs/planner.md.",
    )
    _add_plan_options(plan)
    plan.set_defaults(func=run_plan_command)
    modes = plan.add_subparsers(dest="plan_mode", metavar="{calibrate,audit}")
    cal = modes.add_parser("calibrate", help="fit efficiency factors to benchmark JSON")
    cal.add_argument("files", nargs="+", metavar="RESULT.json")
    cal.add_argument("-o", "--output", metavar="FILE", help="write the calibration JSON here")
    _add_shared(cal)
    cal.set_defaults(func=run_calibrate_command)
    aud = modes.add_parser("audit", help="flag claimed figures above the physical bounds")
    aud.add_argument("claims", metavar="CLAIMS.csv")
    _add_shared(aud)
    aud.set_defaults(func=run_audit_command)


def _add_shared(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given before the mode ("plan --json audit f.csv") is not reset.
    p.add_argument("--hardware-file", metavar="FILE", default=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def _guarded(body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except (PlannerError, ConfigError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2

    run.__name__ = body.__name__
    run.__doc__ = body.__doc__
    return run


def _hardware(args: argparse.Namespace) -> HardwareTable:
    table = load_hardware(getattr(args, "hardware_file", None))
    text = getattr(args, "price_per_gpu_hour", None)
    if not text:
        return table
    prices: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.rpartition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if price < 0:
            raise PlannerError(f"--price-per-gpu-hour {text!r}: {value!r} is not a price")
        prices[table.get(name).name if name else "*"] = price
    return table.with_prices(prices)


def _listing(table: HardwareTable) -> str:
    from membound.planner.presets import PRESET_NAMES

    lines = ["GPUs (dense peaks):"]
    for g in table.gpus:
        price = "-" if g.price_per_gpu_hour is None else f"${g.price_per_gpu_hour:.2f}/h"
        lines.append(
            f"  {g.name:14s} {g.memory_gib:6.1f} GiB {g.bandwidth_gbs:6.0f} GB/s "
            f"bf16 {g.dense_bf16_tflops:5.0f} TFLOP/s  {price} {g.price_source} {g.price_date}"
        )
    lines += ["model presets:", "  " + ", ".join(PRESET_NAMES)]
    return "\n".join(lines)


@_guarded
def run_plan_command(args: argparse.Namespace) -> int:
    """``membound plan --model ... --gpu ...``."""
    from membound.planner.plan import PlanRequest, run_plan
    from membound.planner.presets import load_model
    from membound.planner.report import plan_json, render_plan_text
    from membound.planner.workload import EngineLimits, Workload

    table = _hardware(args)
    if args.list:
        print(_listing(table))
        return 0
    if not args.model:
        raise PlannerError("--model is required (a preset name or a config.json path)")
    shape = load_model(args.model)
    calibration = Calibration.load(args.calibration) if args.calibration else Calibration()
    if args.power_fraction is not None:
        calibration = _with_power(calibration, args.power_fraction)
    request = PlanRequest(
        shape=shape,
        gpus=table.select(args.gpu),
        precision=args.precision or shape.checkpoint_precision or "bf16",
        kv_dtype=args.kv_dtype,
        workload=Workload(
            args.input_len, args.output_len, args.concurrency, args.target_ttft, args.target_tpot
        ),  # fmt: skip
        tp=args.tp,
        limits=EngineLimits(gpu_memory_utilization=args.gpu_memory_utilization),
        calibration=calibration,
    )
    result = run_plan(request)
    print(plan_json(result) if args.json else render_plan_text(result))
    if args.plot:
        from membound.planner.plot import plot_roofline

        plot_roofline(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _with_power(calibration: Calibration, fraction: float) -> Calibration:
    if not 0 < fraction <= 1:
        raise PlannerError(f"--power-fraction must be in (0, 1], got {fraction}")

    def change(eff: Efficiency) -> Efficiency:
        return dataclasses.replace(eff, power_fraction=fraction, power_measured=False)

    per_gpu = tuple((name, change(eff)) for name, eff in calibration.per_gpu)
    return Calibration(change(calibration.default), per_gpu)


@_guarded
def run_calibrate_command(args: argparse.Namespace) -> int:
    """``membound plan calibrate results/*.json [-o calibration.json]``."""
    import json

    from membound.planner.calibrate import calibrate, read_benchmark
    from membound.planner.report import render_calibration_text, render_json

    records = [read_benchmark(path) for path in args.files]
    calibration, fits = calibrate(records, _hardware(args))
    if getattr(args, "json", False):
        print(render_json(calibration.to_dict()))
    else:
        print(render_calibration_text(calibration, fits))
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                json.dump(calibration.to_dict(), f, indent=2)
        except OSError as e:
            raise PlannerError(f"could not write {args.output!r}: {e}") from e
        print(f"wrote {args.output}; use it with --calibration {args.output}", file=sys.stderr)
    return 0


@_guarded
def run_audit_command(args: argparse.Namespace) -> int:
    """``membound plan audit CLAIMS.csv``: exit 1 when a claim is impossible."""
    from membound.planner.audit import audit, read_claims
    from membound.planner.report import audit_to_dict, render_audit_text, render_json

    verdicts = audit(read_claims(args.claims), _hardware(args))
    if getattr(args, "json", False):
        print(render_json(audit_to_dict(verdicts)))
    else:
        print(render_audit_text(verdicts))
    return 1 if any(v.verdict == "impossible" for v in verdicts) else 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone ``membound`` parser holding only ``plan`` (for ``python -m``)."""
    parser = argparse.ArgumentParser(prog="membound")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
