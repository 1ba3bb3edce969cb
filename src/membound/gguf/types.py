"""Which ggml tensor types membound loads, and how (pure Python; no torch).

- INT4_BLOCK_TYPES stay quantized in memory: each 32-value group becomes one group of the
  int4 layout (layers/quantization/int4_rtn.py) with a scale and a (fractional) zero point:
  Q4_0 ``w = d (q - 8)``, Q4_1 ``w = d q + m``, Q4_K ``w = d sc q - dmin m`` per sub-block.
- every other type in LOADABLE_TYPES is dequantized (llama.cpp's own formulas, through the
  gguf package) and held at the engine dtype.
"""

from __future__ import annotations

FLOAT_TYPES = ("F32", "F16", "BF16")
INT4_BLOCK_TYPES = ("Q4_0", "Q4_1", "Q4_K")
LOADABLE_TYPES = FLOAT_TYPES + (
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
GROUP_SIZE = 32  # values per int4 group (one Q4_0/Q4_1 block, one Q4_K sub-block)
