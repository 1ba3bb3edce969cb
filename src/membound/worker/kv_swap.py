"""KV swap space: copies of preempted requests' blocks in (pinned) CPU memory.

Blocks move as they are stored: an FP8 cache swaps its E4M3 bytes (half of bf16's), copied
through uint8 views because torch's index ops have no FP8 kernels."""

from __future__ import annotations

import torch

from membound.kernels.kv_quant import is_fp8


def _as_copyable(cache: torch.Tensor) -> torch.Tensor:
    return cache.view(torch.uint8) if is_fp8(cache.dtype) else cache


class KVSwapSpace:
    """One CPU tensor per layer shaped like the device cache: [2, num_cpu_blocks, ...]."""

    def __init__(self, device_caches: list[torch.Tensor], num_cpu_blocks: int) -> None:
        pin = device_caches[0].is_cuda and torch.cuda.is_available()
        self.device_caches = [_as_copyable(c) for c in device_caches]
        device_caches = self.device_caches
        self.cpu_caches = [
            torch.zeros(
                (2, num_cpu_blocks, *c.shape[2:]), dtype=c.dtype, device="cpu", pin_memory=pin
            )
            for c in device_caches
        ]

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """(device block, cpu block) pairs: save device K/V into the CPU pool."""
        if not pairs:
            return
        src = torch.tensor([g for g, _ in pairs], device=self.device_caches[0].device)
        dst = torch.tensor([c for _, c in pairs])
        for dev, cpu in zip(self.device_caches, self.cpu_caches):
            # [2, n, block_size, kv_heads, head_dim]
            cpu[:, dst] = dev.index_select(1, src).to("cpu")

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """(cpu block, device block) pairs: restore K/V into freshly allocated device blocks."""
        if not pairs:
            return
        src = torch.tensor([c for c, _ in pairs])
        dst = torch.tensor([g for _, g in pairs], device=self.device_caches[0].device)
        for dev, cpu in zip(self.device_caches, self.cpu_caches):
            blocks = cpu.index_select(1, src).to(dev.device, non_blocking=True)
            dev.index_copy_(1, dst, blocks)
