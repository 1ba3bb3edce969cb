"""``membound plan``: will it fit, how fast, at what cost and energy, on which GPU.

The engine's CLI registers this with ``add_parser(subparsers)``; for a standalone run:
``python -m membound.planner.cli plan --model llama-3-8b --gpu h100,h200``.
Bad input is an error naming the problem and the valid choices, exit code 2.
The plan options themselves (flags, hardware table, request) live in plan_options.py,
which the web console shares.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from membound.config import ConfigError
from membound.planner.calibrate import Calibration
from membound.planner.errors import PlannerError
from membound.planner.hardware import HardwareTable
from membound.planner.plan_options import (
    PROG,
    add_plan_options,
    hardware_table,
    plan_request,
    with_power_fraction,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``plan`` (with its ``calibrate`` and ``audit`` modes) on ``subparsers``."""
    plan = subparsers.add_parser(
        "plan",
        help="will it fit, how fast, at what cost, on which GPU",
        description="Plan a deployment from a roofline model: memory fit, TTFT, TPOT, "
        "tokens/s, $/M tokens and J/token per GPU option. See docs/planner.md.",
    )
    add_plan_options(plan)
    plan.set_defaults(func=run_plan_command)
    modes = plan.add_subparsers(dest="plan_mode", metavar="{calibrate,compare,audit}")
    cal = modes.add_parser("calibrate", help="fit efficiency factors to benchmark JSON")
    cal.add_argument("files", nargs="+", metavar="RESULT.json")
    cal.add_argument("-o", "--output", metavar="FILE", help="write the calibration JSON here")
    _add_shared(cal)
    cal.set_defaults(func=run_calibrate_command)
    cmp = modes.add_parser(
        "compare", help="predict what benchmark runs measured, beside what they measured"
    )
    cmp.add_argument("files", nargs="+", metavar="RESULT.json")
    cmp.add_argument("--calibration", metavar="FILE", default=argparse.SUPPRESS,
                     help="output of 'membound plan calibrate' (default: typical factors)")  # fmt: skip
    _add_shared(cmp)
    cmp.set_defaults(func=run_compare_command)
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
    from membound.planner.plan import run_plan
    from membound.planner.presets import load_model
    from membound.planner.report import plan_json, render_plan_text

    table = hardware_table(args)
    if args.list:
        print(_listing(table))
        return 0
    if not args.model:
        raise PlannerError("--model is required (a preset name or a config.json path)")
    shape = load_model(args.model)
    calibration = Calibration.load(args.calibration) if args.calibration else Calibration()
    if args.power_fraction is not None:
        calibration = with_power_fraction(calibration, args.power_fraction)
    result = run_plan(plan_request(args, shape, table, calibration))
    print(plan_json(result) if args.json else render_plan_text(result))
    if args.plot:
        from membound.planner.plot import plot_roofline

        plot_roofline(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


@_guarded
def run_calibrate_command(args: argparse.Namespace) -> int:
    """``membound plan calibrate results/*.json [-o calibration.json]``."""
    import json

    from membound.planner.calibrate import calibrate, read_benchmark
    from membound.planner.report import render_calibration_text, render_json

    records = [read_benchmark(path) for path in args.files]
    calibration, fits = calibrate(records, hardware_table(args, measure=False))
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
def run_compare_command(args: argparse.Namespace) -> int:
    """``membound plan compare results/*.json [--calibration FILE]``."""
    from membound.planner.bench_model import compare_record
    from membound.planner.calibrate import read_benchmark
    from membound.planner.report import (
        comparisons_to_dict,
        render_comparisons_text,
        render_json,
    )

    path = getattr(args, "calibration", None)
    calibration = Calibration.load(path) if path else Calibration()
    table = hardware_table(args, measure=False)
    comparisons = [compare_record(read_benchmark(p), table, calibration) for p in args.files]
    if getattr(args, "json", False):
        print(render_json(comparisons_to_dict(comparisons)))
    else:
        print(render_comparisons_text(comparisons))
    return 0


@_guarded
def run_audit_command(args: argparse.Namespace) -> int:
    """``membound plan audit CLAIMS.csv``: exit 1 when a claim is impossible."""
    from membound.planner.audit import audit, read_claims
    from membound.planner.report import audit_to_dict, render_audit_text, render_json

    verdicts = audit(read_claims(args.claims), hardware_table(args, measure=False))
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
