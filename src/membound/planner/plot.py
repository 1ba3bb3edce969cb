"""``--plot FILE.png``: the roofline of each GPU with every option's decode step on it.

matplotlib is imported here, lazily, only when a plot is asked for (it is an optional
dependency: ``pip install matplotlib`` or the ``bench`` extra).
"""

from __future__ import annotations

import os

from membound.planner.errors import PlannerError
from membound.planner.plan import PlanResult
from membound.planner.roofline import linear_peak_tflops


def plot_roofline(result: PlanResult, path: str | os.PathLike[str]) -> None:
    """Write a log-log roofline (TFLOP/s against FLOP/byte) with each option on it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        raise PlannerError("--plot needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(9, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    intensities = [0.5 * 1.2**i for i in range(56)]  # 0.5 .. ~1e4 FLOP/byte
    colors = {}
    precision = result.request.precision
    for option in result.options:
        gpu = option.gpu
        if gpu.name not in colors:
            peak, _ = linear_peak_tflops(gpu, precision)
            roof = [min(peak, gpu.bandwidth_gbs * x / 1e3) for x in intensities]
            (line,) = ax.plot(intensities, roof, label=f"{gpu.display_name} roofline")
            colors[gpu.name] = line.get_color()
        step = option.expected.decode
        if step.bytes <= 0 or step.total_s <= 0:
            continue
        x = step.flops / step.bytes
        y = step.flops / step.total_s / 1e12
        marker = "o" if option.memory.fits else "x"
        ax.plot([x], [y], marker, color=colors[gpu.name], markersize=8)
        ax.annotate(f"{gpu.name} TP{option.tp} B={option.expected.batch}", (x, y), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))  # fmt: skip
    w = result.request.workload
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity of a decode step (FLOP / byte, per GPU)")
    ax.set_ylabel("TFLOP/s per GPU (dense peak of the precision)")
    ax.set_title(
        f"{result.request.shape.name} {precision}: decode at concurrency {w.concurrency}, "
        f"{w.input_len}+{w.output_len} tokens (o fits, x does not)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    try:
        fig.savefig(os.fspath(path), dpi=120)
    except OSError as e:
        raise PlannerError(f"could not write plot {os.fspath(path)!r}: {e}") from e
