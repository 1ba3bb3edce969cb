"""Weight precisions and KV-cache dtypes: bytes per element, scales, compute rate.

A weight format says how one linear layer's ``[out_features, in_features]`` matrix
is stored (element bits plus every scale, zero point and index the checkpoint carries)
and at which tensor-core rate its matmuls run:

========== ======== ===================================================== ========
precision  bits     scales stored with the weights                        compute
========== ======== ===================================================== ========
fp32       32       none (everything, embeddings and norms too, in fp32)  fp32
bf16/fp16  16       none                                                  bf16
fp8        8        one fp32 scale per output channel                     fp8
int8       8        one fp32 scale per output channel (W8A8)              int8
int4-awq   4        per 128-input group: fp16 scale + packed 4-bit zero   bf16 (weight-only)
int4-gptq  4        as AWQ, plus an int32 ``g_idx`` per input row         bf16 (weight-only)
mxfp4      4 (E2M1) one E8M0 (1-byte) scale per 32 elements               fp4
nvfp4      4 (E2M1) one FP8 E4M3 scale per 16 elements + fp32 per tensor  fp4
========== ======== ===================================================== ========

Only the transformer-block linears are quantized; embeddings, ``lm_head``, norms,
biases and MoE routers stay in bf16, as AWQ, GPTQ and ModelOpt checkpoints ship them
(in fp32 for ``fp32``: the engine's CPU default today, which keeps every tensor in fp32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from membound.planner.errors import PlannerError, choices_text

# Compute classes a GPU publishes a dense peak for (see hardware.GPUSpec.dense_peak).
COMPUTE_CLASSES: tuple[str, ...] = ("fp32", "bf16", "fp8", "int8", "fp4")


@dataclass(frozen=True)
class WeightFormat:
    """How one precision stores a linear layer and which peak its matmuls use."""

    name: str
    element_bits: int
    compute: str  # one of COMPUTE_CLASSES
    weight_only: bool = False  # activations stay bf16 whatever the hardware offers
    per_channel_scale_bytes: int = 0  # per output channel
    group_size: int = 0  # elements per scale group along in_features (0: no groups)
    group_scale_bits: int = 0  # per group per output channel
    group_zero_bits: int = 0  # per group per output channel
    per_input_row_bytes: int = 0  # GPTQ g_idx
    per_tensor_bytes: int = 0  # NVFP4 global scale
    unquantized_bytes: int = 2  # embeddings, lm_head, norms, routers: bf16 (fp32 for fp32)
    description: str = ""

    def __post_init__(self) -> None:
        if self.compute not in COMPUTE_CLASSES:
            raise PlannerError(f"compute class {self.compute!r} is not one of {COMPUTE_CLASSES}")
        if self.element_bits not in (4, 8, 16, 32):
            raise PlannerError(f"element_bits must be 4, 8, 16 or 32, got {self.element_bits}")

    def matrix_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes of one ``[out_features, in_features]`` weight matrix with all its scales."""
        elements = out_features * in_features
        total = math.ceil(elements * self.element_bits / 8)
        total += out_features * self.per_channel_scale_bytes
        if self.group_size:
            groups = math.ceil(in_features / self.group_size) * out_features
            total += math.ceil(groups * (self.group_scale_bits + self.group_zero_bits) / 8)
        total += in_features * self.per_input_row_bytes
        total += self.per_tensor_bytes
        return total


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("bf16", 16, "bf16", description="bfloat16"),
        WeightFormat("fp16", 16, "bf16", description="float16 (runs at the bf16 rate)"),
        WeightFormat(
            "fp8", 8, "fp8", per_channel_scale_bytes=4, description="FP8 E4M3 W8A8, per-channel"
        ),
        WeightFormat(
            "int8", 8, "int8", per_channel_scale_bytes=4, description="INT8 W8A8, per-channel"
        ),
        WeightFormat(
            "int4-awq",
            4,
            "bf16",
            weight_only=True,
            group_size=128,
            group_scale_bits=16,
            group_zero_bits=4,
            description="AWQ INT4 weight-only, group 128",
        ),
        WeightFormat(
            "int4-gptq",
            4,
            "bf16",
            weight_only=True,
            group_size=128,
            group_scale_bits=16,
            group_zero_bits=4,
            per_input_row_bytes=4,
            description="GPTQ INT4 weight-only, group 128, with g_idx",
        ),
        WeightFormat("fp32", 32, "fp32", unquantized_bytes=4, description="float32"),
        WeightFormat("mxfp4", 4, "fp4", group_size=32, group_scale_bits=8, description="OCP MXFP4"),
        WeightFormat(
            "nvfp4",
            4,
            "fp4",
            group_size=16,
            group_scale_bits=8,
            per_tensor_bytes=4,
            description="NVIDIA NVFP4",
        ),
    )
}

WEIGHT_PRECISIONS: tuple[str, ...] = tuple(WEIGHT_FORMATS)

# Bytes per KV element. fp8/int8 KV caches carry per-tensor scales: negligible.
KV_DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "int8": 1}
KV_DTYPES: tuple[str, ...] = tuple(KV_DTYPE_BYTES)
_KV_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "auto": "bf16",
}


def activation_compute(precision: str) -> str:
    """Compute class attention (activations x activations) runs at: fp32 for ``fp32``
    weights, bf16 for everything else (quantized formats keep bf16 activations)."""
    return "fp32" if weight_format(precision).compute == "fp32" else "bf16"


def weight_format(precision: str) -> WeightFormat:
    """The format named ``precision``; an error lists the valid names."""
    key = precision.strip().lower()
    if key not in WEIGHT_FORMATS:
        raise PlannerError(
            f"precision {precision!r} is not known; use one of {choices_text(WEIGHT_PRECISIONS)}"
        )
    return WEIGHT_FORMATS[key]


def normalize_kv_dtype(name: str) -> str:
    """``bf16``, ``fp8``... from any accepted spelling; an error lists the valid names."""
    key = name.strip().lower()
    key = _KV_ALIASES.get(key, key)
    if key not in KV_DTYPE_BYTES:
        raise PlannerError(f"kv-dtype {name!r} is not known; use one of {choices_text(KV_DTYPES)}")
    return key


def kv_dtype_bytes(name: str) -> int:
    """Bytes per KV-cache element for ``name``."""
    return KV_DTYPE_BYTES[normalize_kv_dtype(name)]
