"""The options of one plan request, shared by ``membound plan`` (cli.py) and the web console.

    add_plan_options(parser)      the flags: names, types, defaults, help texts
    hardware_table(args)          the GPU table they select (--hardware-file, --price-per-gpu-hour)
    with_power_fraction(cal, f)   --power-fraction applied to a Calibration
    plan_request(args, ...)       the PlanRequest the parsed options describe

Both front ends parse with ``add_plan_options`` and build with ``plan_request``, so
defaults, types, error messages and the plan itself are the same from either.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import TYPE_CHECKING

from membound.planner.calibrate import Calibration
from membound.planner.errors import PlannerError
from membound.planner.hardware import HardwareTable, read_hardware_file
from membound.planner.local_device import (
    DEVICES,
    LOCAL_NAME,
    cache_path,
    cached_local_device,
    local_device,
)
from membound.planner.precision import KV_DTYPES, WEIGHT_PRECISIONS, normalize_kv_dtype
from membound.planner.roofline import Efficiency

if TYPE_CHECKING:
    from membound.planner.model_shape import ModelShape
    from membound.planner.plan import PlanRequest

PROG = "membound plan"
"""The command's name, as usage and error messages print it."""


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


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """Add the ``membound plan`` options (``--model``, ``--gpu``, ... ``--plot``) to ``p``.

    Values are converted as they are parsed: ``--kv-dtype`` normalized, ``--target-ttft`` and
    ``--target-tpot`` in seconds (``0.5``, ``500ms``), counts checked positive.
    """
    p.add_argument("--model", metavar="NAME|PATH", help="preset name or config.json / folder")
    p.add_argument(
        "--gpu",
        metavar="NAME[,NAME...]",
        help="GPUs to compare (default: all in the table); 'local' is the device at hand, "
        "measured once and cached",
    )
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
    add_local_options(p)
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


def add_local_options(p: argparse.ArgumentParser, *, shared: bool = False) -> None:
    """``--remeasure`` and ``--local-device``: how ``--gpu local`` is measured."""
    default = argparse.SUPPRESS if shared else None
    p.add_argument(
        "--remeasure",
        action="store_true",
        default=argparse.SUPPRESS if shared else False,
        help="measure the local device again instead of reading its cached record",
    )
    p.add_argument(
        "--local-device",
        choices=DEVICES,
        default=default,
        help="what 'local' measures: auto (CUDA when present), cpu or cuda",
    )


def _wants_local(args: argparse.Namespace) -> bool:
    names = (getattr(args, "gpu", None) or "").split(",")
    return any(n.strip().lower() == LOCAL_NAME for n in names)


def hardware_table(args: argparse.Namespace, *, measure: bool = True) -> HardwareTable:
    """The GPU table ``args`` selects: the built-in one, plus the device at hand as
    ``local`` when ``args.gpu`` names it (measured once and cached, or again with
    ``args.remeasure``; with ``measure=False`` only a cached record is used, and naming
    ``local`` without one is an error that says how to measure it), with
    ``args.hardware_file`` merged in and ``args.price_per_gpu_hour`` (``"2.5"`` for every
    GPU, or ``"h100=2.5,h200=3"``) applied; any attribute may be absent or None.

    Raises PlannerError for an unreadable hardware file, a failed measurement, a price that
    is not a non-negative number, or an unknown GPU name.
    """
    table = HardwareTable()
    local = None
    if measure and (_wants_local(args) or getattr(args, "remeasure", False)):
        local = local_device(
            getattr(args, "local_device", None) or "auto",
            remeasure=bool(getattr(args, "remeasure", False)),
        )
    elif not measure:
        local = cached_local_device()
        if local is None and _wants_local(args):
            raise PlannerError(
                f"gpu 'local': this machine has not been measured yet (no record at "
                f"{cache_path()}); run `membound plan --gpu local` once in a shell on it (the "
                "probe takes a minute or more and caches its record), then ask again"
            )
    if local is not None:  # first, so a benchmark's exact device name matches it
        table = HardwareTable((local.gpu_spec(), *table.gpus))
    hardware_file = getattr(args, "hardware_file", None)
    if hardware_file is not None:
        table = table.with_overrides(read_hardware_file(hardware_file))
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


def with_power_fraction(calibration: Calibration, fraction: float) -> Calibration:
    """``calibration`` with every efficiency's average power set to ``fraction`` of TDP
    (``--power-fraction``; no longer marked measured). Raises PlannerError unless
    0 < fraction <= 1."""
    if not 0 < fraction <= 1:
        raise PlannerError(f"--power-fraction must be in (0, 1], got {fraction}")

    def change(eff: Efficiency) -> Efficiency:
        return dataclasses.replace(eff, power_fraction=fraction, power_measured=False)

    per_gpu = tuple((name, change(eff)) for name, eff in calibration.per_gpu)
    return Calibration(change(calibration.default), per_gpu)


def plan_request(
    args: argparse.Namespace,
    shape: ModelShape,
    table: HardwareTable,
    calibration: Calibration,
) -> PlanRequest:
    """The PlanRequest for options parsed by ``add_plan_options``: ``shape`` on the GPUs
    ``args.gpu`` names in ``table`` (all of them when None or "all"), at ``args.precision``
    or else the checkpoint's quantization or bf16. ``calibration`` is used as given (apply
    ``--power-fraction`` with ``with_power_fraction`` first). Raises PlannerError for an
    unknown GPU or a value the planner refuses."""
    from membound.planner.plan import PlanRequest
    from membound.planner.workload import EngineLimits, Workload

    return PlanRequest(
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
