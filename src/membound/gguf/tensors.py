"""GGUF tensor data -> arrays the model's layers take (numpy; torch only at the hand-off).

- ``unpermute_rows``: llama.cpp's converter reorders the rows of Llama q/k projections so that
  its rotary embedding pairs adjacent values (``permute`` in convert_hf_to_gguf.py); HF-layout
  models pair value i with i + head_dim/2. Undone here on whole rows, so it applies to float
  weights and to raw quantized rows alike (blocks never cross rows). ``permute_rows`` does
  the converter's reordering (for writing GGUF files).
- ``decode_int4``: Q4_0 / Q4_1 / Q4_K rows -> (q 0..15, scale, zero) per group of 32 with
  ``w = (q - zero) * scale`` exactly (zero may be fractional: Q4_1's and Q4_K's minimums).
- ``int4_layout``: those pieces packed and transposed into the int4 layers' stored layout.
- ``dequantize``: any LOADABLE type -> float32, through the gguf package (llama.cpp's formulas).
"""

from __future__ import annotations

import numpy as np

from membound.gguf.types import GROUP_SIZE


def unpermute_rows(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k ``permute``: its row ``h, j, i`` (head, pair index, half)
    holds HF row ``h, i, j``. Works on any [rows, ...] array."""
    n = rows.shape[0]
    index = np.arange(n).reshape(num_heads, n // num_heads // 2, 2).swapaxes(1, 2).reshape(-1)
    return rows[index]


def permute_rows(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's q/k ``permute``: HF row ``h, i, j`` (head, half, pair index) goes to row
    ``h, j, i``; ``unpermute_rows`` inverts it. Works on any [rows, ...] array."""
    n = rows.shape[0]
    index = np.arange(n).reshape(num_heads, 2, n // num_heads // 2).swapaxes(1, 2).reshape(-1)
    return rows[index]


def dequantize(data: np.ndarray, ggml_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array of ``shape`` from a tensor's raw data."""
    import gguf

    qtype = gguf.GGMLQuantizationType[ggml_type]
    out = gguf.quants.dequantize(np.asarray(data), qtype)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


def decode_int4(
    data: np.ndarray, ggml_type: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8 [rows, cols], scale float32 [rows, cols/32], zero float32 [rows, cols/32])."""
    rows, cols = shape
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(rows, -1)
    if ggml_type in ("Q4_0", "Q4_1"):
        header = 2 if ggml_type == "Q4_0" else 4
        blocks = raw.reshape(rows, cols // GROUP_SIZE, header + 16)
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = blocks[..., header:]  # value j: low nibble of byte j, value j+16: high nibble
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        if ggml_type == "Q4_0":
            return q.reshape(rows, cols), d, np.full_like(d, 8.0)
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        return _with_offset(q.reshape(rows, cols // GROUP_SIZE, GROUP_SIZE), d, m, rows, cols)
    if ggml_type == "Q4_K":
        return _decode_q4_k(raw, rows, cols)
    raise ValueError(f"{ggml_type} is not an int4 block type")


def _decode_q4_k(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    import gguf

    blocks = raw.reshape(rows * (cols // 256), 144)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # [n, 1]
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16])  # [n, 8] each, 6-bit
    qs = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0x0F).reshape(rows, cols // GROUP_SIZE, GROUP_SIZE)
    scale = (d * sc.astype(np.float32)).reshape(rows, -1)
    minimum = -(dmin * mn.astype(np.float32)).reshape(rows, -1)  # w = scale q + minimum
    return _with_offset(q, scale, minimum, rows, cols)


def _with_offset(
    q: np.ndarray, scale: np.ndarray, offset: np.ndarray, rows: int, cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w = scale q + offset`` as ``(q - zero) scale``; a group with scale 0 (every value
    equal to ``offset``) becomes q = 0, zero = -1, scale = offset."""
    flat = scale == 0
    safe = np.where(flat, 1.0, scale)
    zero = np.where(flat, -1.0, -offset / safe).astype(np.float32)
    q = np.where(flat[..., None], 0, q).astype(np.uint8)
    return q.reshape(rows, cols), np.where(flat, offset, scale).astype(np.float32), zero


def int4_layout(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``decode_int4``'s row-major pieces -> membound's int4 layout (kernels/int4_gemm.py):
    qweight [in // 8, out] int32 (nibble j of word i holds input 8i + j), scales and zeros
    [in // 32, out]. Numpy bit operations: no int64 temporaries of the whole weight."""
    rows, cols = q.shape
    groups = q.reshape(rows, cols // 8, 8).astype(np.uint32)
    words = np.zeros((rows, cols // 8), dtype=np.uint32)
    for j in range(8):
        words |= groups[..., j] << np.uint32(4 * j)
    return (
        np.ascontiguousarray(words.view(np.int32).T),
        np.ascontiguousarray(scale.T),
        np.ascontiguousarray(zero.T),
    )
