"""``POST /console/api/plan``: ``membound plan --json`` behind a web form.

The JSON body holds the CLI's options under their long names with ``_`` for ``-``
(``{"model": "llama-3-8b", "gpu": "h100,h200", "kv_dtype": "fp8", "target_tpot": "50ms"}``).
They become an argv that the planner's own option parser (``plan_options.add_plan_options``)
reads, so defaults, types and error messages are the CLI's; the plan is then built with
``plan_options.plan_request``, as ``membound plan`` builds it.

Nothing here reads the server's files: ``model`` must be a preset (a path is refused), or
``config`` carries a Hugging Face ``config.json`` object inline; ``--hardware-file``,
``--calibration``, ``--plot`` and ``--list`` have no field. ``gpu: local`` uses the cached
record of this machine only: the server never runs the device probe (minutes of load), and
without a record the answer says to run ``membound plan --gpu local`` once.
"""

from __future__ import annotations

import argparse
import math
import shlex
from typing import Any, NoReturn

from membound.config import ConfigError
from membound.planner.calibrate import Calibration
from membound.planner.errors import PlannerError
from membound.planner.hardware import load_hardware
from membound.planner.model_shape import ModelShape
from membound.planner.plan import PlanResult, plan_to_dict, run_plan
from membound.planner.plan_options import (
    PROG,
    add_plan_options,
    hardware_table,
    plan_request,
    with_power_fraction,
)
from membound.planner.precision import KV_DTYPES, WEIGHT_PRECISIONS
from membound.planner.presets import PRESET_NAMES, preset_shape
from membound.planner.roofline import linear_peak_tflops

# JSON field -> `membound plan` flag
FLAGS: dict[str, str] = {
    "gpu": "--gpu",
    "precision": "--precision",
    "kv_dtype": "--kv-dtype",
    "tp": "--tp",
    "input_len": "--input-len",
    "output_len": "--output-len",
    "concurrency": "--concurrency",
    "target_ttft": "--target-ttft",
    "target_tpot": "--target-tpot",
    "price_per_gpu_hour": "--price-per-gpu-hour",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "power_fraction": "--power-fraction",
}
FIELDS = ("model", "config", *FLAGS)


class _Parser(argparse.ArgumentParser):
    """The planner's options; a bad value raises PlannerError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise PlannerError(message)


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, add_help=False)
    add_plan_options(parser)
    return parser


def plan_argv(body: dict[str, Any]) -> list[str]:
    """The ``membound plan`` options equivalent to ``body`` (``--model`` first when named);
    raises PlannerError for an unknown field or a value of the wrong type."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise PlannerError(f"unknown field(s) {', '.join(unknown)}; use {', '.join(FIELDS)}")
    argv: list[str] = []
    model = body.get("model")
    if model not in (None, "") and not isinstance(body.get("config"), dict):
        if not isinstance(model, str):
            raise PlannerError("model must be a preset name (a string)")
        argv.append(f"--model={model}")
    for name, flag in FLAGS.items():
        value = body.get(name)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, list) and name == "gpu":
            value = ",".join(str(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise PlannerError(f"{name} must be a string or a number, got {value!r}")
        argv.append(f"{flag}={value}")
    return argv


def _shape(body: dict[str, Any], args: argparse.Namespace) -> ModelShape:
    config = body.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise PlannerError("config must be a Hugging Face config.json object")
        name = body.get("model") if isinstance(body.get("model"), str) else None
        try:
            return ModelShape.from_hf_dict(config, name=name or "config.json")
        except (TypeError, KeyError, ValueError, AttributeError) as e:  # a malformed config
            if isinstance(e, (PlannerError, ConfigError)):
                raise
            raise PlannerError(f"config: {type(e).__name__}: {e}") from None
    if not args.model:
        raise PlannerError(f"model is required: one of {', '.join(PRESET_NAMES)} (or send "
                           "config, a config.json object)")
    try:
        return preset_shape(args.model)  # never a path: the server's files stay unread
    except PlannerError:
        raise PlannerError(
            f"model {args.model!r} is not a preset; use one of {', '.join(PRESET_NAMES)}, or "
            "send the model's config.json object as config (the console reads no server files)"
        ) from None


def run_web_plan(body: dict[str, Any]) -> dict[str, Any]:
    """``{"plan": <membound plan --json document>, "roofline": {...}, "command": str}``.
    Raises PlannerError or ConfigError for bad input."""
    argv = plan_argv(body)
    args = _parser().parse_args(argv)
    shape = _shape(body, args)
    table = hardware_table(args, measure=False)  # never the probe inside the server
    calibration = Calibration()
    if args.power_fraction is not None:
        calibration = with_power_fraction(calibration, args.power_fraction)
    result = run_plan(plan_request(args, shape, table, calibration))
    command = "membound plan " + " ".join(shlex.quote(a) for a in argv) + " --json"
    if isinstance(body.get("config"), dict):
        command += "  # with --model CONFIG.json holding the config sent"
    return {"plan": _finite(plan_to_dict(result)), "roofline": roofline(result),
            "command": command}


def roofline(result: PlanResult) -> dict[str, Any]:
    """What ``--plot`` draws: each GPU's roof at the plan's precision, and each option's
    decode step placed on it (FLOP/byte, TFLOP/s per GPU)."""
    precision = result.request.precision
    gpus: dict[str, dict[str, Any]] = {}
    points = []
    for option in result.options:
        gpu = option.gpu
        if gpu.name not in gpus:
            peak, _ = linear_peak_tflops(gpu, precision)
            gpus[gpu.name] = {"gpu": gpu.name, "label": gpu.display_name,
                              "peak_tflops": peak, "bandwidth_gbs": gpu.bandwidth_gbs}
        step = option.expected.decode
        if step.bytes <= 0 or step.total_s <= 0:
            continue
        points.append({
            "gpu": gpu.name, "tp": option.tp, "batch": option.expected.batch,
            "intensity": step.flops / step.bytes, "tflops": step.flops / step.total_s / 1e12,
            "fits": option.memory.fits,
        })
    return {"precision": precision, "gpus": list(gpus.values()), "points": points}


def plan_options() -> dict[str, Any]:
    """``GET /console/api/plan/options``: the choices and defaults for the form."""
    table = load_hardware(None)
    defaults = {name: getattr(_parser().parse_args([]), name) for name in FLAGS}
    return {
        "models": list(PRESET_NAMES),
        "gpus": [{"name": g.name, "label": g.display_name, "memory_gib": round(g.memory_gib, 1),
                  "bandwidth_gbs": g.bandwidth_gbs, "price_per_gpu_hour": g.price_per_gpu_hour}
                 for g in table.gpus],
        "precisions": list(WEIGHT_PRECISIONS),
        "kv_dtypes": list(KV_DTYPES),
        "defaults": defaults,
        "fields": list(FIELDS),
    }


def _finite(value: Any) -> Any:
    """JSON has no Infinity or NaN: such figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


PLAN_ERRORS = (PlannerError, ConfigError, ValueError)
