"""Charts for benchmark results: throughput against batch or concurrency, latency CDFs.

matplotlib is imported inside the functions (``pip install matplotlib`` or the ``bench``
extra), and only its object API is used (``Figure``, no pyplot global state), so plotting
works headless and never changes the caller's backend.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from membound.bench.stats import cdf_points


def _figure(ncols: int = 2) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ValueError(
            "--plot needs matplotlib: pip install matplotlib (or 'membound[bench]')"
        ) from e
    fig = Figure(figsize=(6 * ncols, 4.5), layout="constrained")
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _cdf(ax: Any, series: dict[str, list[float]], xlabel: str) -> None:
    drawn = False
    for label, values in series.items():
        if values:
            xs, ys = cdf_points(values)
            ax.step(xs, ys, where="post", label=f"{label} (n={len(values)})")
            drawn = True
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no samples", ha="center", transform=ax.transAxes)


def _title(doc: dict[str, Any]) -> str:
    c = doc.get("config", {})
    return (f"{doc.get('kind')}: {doc.get('model', {}).get('name')} on "
            f"{doc.get('device', {}).get('name')} ({c.get('precision')}, "
            f"{c.get('input_len')} in / {c.get('output_len')} out)")  # fmt: skip


def _throughput_panels(doc: dict[str, Any], axes: list[Any]) -> None:
    s = doc["samples"]
    by_batch: dict[int, list[float]] = defaultdict(list)
    for b, tps in zip(s.get("step_batch", []), s.get("step_tokens_per_s", []), strict=False):
        by_batch[b].append(tps)
    ax = axes[0]
    ax.scatter(s.get("step_batch", []), s.get("step_tokens_per_s", []), s=8, alpha=0.4,
               label="one engine step")  # fmt: skip
    xs = sorted(by_batch)
    ax.plot(xs, [sum(by_batch[x]) / len(by_batch[x]) for x in xs], "o-", color="C1",
            label="mean per batch size")  # fmt: skip
    ax.set_xlabel("sequences in the step (batch)")
    ax.set_ylabel("output tokens/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _cdf(axes[1], {"request end-to-end": s.get("e2e_ms", [])}, "latency (ms)")


def _latency_panels(doc: dict[str, Any], axes: list[Any]) -> None:
    s, f = doc["samples"], doc["figures"]
    _cdf(axes[0], {"TPOT (per step)": s.get("tpot_ms", []), "TTFT": s.get("ttft_ms", [])},
         "latency (ms)")  # fmt: skip
    ax = axes[1]
    bars = [("achieved", f.get("achieved_weight_bandwidth_gbs")),
            ("measured copy", f.get("measured_copy_gbs")),
            ("datasheet", f.get("datasheet_bandwidth_gbs"))]  # fmt: skip
    labels = [k for k, v in bars if isinstance(v, (int, float))]
    ax.bar(
        labels,
        [v for _, v in bars if isinstance(v, (int, float))],
        color=["C0", "C2", "C3"][: len(labels)],
    )
    ax.set_ylabel("GB/s")
    ax.set_title(f"decode bandwidth, batch {doc['config'].get('batch_size')}", fontsize="medium")
    ax.grid(alpha=0.3, axis="y")


def _serve_panels(doc: dict[str, Any], axes: list[Any]) -> None:
    s = doc["samples"]
    tl = s.get("timeline", {})
    ax = axes[0]
    ax.scatter(tl.get("in_flight", []), tl.get("output_tokens_per_s", []), s=14,
               c=tl.get("t_s", []), cmap="viridis")  # fmt: skip
    ax.set_xlabel("requests in flight (mean over a time slice)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("throughput against concurrency (colour: time)", fontsize="medium")
    ax.grid(alpha=0.3)
    _cdf(axes[1], {"TTFT": s.get("ttft_ms", []), "TPOT": s.get("tpot_ms", []),
                   "ITL": s.get("itl_ms", []), "E2E": s.get("e2e_ms", [])},
         "latency (ms)")  # fmt: skip
    values = [v for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms") for v in s.get(key, [])]
    if values and min(values) > 0:
        axes[1].set_xscale("log")


def plot_result(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """One run's charts, chosen by its kind, saved as a PNG."""
    fig, axes = _figure(2)
    panels = {"throughput": _throughput_panels, "latency": _latency_panels, "serve": _serve_panels}
    panels[doc["kind"]](doc, axes)
    fig.suptitle(_title(doc), fontsize="medium")
    fig.savefig(path, dpi=110)


def _x_value(doc: dict[str, Any]) -> tuple[str, float | None]:
    c = doc.get("config", {})
    if doc.get("kind") == "serve":
        if c.get("max_concurrency"):
            return "concurrency", c["max_concurrency"]
        return "concurrency", doc.get("figures", {}).get("mean_in_flight")
    return "batch", c.get("batch_size")


def plot_report(docs: list[tuple[str, dict[str, Any]]], path: str | os.PathLike[str]) -> None:
    """Across runs: output tokens/s against batch size or concurrency (one line per kind,
    model, device and precision), and the runs' latency CDFs (TPOT, else end-to-end)."""
    fig, axes = _figure(2)
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, doc in docs:
        axis, x = _x_value(doc)
        y = doc.get("figures", {}).get("output_tokens_per_s")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            c = doc.get("config", {})
            key = (f"{doc.get('kind')} {doc.get('model', {}).get('name')} "
                   f"{c.get('precision')} {c.get('input_len')}/{c.get('output_len')}, "
                   f"{doc.get('device', {}).get('name')}")  # fmt: skip
            groups[key].append((float(x), float(y)))
    ax = axes[0]
    for key, points in groups.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=key)
    ax.set_xlabel("batch size (offline) / concurrency (serving)")
    ax.set_ylabel("output tokens/s")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize="x-small")
    series = {}
    for name, doc in docs:
        s = doc.get("samples", {})
        key = "tpot_ms" if s.get("tpot_ms") else "e2e_ms"
        series[f"{os.path.basename(name)} {key.split('_')[0].upper()}"] = s.get(key, [])
    _cdf(axes[1], series, "latency (ms)")
    fig.suptitle(f"{len(docs)} benchmark run(s)", fontsize="medium")
    fig.savefig(path, dpi=110)
