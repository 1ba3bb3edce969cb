"""Shared helpers for the kernel tests: devices, dtypes, tolerances, poisoned outputs."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# The interpreter handles fp16/fp32 only; bf16 is checked on a GPU.
CPU_DTYPES = (torch.float16, torch.float32)

_TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def device_for(dtype: torch.dtype) -> torch.device:
    """bf16 runs on the GPU; fp16/fp32 on the GPU when there is one, else interpreted."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


def dtype_params() -> list[object]:
    """fp16 and fp32 everywhere; bf16 marked gpu (skipped without CUDA)."""
    return [
        *CPU_DTYPES,
        pytest.param(torch.bfloat16, marks=[gpu, needs_cuda], id="bfloat16"),
    ]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    atol, rtol = _TOL[actual.dtype]
    assert not torch.isnan(actual).any(), f"{what}: NaN left in the output (poison not overwritten)"
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=what)


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer full of NaN: anything the kernel forgets to write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
          gen: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Fresh random data, drawn on CPU (reproducible) then moved."""
    return torch.randn(shape, generator=gen).to(dtype=dtype, device=device)
