"""Dollars and joules per token."""

from __future__ import annotations

import dataclasses

import pytest

from membound.planner.cost import cost_and_energy
from membound.planner.hardware import HardwareTable
from membound.planner.roofline import Efficiency

TABLE = HardwareTable()


def test_cost_per_million_tokens_by_hand() -> None:
    gpu = dataclasses.replace(TABLE.get("h100"), price_per_gpu_hour=3.6)
    money = cost_and_energy(gpu, num_gpus=2, tokens_per_s=1000.0, eff=Efficiency())
    # 2 GPUs x $3.6/h = $0.002/s; 1e6 tokens take 1000 s -> $2
    assert money.cost_per_million_tokens == pytest.approx(2.0)
    assert money.tokens_per_dollar == pytest.approx(500_000)
    # 2 x 700 W at 1.0 of TDP / 1000 tok/s
    assert money.joules_per_token == pytest.approx(1.4)
    assert "estimate" in money.energy_label and "not measured" in money.energy_label


def test_energy_scales_with_power_fraction_and_is_labelled_measured() -> None:
    eff = Efficiency(power_fraction=0.5, power_measured=True)
    money = cost_and_energy(TABLE.get("h100"), 1, 1000.0, eff)
    assert money.joules_per_token == pytest.approx(0.35)
    assert "measured power" in money.energy_label


def test_missing_price_or_tdp_is_said_not_guessed() -> None:
    money = cost_and_energy(TABLE.get("tpu-v5e"), 1, 1000.0, Efficiency())
    assert money.cost_per_million_tokens is None and money.joules_per_token is None
    assert "--price-per-gpu-hour" in money.price_label
    assert "no TDP" in money.energy_label
