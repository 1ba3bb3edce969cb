"""Plot train loss (raw and smoothed) and the periodic held-out loss against step.

python tools/default_model/plot_curve.py  # -> src/membound/assets/default_model/training_curve.png
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os

from common import ASSET_DIR, DEFAULT_WORKDIR


def read_log(path: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train, held = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["train_loss"]:
                train.append((int(row["step"]), float(row["train_loss"])))
            if row["heldout_loss"]:
                held.append((int(row["step"]), float(row["heldout_loss"])))
    return train, held


def ema(values: list[float], alpha: float = 0.05) -> list[float]:
    """Exponential moving average with Adam-style bias correction (no lag from a zero start)."""
    out, acc = [], 0.0
    for t, v in enumerate(values, start=1):
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc / (1 - (1 - alpha) ** t))
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument("--out", default=os.path.join(ASSET_DIR, "training_curve.png"))
    args = parser.parse_args()
    train, held = read_log(os.path.join(args.workdir, "train_log.csv"))
    metrics_path = os.path.join(os.path.dirname(args.out), "metrics.json")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps, losses = zip(*train, strict=True)
    ax.plot(
        steps, losses, color="tab:blue", alpha=0.25, linewidth=0.7, label="train loss (per step)"
    )
    ax.plot(
        steps, ema(list(losses)), color="tab:blue", linewidth=1.5, label="train loss (EMA 0.05)"
    )
    hs, hl = zip(*held, strict=True)
    ax.plot(
        hs, hl, "o-", color="tab:orange", markersize=4, label="held-out loss (24-window subset)"
    )
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            m = json.load(f)
        nll = m["heldout_mean_nll_nats"]
        ax.axhline(
            nll,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"final held-out, all windows: {nll:.3f} nats (ppl {math.exp(nll):.2f})",
        )
    ax.set_xlabel("step (8 x 256 tokens)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_ylim(top=min(9.5, max(losses) + 0.2), bottom=max(0.0, min(losses) - 0.5))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("membound default model: training on the Python stdlib (CPU, 2 cores)")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
