"""At what cost and energy: dollars per million output tokens and joules per token.

Both are ESTIMATES derived from the predicted tokens/s:

    $/M tokens = price per GPU-hour x GPUs / 3600 / tokens_per_s x 1e6
    J/token    = TDP x power_fraction x GPUs / tokens_per_s

``power_fraction`` defaults to 1.0 (every GPU drawing its full TDP the whole time),
which makes the energy figure an upper bound on power; calibration from benchmark
JSON that carries measured power or energy replaces it with the measured share.
"""

from __future__ import annotations

from dataclasses import dataclass

from membound.planner.hardware import GPUSpec
from membound.planner.roofline import Efficiency


@dataclass(frozen=True)
class CostEnergy:
    """Money and energy of one option at its predicted throughput."""

    num_gpus: int
    price_per_gpu_hour: float | None
    price_label: str
    cost_per_million_tokens: float | None
    tokens_per_dollar: float | None
    joules_per_token: float | None
    energy_label: str


def cost_and_energy(
    gpu: GPUSpec, num_gpus: int, tokens_per_s: float, eff: Efficiency
) -> CostEnergy:
    """Price and energy per output token for ``num_gpus`` of ``gpu`` at ``tokens_per_s``."""
    price = gpu.price_per_gpu_hour
    cost = tokens_per_dollar = None
    if price is not None and tokens_per_s > 0:
        cost = price * num_gpus / 3600.0 / tokens_per_s * 1e6
        tokens_per_dollar = 1e6 / cost if cost > 0 else None
    if price is None:
        price_label = "unknown (pass --price-per-gpu-hour or a --hardware-file)"
    else:
        price_label = f"${price:.2f}/GPU-hour, {gpu.price_source or 'unsourced'}"
        price_label += f" ({gpu.price_date})" if gpu.price_date else ""
    joules = None
    if gpu.tdp_w is None:
        energy_label = f"no TDP known for {gpu.name}: energy not estimated"
    else:
        watts = gpu.tdp_w * eff.power_fraction * num_gpus
        joules = watts / tokens_per_s if tokens_per_s > 0 else None
        if eff.power_measured:
            energy_label = (
                f"estimate from measured power: {eff.power_fraction:.2f} x TDP "
                f"{gpu.tdp_w:.0f} W x {num_gpus} GPU(s)"
            )
        else:
            energy_label = (
                f"estimate, not measured: TDP {gpu.tdp_w:.0f} W x {eff.power_fraction:.2f} "
                f"utilisation x {num_gpus} GPU(s) / predicted tok/s"
            )
    return CostEnergy(
        num_gpus=num_gpus,
        price_per_gpu_hour=price,
        price_label=price_label,
        cost_per_million_tokens=cost,
        tokens_per_dollar=tokens_per_dollar,
        joules_per_token=joules,
        energy_label=energy_label,
    )
