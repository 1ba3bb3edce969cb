"""rms_norm / fused_add_rms_norm (Triton) against their references, rows of any width,
strided 3-D inputs (qk-norm over heads), mixed weight dtype."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_testing import assert_close, device_for, dtype_params, generator, randn  # noqa: E402

from membound.kernels.rms_norm import (  # noqa: E402
    fused_add_rms_norm,
    fused_add_rms_norm_ref,
    rms_norm,
    rms_norm_ref,
)

SHAPES = [(1, 64), (5, 96), (3, 200), (2, 3, 128), (7, 1000)]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_norm_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    dev = device_for(dtype)
    gen = generator(sum(shape))
    x = randn(shape, dtype, dev, gen) * 3
    w = randn(shape[-1:], dtype, dev, gen)
    got = rms_norm(x, w, 1e-6)
    assert got.shape == x.shape and got.dtype == dtype
    assert_close(got, rms_norm_ref(x, w, 1e-6), f"rms_norm {shape}")


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_add_rms_norm_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    dev = device_for(dtype)
    gen = generator(sum(shape) + 1)
    x, res = randn(shape, dtype, dev, gen), randn(shape, dtype, dev, gen)
    w = randn(shape[-1:], dtype, dev, gen)
    x_before, res_before = x.clone(), res.clone()
    out, new_res = fused_add_rms_norm(x, res, w, 1e-5)
    ref_out, ref_res = fused_add_rms_norm_ref(x, res, w, 1e-5)
    assert torch.equal(new_res, ref_res)  # the add rounds in the input dtype, like torch
    assert_close(out, ref_out, f"fused {shape}")
    assert torch.equal(x, x_before) and torch.equal(res, res_before)  # inputs untouched


def test_strided_heads_qk_norm() -> None:
    """q of a fused QKV output: [T, H, D] with a token stride wider than H * D."""
    dev = device_for(torch.float16)
    gen = generator(3)
    qkv = randn((6, 4 * 32 + 2 * 2 * 32), torch.float16, dev, gen)
    q = qkv[:, : 4 * 32].view(6, 4, 32)
    w = randn((32,), torch.float16, dev, gen)
    assert_close(rms_norm(q, w, 1e-6), rms_norm_ref(q, w, 1e-6), "strided heads")


def test_weight_dtype_promotes_like_torch() -> None:
    dev = device_for(torch.float16)
    gen = generator(4)
    x = randn((3, 64), torch.float16, dev, gen)
    w = randn((64,), torch.float32, dev, gen)
    got = rms_norm(x, w, 1e-6)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, rms_norm_ref(x, w, 1e-6), atol=2e-5, rtol=2e-5)


def test_rejects_bad_arguments() -> None:
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="weight has 4 entries for rows of 8"):
        rms_norm(x, torch.zeros(4), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        fused_add_rms_norm(x, torch.zeros(2, 9), torch.zeros(8), 1e-6)
