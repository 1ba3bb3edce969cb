"""Percentiles and summaries on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from membound.bench.stats import cdf_points, flat_summary, percentile, summarize


def test_percentiles_of_one_to_hundred() -> None:
    xs = list(range(1, 101))  # 1..100
    assert percentile(xs, 0) == 1 and percentile(xs, 100) == 100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 90) == pytest.approx(90.1)
    assert percentile(xs, 99) == pytest.approx(99.01)


@pytest.mark.parametrize("p", [0, 1, 25, 50, 75, 90, 99, 99.9, 100])
def test_percentiles_match_numpy(p: float) -> None:
    rng = np.random.default_rng(0)
    xs = rng.exponential(10.0, size=37).tolist()
    assert percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)))


def test_small_and_empty_inputs() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 3.0], 50) == 2.0
    assert percentile([], 50) is None
    s = summarize([])
    assert s["count"] == 0 and s["mean"] is None and s["p99"] is None
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summary_and_flat_names() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert s["mean"] == 2.5 and s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["std"] == pytest.approx(float(np.std([1, 2, 3, 4])))
    flat = flat_summary("tpot_ms", [1.0, 2.0, 3.0])
    assert set(flat) == {
        "tpot_ms_mean",
        "tpot_ms_median",
        "tpot_ms_std",
        "tpot_ms_p50",
        "tpot_ms_p90",
        "tpot_ms_p99",
    }
    assert flat["tpot_ms_mean"] == 2.0 and flat["tpot_ms_p50"] == 2.0


def test_cdf_points() -> None:
    xs, ys = cdf_points([3.0, 1.0, 2.0, 4.0])
    assert xs == [1.0, 2.0, 3.0, 4.0] and ys == [0.25, 0.5, 0.75, 1.0]
