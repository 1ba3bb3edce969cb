"""What a routed MoE layer costs beyond reading its experts, counted, not fitted.

Under uniform top-k routing each token picks ``k`` distinct experts of ``E``, so a pass over
``T`` tokens sends ``n ~ Binomial(T, k/E)`` rows to each expert (independent over tokens).
Three costs follow from that count and the way grouped-GEMM kernels run it; none of them
is a constant set from a published throughput figure:

* **experts read**: the experts with ``n > 0``, ``E (1 - (1 - k/E)^T)`` of them
  (``model_cost.expected_experts_fraction``; bytes, in ``ModelCost.expert_read_bytes``);
* **tile padding**: a grouped GEMM runs each expert's rows in blocks of ``tile`` rows (the
  kernel's M tile), so an expert with ``n`` rows costs ``ceil(n / tile) x tile`` rows of
  arithmetic. The tile is the smallest of 16, 32, 64, 128 that holds the mean rows per
  expert (autotuned kernels pick small tiles for few rows; 128 is the largest Hopper
  grouped-GEMM tile in common use; membound's own ``kernels/moe_gemm.py`` uses 16). The
  expected padded rows, ``E x tile x E[ceil(n / tile)]`` over the binomial, divided by the
  ``T k`` real rows is the factor on the routed experts' FLOPs;
* **permute and unpermute**: the tokens are gathered into expert order before the first
  expert GEMM and scattered back (weighted sum of ``k`` rows) after the second. Against a
  dense MLP that adds four passes over ``T k`` hidden-size rows per MoE layer: the gather
  writes them, the first GEMM reads them, the second GEMM writes them, the scatter reads
  them. These are memory-bound kernels that run between the matmuls, so their time adds to
  the pass instead of hiding under it. Under tensor parallelism every rank holds the full
  hidden state, so every rank moves these bytes.

Not counted: routing skew beyond uniform, the router's top-k kernel (tiny), weight re-reads
by M tiles that miss the L2 cache, expert parallelism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from membound.planner.model_cost import ModelCost
from membound.planner.precision import activation_compute

TILE_ROWS = (16, 32, 64, 128)  # grouped-GEMM M tiles a kernel chooses from
PERMUTE_PASSES = 4  # gather write, GEMM-1 read, GEMM-2 write, scatter read: T k h each

# What the MoE model rests on. ``fitted_on`` names the published figures any MoE constant
# was set from (``published.PUBLISHED`` ids); the checks in tests/planner must not use them.
MOE_BASIS = "mechanistic: uniform top-k routing, grouped-GEMM tile padding, permute/unpermute"
MOE_FITTED_ON: tuple[str, ...] = ()


def grouped_gemm_tile(mean_rows: float) -> int:
    """The M tile a grouped GEMM runs ``mean_rows`` rows per expert in."""
    for tile in TILE_ROWS:
        if mean_rows <= tile:
            return tile
    return TILE_ROWS[-1]


def expected_tiles(tokens: int, share: float, tile: int) -> float:
    """``E[ceil(n / tile)]`` for ``n ~ Binomial(tokens, share)``: tiles one expert runs."""
    if tokens <= 0 or share <= 0:
        return 0.0
    if share >= 1:
        return float(math.ceil(tokens / tile))
    mean = tokens * share
    spread = 12 * math.sqrt(mean * (1 - share)) + 2  # beyond 12 sd the mass is < 1e-30
    lo, hi = max(0, math.floor(mean - spread)), min(tokens, math.ceil(mean + spread))
    head = math.lgamma(tokens + 1)
    log_p, log_q = math.log(share), math.log1p(-share)
    total = 0.0
    for n in range(max(lo, 1), hi + 1):
        log_pmf = head - math.lgamma(n + 1) - math.lgamma(tokens - n + 1)
        total += math.exp(log_pmf + n * log_p + (tokens - n) * log_q) * math.ceil(n / tile)
    return total


@dataclass(frozen=True)
class MoEPass:
    """The MoE layers' extra cost in one forward pass over ``tokens`` tokens, one GPU."""

    tokens: int
    tile: int  # rows per grouped-GEMM tile (1: untiled, a CPU)
    flop_factor: float  # padded expert rows / real expert rows (>= 1)
    permute_bytes: int  # gather/scatter traffic of every MoE layer together


def moe_pass(cost: ModelCost, tokens: int, tiled: bool = True) -> MoEPass:
    """Tile padding (when the device runs experts as ``tiled`` grouped GEMMs) and permute
    traffic of one pass over ``tokens`` tokens (uniform routing)."""
    shape = cost.shape
    if not shape.is_moe or tokens <= 0:
        return MoEPass(max(tokens, 0), 0, 1.0, 0)
    e, k = shape.num_experts, shape.num_experts_per_tok
    tile, factor = 1, 1.0
    if tiled:
        tile = grouped_gemm_tile(tokens * k / e)
        padded_rows = e * tile * expected_tiles(tokens, k / e, tile)
        factor = max(1.0, padded_rows / (tokens * k))
    element = 4 if activation_compute(cost.precision) == "fp32" else 2
    per_layer = PERMUTE_PASSES * tokens * k * shape.hidden_size * element
    return MoEPass(tokens, tile, factor, per_layer * shape.num_moe_layers)
