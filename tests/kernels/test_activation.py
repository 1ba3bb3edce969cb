"""silu_and_mul (Triton) against silu_and_mul_ref."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_testing import assert_close, device_for, dtype_params, generator, randn  # noqa: E402

from membound.kernels.activation import silu_and_mul, silu_and_mul_ref  # noqa: E402

SHAPES = [(1, 2 * 64), (5, 2 * 112), (3, 2 * 1500), (2, 3, 2 * 80), (0, 2 * 16)]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_silu_and_mul_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    dev = device_for(dtype)
    x = randn(shape, dtype, dev, generator(sum(shape))) * 4
    got = silu_and_mul(x)
    assert got.shape == (*shape[:-1], shape[-1] // 2) and got.dtype == dtype
    assert_close(got, silu_and_mul_ref(x), f"silu_and_mul {shape}")


def test_rejects_odd_width() -> None:
    with pytest.raises(ValueError, match="must be even"):
        silu_and_mul(torch.zeros(2, 7))
