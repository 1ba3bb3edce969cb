"""Cost arithmetic, default prices from the planner's table, and energy measured or not."""

from __future__ import annotations

import sys
import types

import pytest

from membound.bench.cost import Price, cost_figures, cost_per_million_tokens, resolve_price
from membound.bench.energy import NOT_MEASURED, EnergyMeter
from membound.planner.hardware import load_hardware


def test_cost_per_million_tokens() -> None:
    # $3.60/GPU-hour = $0.001/s; at 1000 tokens/s a million tokens take 1000 s = $1
    assert cost_per_million_tokens(3.6, 1, 1000.0) == pytest.approx(1.0)
    assert cost_per_million_tokens(3.6, 8, 1000.0) == pytest.approx(8.0)
    assert cost_per_million_tokens(3.6, 1, 0.0) is None
    figs = cost_figures(Price(3.6, "x"), 2, 500.0)
    assert figs["cost_per_million_output_tokens"] == pytest.approx(4.0)
    assert figs["output_tokens_per_dollar"] == pytest.approx(250_000.0)


def test_default_price_comes_from_the_planner_table() -> None:
    h100 = load_hardware().get("h100-sxm")
    price = resolve_price(None, "NVIDIA H100 80GB HBM3")
    assert price.per_gpu_hour == h100.price_per_gpu_hour
    assert h100.price_date in price.label and "h100-sxm" in price.label
    cpu = resolve_price(None, "cpu: AMD EPYC")
    assert cpu.per_gpu_hour is None and "--price-per-gpu-hour" in cpu.label
    assert cost_figures(cpu, 1, 100.0)["cost_per_million_output_tokens"] is None
    assert resolve_price(2.5, "cpu").per_gpu_hour == 2.5
    with pytest.raises(ValueError, match=">= 0"):
        resolve_price(-1.0, "cpu")


def test_energy_not_measured_without_a_gpu() -> None:
    reading = EnergyMeter(()).start().stop()
    assert not reading.measured and reading.label.startswith(NOT_MEASURED)
    figs = reading.figures(100)
    assert figs == {
        "energy_j": NOT_MEASURED,
        "avg_power_w": NOT_MEASURED,
        "energy_j_per_token": NOT_MEASURED,
    }


def test_energy_on_this_cpu_machine_is_not_measured() -> None:
    # every NVML GPU of this host: a CI machine has none (or no pynvml)
    reading = EnergyMeter(None).start().stop()
    if reading.measured:
        pytest.skip("this host has an NVIDIA GPU with an energy counter")
    assert reading.joules is None and reading.avg_power_w is None
    assert NOT_MEASURED in reading.label


def test_energy_difference_from_a_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = {0: 1_000_000, 1: 5_000_000}  # millijoules

    def total(handle: int) -> int:
        counters[handle] += 250_000  # each read: +250 J
        return counters[handle]

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetTotalEnergyConsumption=total,
        nvmlDeviceGetUUID=lambda h: f"GPU-0000000{h}-aaaa",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reading = EnergyMeter(None).start().stop()
    assert reading.measured and reading.num_gpus == 2 and reading.devices == ("Fake GPU",) * 2
    assert reading.joules == pytest.approx(500.0)  # 250 J per GPU between start and stop
    assert reading.joules_per_token(1000) == pytest.approx(0.5)
    assert reading.avg_power_w == pytest.approx(500.0 / reading.seconds)
    assert "measured" in reading.label and NOT_MEASURED not in reading.label

    # a torch-style UUID (no "GPU-" prefix) picks that one GPU
    one = EnergyMeter(("00000001-AAAA",)).start().stop()
    assert one.measured and one.num_gpus == 1 and one.joules == pytest.approx(250.0)
    missing = EnergyMeter(("ffff",)).start().stop()
    assert not missing.measured and "no GPU with UUID" in missing.label
