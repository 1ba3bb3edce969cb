"""Published MoE serving figures the planner is checked against, with where each comes from.

Every figure was read off the page named in ``source`` (address, the software version the
page gives, what was measured). None of them set a factor of the model: ``moe_cost`` counts
what routed layers cost, and ``moe_cost.MOE_FITTED_ON`` (empty) names any figure a MoE
constant was fitted on, so that a check can never use the figure it was fitted to.
tests/planner/test_planner_moe.py holds the checks; docs/planner.md the table.

TensorRT-LLM's perf-overview pages (v0.10 on) run ``trtllm-bench throughput`` with every
request queued at once (30,000 requests at 128/128): the in-flight batch is whatever the
engine holds, so these are saturation figures (``concurrency`` 4096 here, the engine's
maximum batch in the page's example output). They print total output tokens/s of the TP
group; ``tokens_per_s_per_gpu`` divides by TP. "FP8 quantization" there sets the KV cache
to FP8 as well (the page says so), hence ``kv_dtype="fp8"``.
"""

from __future__ import annotations

from dataclasses import dataclass

TRTLLM_V0_14 = (
    "https://github.com/arthurrasmusson/TensorRT-LLM/blob/e00d4e6564921307dd264b61fe1d46f116095e0e"
    "/docs/source/performance/perf-overview.md (a fork holding TensorRT-LLM's perf overview, "
    "'All data in the table below was generated using version 0.14.0'; total output tok/s, "
    "in-flight batching, read 2026-12-06)"
)
TRTLLM_V0_13 = (
    "https://raw.githubusercontent.com/NVIDIA/TensorRT-LLM/v0.13.0/docs/source/performance/"
    "perf-overview.md ('All data in the table below was generated using version 0.13.0'; "
    "total output tok/s, in-flight batching, read 2026-12-06)"
)
TRTLLM_V0_9 = (
    "https://github.com/WhiteD2125/TensorRT-LLM/blob/6ad7cf1bcc08e31990c62ba929a8e84f35667654"
    "/docs/source/performance/perf-overview.md (a fork holding TensorRT-LLM's perf overview, "
    "'All data was generated using version 0.9.0'; static batches of the stated size, "
    "output tok/s per GPU, read 2026-12-06)"
)
ISSUE_24 = (
    "membound issue 24: 'TensorRT-LLM's published 5,255 output tok/s/GPU' (no page named; "
    "not on the perf-overview pages read: v0.9.0, v0.13.0, v0.14.0, and v1.x, which has no "
    "Mixtral rows; v0.10-v0.12 and v0.15-v0.18 were not found. v0.13.0 and v0.14.0 print "
    "24,573 and 24,322 total, 12,286 and 12,161 per GPU, for this configuration)"
)


@dataclass(frozen=True)
class PublishedFigure:
    """One published serving throughput, as the planner is asked to predict it."""

    id: str
    model: str  # a planner preset
    gpu: str
    precision: str
    kv_dtype: str
    tp: int
    input_len: int
    output_len: int
    concurrency: int  # requests in flight (the static batch, or the engine's maximum)
    tokens_per_s_per_gpu: float
    source: str


def _trtllm(version: str, source: str, isl: int, osl: int, total: float,
            model: str = "mixtral-8x7b", tp: int = 2) -> PublishedFigure:  # fmt: skip
    return PublishedFigure(
        id=f"trtllm-{version}-{model}-h100-fp8-tp{tp}-{isl}x{osl}",
        model=model, gpu="h100-sxm", precision="fp8", kv_dtype="fp8", tp=tp, input_len=isl,
        output_len=osl, concurrency=4096, tokens_per_s_per_gpu=total / tp, source=source,
    )  # fmt: skip


def _a100_static(isl: int, osl: int, batch: int, per_gpu: float) -> PublishedFigure:
    return PublishedFigure(
        id=f"trtllm-v0.9.0-mixtral-8x7b-a100-fp16-tp2-{isl}x{osl}",
        model="mixtral-8x7b", gpu="a100-80gb-sxm", precision="fp16", kv_dtype="fp16", tp=2,
        input_len=isl, output_len=osl, concurrency=batch, tokens_per_s_per_gpu=per_gpu,
        source=TRTLLM_V0_9,
    )  # fmt: skip


# Mixtral-8x7B, every row of those pages the planner can model. Left out: v0.9.0's A100 FP16
# 2048/2048 row (801 tok/s/GPU at batch 32 is above the roofline bound of a batch of 32,
# 583, so the run cannot have had that batch), and the L40S/GH200 columns.
MOE_FIGURES: tuple[PublishedFigure, ...] = (
    _trtllm("v0.14.0", TRTLLM_V0_14, 128, 128, 24321.9927),
    _trtllm("v0.14.0", TRTLLM_V0_14, 1000, 1000, 15931.8663),
    _trtllm("v0.14.0", TRTLLM_V0_14, 128, 2048, 20945.7816),
    _trtllm("v0.14.0", TRTLLM_V0_14, 2048, 128, 2883.5166),
    _trtllm("v0.14.0", TRTLLM_V0_14, 2048, 2048, 9334.0732),
    _trtllm("v0.14.0", TRTLLM_V0_14, 500, 2000, 18185.6392),
    _trtllm("v0.14.0", TRTLLM_V0_14, 5000, 500, 3563.8228),
    _trtllm("v0.13.0", TRTLLM_V0_13, 128, 128, 24572.90),
    _a100_static(128, 128, 512, 2842),
    _a100_static(128, 2048, 128, 1724),
    _a100_static(2048, 128, 64, 319),
)

# The same pages' Mistral-7B (Mixtral without the routing: one expert's width) on one H100:
# how far the dense model is from these runs, next to the MoE rows.
DENSE_CONTROLS: tuple[PublishedFigure, ...] = (
    _trtllm("v0.14.0", TRTLLM_V0_14, 128, 128, 29341.284, "mistral-7b", 1),
    _trtllm("v0.14.0", TRTLLM_V0_14, 1000, 1000, 14986.7562, "mistral-7b", 1),
    _trtllm("v0.14.0", TRTLLM_V0_14, 2048, 128, 3492.3042, "mistral-7b", 1),
)

# Issue 24's figure (bf16 KV, as the issue's check has it).
ISSUE_FIGURE = PublishedFigure(
    id="issue-24-mixtral-8x7b-h100-fp8-tp2-128x128", model="mixtral-8x7b", gpu="h100-sxm",
    precision="fp8", kv_dtype="bf16", tp=2, input_len=128, output_len=128, concurrency=4096,
    tokens_per_s_per_gpu=5255, source=ISSUE_24,
)  # fmt: skip
