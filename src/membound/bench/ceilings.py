"""Measured ceilings of the device a benchmark runs on: copy bandwidth and matmul rate.

Achievable ceilings sit below datasheet ones (an H100's large device-to-device copy moves
about 3.0 TB/s of its 3.35 TB/s), so ``bench latency`` reports its achieved figures against
both. Copy bandwidth counts bytes read plus bytes written, as the reference measurements do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ceilings:
    copy_gbs: float  # measured: (read + written bytes) / seconds of the fastest repeat
    copy_bytes: int  # size of the copied tensor
    matmul_tflops: float  # measured: 2 n^3 / seconds of the fastest repeat
    matmul_n: int
    matmul_dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"copy_gbs": self.copy_gbs, "copy_bytes": self.copy_bytes,
                "matmul_tflops": self.matmul_tflops, "matmul_n": self.matmul_n,
                "matmul_dtype": self.matmul_dtype}  # fmt: skip


def best_seconds(fn: Callable[[], Any], sync: Callable[[], None], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs of ``fn`` (after one warm-up run)."""
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _copy_seconds(nbytes: int, device: str, sync: Callable[[], None], repeats: int) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return best_seconds(lambda: dst.copy_(src), sync, repeats)


def measure_ceilings(device: str, dtype: Any, *, quick: bool = False) -> Ceilings:
    """Copy a large tensor and multiply two square matrices on ``device`` in ``dtype``.

    Sizes: 1 GiB copy and n = 8192 on CUDA; 64 MiB and n = 512 on CPU (or ``quick``), enough
    to leave the caches without holding a shared machine for long. Run after the engine has
    taken its memory, a CUDA measurement that runs out of memory is retried at the quick
    sizes (the result records the sizes used); cached blocks are released afterwards."""
    import torch

    cuda = device.startswith("cuda")
    try:
        return _measure(device, dtype, quick or not cuda)
    except torch.cuda.OutOfMemoryError:
        if quick or not cuda:
            raise
        torch.cuda.empty_cache()
        return _measure(device, dtype, True)
    finally:
        if cuda:
            torch.cuda.empty_cache()


def _measure(device: str, dtype: Any, small: bool) -> Ceilings:
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    copy_bytes = (64 << 20) if small else (1 << 30)
    n = 512 if small else 8192
    repeats = 10 if cuda else 3
    copy_s = _copy_seconds(copy_bytes, device, sync, repeats)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    mm_s = best_seconds(lambda: a @ b, sync, repeats)
    return Ceilings(
        copy_gbs=2 * copy_bytes / copy_s / 1e9,
        copy_bytes=copy_bytes,
        matmul_tflops=2 * n**3 / mm_s / 1e12,
        matmul_n=n,
        matmul_dtype=str(dtype).replace("torch.", ""),
    )
