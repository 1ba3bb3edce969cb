"""plan_options: the public API that ``membound plan`` and the web console share."""

from __future__ import annotations

import argparse

import pytest

from membound.planner.calibrate import Calibration
from membound.planner.errors import PlannerError
from membound.planner.hardware import load_hardware
from membound.planner.plan_options import (
    add_plan_options,
    hardware_table,
    plan_request,
    with_power_fraction,
)
from membound.planner.presets import preset_shape


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_plan_options(parser)
    return parser.parse_args(list(argv))


def test_hardware_table_prices_and_namespaces_without_the_options() -> None:
    table = hardware_table(parse("--price-per-gpu-hour", "h100=1.5,h200=2"))
    assert table.get("h100-sxm").price_per_gpu_hour == 1.5
    assert table.get("h200").price_per_gpu_hour == 2.0
    flat = hardware_table(parse("--price-per-gpu-hour", "3"))
    assert {g.price_per_gpu_hour for g in flat.gpus} == {3.0}
    # calibrate/audit namespaces have no price option: the built-in table, unchanged
    assert hardware_table(argparse.Namespace()).gpus == load_hardware().gpus
    with pytest.raises(PlannerError, match="'-1' is not a price"):
        hardware_table(parse("--price-per-gpu-hour", "h100=-1"))


def test_with_power_fraction_sets_every_efficiency() -> None:
    cal = with_power_fraction(Calibration(), 0.6)
    assert cal.default.power_fraction == 0.6 and cal.default.power_measured is False
    with pytest.raises(PlannerError, match=r"--power-fraction must be in \(0, 1\]"):
        with_power_fraction(Calibration(), 1.5)


def test_plan_request_from_parsed_options() -> None:
    args = parse(
        "--gpu", "h100,h200", "--kv-dtype", "fp8", "--target-tpot", "50ms", "--concurrency", "4"
    )
    request = plan_request(args, preset_shape("llama-3-8b"), hardware_table(args), Calibration())
    assert [g.name for g in request.gpus] == ["h100-sxm", "h200"]
    assert (request.precision, request.kv_dtype, request.tp) == ("bf16", "fp8", None)
    assert request.workload.concurrency == 4
    assert request.workload.target_tpot_s == pytest.approx(0.05)
    assert request.limits.gpu_memory_utilization == 0.9
