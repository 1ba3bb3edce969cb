"""Quantization methods for linear layers (one strategy object per layer).

``get_linear_method(config, checkpoint_names)`` picks the method for a layer; importing this
package registers every method. See base.py for the interface and docs/quantization.md for
the formats.
"""

from __future__ import annotations

from membound.layers.quantization import awq, fp4, fp8, gguf, gptq, int4_rtn, int8  # noqa: F401
from membound.layers.quantization.base import (
    QuantizationMethod,
    QuantizedWeightError,
    TensorSpec,
    WeightShapeError,
    get_linear_method,
)
from membound.layers.quantization.unquantized import UnquantizedLinearMethod

__all__ = [
    "QuantizationMethod",
    "QuantizedWeightError",
    "TensorSpec",
    "UnquantizedLinearMethod",
    "WeightShapeError",
    "get_linear_method",
]
