"""rotary_embedding (Triton, in place) against rotary_embedding_ref, with cos/sin rows from
RotaryEmbedding's tables: default, linear, llama3 and dynamic-NTK scaling."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_testing import assert_close, device_for, dtype_params, generator, randn  # noqa: E402

from membound.config import RopeScaling  # noqa: E402
from membound.kernels.rotary import rotary_embedding, rotary_embedding_ref  # noqa: E402
from membound.layers.rotary import RotaryEmbedding  # noqa: E402

SCALINGS = {
    "default": None,
    "linear": RopeScaling("linear", 2.0),
    "llama3": RopeScaling("llama3", 8.0, original_max_position_embeddings=32,
                          low_freq_factor=1.0, high_freq_factor=4.0),
    "dynamic": RopeScaling("dynamic", 2.0, original_max_position_embeddings=32),
}
CASES = [(4, 2, 64), (8, 1, 80), (2, 2, 128), (3, 1, 96)]  # (num_heads, num_kv_heads, head_dim)


def qkv_views(t: int, h: int, kvh: int, d: int, dtype: torch.dtype, seed: int) -> tuple:
    """q, k as strided views of one fused QKV buffer (what the model rotates)."""
    dev = device_for(dtype)
    qkv = randn((t, (h + 2 * kvh) * d), dtype, dev, generator(seed))
    q = qkv[:, : h * d].view(t, h, d)  # [T, H, D]
    k = qkv[:, h * d : (h + kvh) * d].view(t, kvh, d)  # [T, KVH, D]
    return qkv, q, k


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("scaling", sorted(SCALINGS))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rotary_matches_reference(case: tuple[int, int, int], scaling: str, dtype: torch.dtype) -> None:
    h, kvh, d = case
    dev = device_for(dtype)
    rope = RotaryEmbedding(d, 128, 10000.0, SCALINGS[scaling]).to(dev)
    positions = torch.tensor([0, 1, 5, 31, 40, 90, 127], device=dev)
    seq_lens = torch.tensor([2, 2, 40, 40, 41, 100, 128], device=dev)  # dynamic: past 32
    cos, sin = rope.cos_sin(positions, seq_lens)  # [T, D / 2] float32
    qkv, q, k = qkv_views(len(positions), h, kvh, d, dtype, seed=sum(case))
    ref_qkv, ref_q, ref_k = qkv_views(len(positions), h, kvh, d, dtype, seed=sum(case))
    rotary_embedding(q, k, cos, sin)
    rotary_embedding_ref(ref_q, ref_k, cos, sin)
    assert_close(qkv, ref_qkv, f"rotary {case} {scaling}")  # v untouched, q/k rotated


def test_rejects_bad_arguments() -> None:
    q, k = torch.zeros(3, 2, 16), torch.zeros(3, 1, 16)
    with pytest.raises(ValueError, match="cos has shape"):
        rotary_embedding(q, k, torch.zeros(3, 16), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="does not match q"):
        rotary_embedding(q, torch.zeros(2, 1, 16), torch.zeros(3, 8), torch.zeros(3, 8))
