"""Which ggml tensor types membound loads, and how (pure Python; no torch).

- INT4_BLOCK_TYPES stay quantized in memory: each 32-value group becomes one group of the
  int4 layout (layers/quantization/int4_rtn.py) with a scale and a (fractional) zero point:
  Q4_0 ``w = d (q - 8)``, Q4_1 ``w = d q + m``, Q4_K ``w = d sc q - dmin m`` per sub-block.
- INT8_BLOCK_TYPES stay quantized too, as int8 with one scale per output row: their blocks
  (Q8_0 ``w = d q``, the 5/6/2/3-bit types) are dequantized (llama.cpp's formulas, through
  the gguf package) and each row requantized symmetric int8 (lossy: per-block scales have no
  per-row form). A decoder linear fusing int4 and int8 types, and a quantized token
  embedding or output table of any block type, go the same way.
- the float types are held at the engine dtype (dequantized the same way).
"""

from __future__ import annotations

FLOAT_TYPES = ("F32", "F16", "BF16")
INT4_BLOCK_TYPES = ("Q4_0", "Q4_1", "Q4_K")
INT8_BLOCK_TYPES = ("Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K", "Q6_K")
QUANTIZED_TYPES = INT4_BLOCK_TYPES + INT8_BLOCK_TYPES
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
