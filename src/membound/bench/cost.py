"""Dollars per million output tokens and output tokens per dollar of a measured run.

    $/M output tokens = price per GPU-hour x GPUs / 3600 / output_tokens_per_s x 1e6
    tokens per $      = 1e6 / ($/M output tokens)

The price is ``--price-per-gpu-hour`` when given, else the dated, sourced price of the
planner's hardware table entry that the device name matches (``planner/hardware.py``, the one
place prices live). A device with no matching entry (a CPU, say) gets no price and no cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Price:
    per_gpu_hour: float | None
    label: str


def default_price(device_name: str) -> Price:
    """The planner table's price for ``device_name`` ("NVIDIA H100 80GB HBM3"), if known."""
    from membound.planner.hardware import load_hardware

    gpu = load_hardware().match_device(device_name)
    if gpu is None:
        return Price(None, f"no price: {device_name!r} is not in the planner's hardware table "
                           "(pass --price-per-gpu-hour)")  # fmt: skip
    if gpu.price_per_gpu_hour is None:
        return Price(None, f"no price known for {gpu.name} (pass --price-per-gpu-hour)")
    label = f"${gpu.price_per_gpu_hour:.2f}/GPU-hour for {gpu.name}: "
    label += f"{gpu.price_source or 'unsourced'}" + (
        f", {gpu.price_date}" if gpu.price_date else ""
    )
    return Price(gpu.price_per_gpu_hour, label)


def resolve_price(given: float | None, device_name: str) -> Price:
    """``--price-per-gpu-hour`` if given (must be >= 0), else the table's price."""
    if given is None:
        return default_price(device_name)
    if given < 0:
        raise ValueError(f"--price-per-gpu-hour must be >= 0, got {given}")
    return Price(given, f"${given:.2f}/GPU-hour, given on the command line")


def cost_per_million_tokens(
    price_per_gpu_hour: float, num_gpus: int, tokens_per_s: float
) -> float | None:
    """Dollars per million tokens at ``tokens_per_s``; None when nothing was produced."""
    if tokens_per_s <= 0:
        return None
    return price_per_gpu_hour * num_gpus / 3600.0 / tokens_per_s * 1e6


def cost_figures(price: Price, num_gpus: int, output_tokens_per_s: float) -> dict[str, Any]:
    """The cost figures for a result's ``figures``: None (null) where there is no price."""
    cost = None
    if price.per_gpu_hour is not None:
        cost = cost_per_million_tokens(price.per_gpu_hour, num_gpus, output_tokens_per_s)
    per_dollar = 1e6 / cost if cost else None
    return {
        "price_per_gpu_hour": price.per_gpu_hour,
        "cost_per_million_output_tokens": cost,
        "output_tokens_per_dollar": per_dollar,
    }
