"""Percentiles and summaries of latency samples (pure Python, no numpy needed).

Percentiles interpolate linearly between the closest ranks, as ``numpy.percentile`` does by
default (and as vLLM's benchmarks report them): for sorted samples ``x[0..n-1]`` the p-th
percentile sits at rank ``(n - 1) * p / 100``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


def percentile(values: Iterable[float], p: float) -> float | None:
    """The p-th percentile (0..100) of ``values``; None when there are none."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    data = sorted(float(v) for v in values)
    if not data:
        return None
    rank = (len(data) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def std(values: Sequence[float]) -> float | None:
    """Population standard deviation (numpy's default), None when empty."""
    m = mean(values)
    if m is None:
        return None
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _key(p: float) -> str:
    return f"p{p:g}".replace(".", "_")


def summarize(
    values: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, float | int | None]:
    """``{"count", "mean", "median", "std", "min", "max", "p50", "p90", "p99"}``; values are
    None (JSON null) when there are no samples."""
    data = [float(v) for v in values]
    out: dict[str, float | int | None] = {
        "count": len(data),
        "mean": mean(data),
        "median": percentile(data, 50.0),
        "std": std(data),
        "min": min(data) if data else None,
        "max": max(data) if data else None,
    }
    for p in percentiles:
        out[_key(p)] = percentile(data, p)
    return out


def flat_summary(
    prefix: str, values: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, float | None]:
    """``summarize`` flattened into figure names: ``flat_summary("tpot_ms", xs)`` gives
    ``tpot_ms_mean``, ``tpot_ms_median``, ``tpot_ms_p50``, ... (the planner reads
    ``tpot_ms_mean`` and ``ttft_ms_mean``)."""
    summary = summarize(values, percentiles)
    return {f"{prefix}_{k}": v for k, v in summary.items() if k not in ("count", "min", "max")}


def cdf_points(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values and their cumulative fractions (1/n .. 1), for plotting a CDF."""
    data = sorted(float(v) for v in values)
    n = len(data)
    return data, [(i + 1) / n for i in range(n)]
