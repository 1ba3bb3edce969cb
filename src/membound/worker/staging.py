"""Staging: a step's host arrays packed into one buffer, moved to the device in one copy.

    pass 1  add(array) ...            each array's bytes go to the next 8-byte-aligned offset
    copy    one non-blocking host-to-device copy of the used bytes (pinned memory on CUDA)
    pass 2  take(dtype) ...           views of the device buffer, in the order of pass 1

The caller runs the same deterministic code twice (once adding, once taking), so no handle
bookkeeping leaks into it. The buffer grows (doubling) when a step needs more.
"""

from __future__ import annotations

import numpy as np
import torch

_ALIGN = 8


class Staging:
    def __init__(self, device: torch.device, *, pinned: bool, capacity: int = 1 << 16) -> None:
        self.device = device
        self.pinned = pinned
        self._alloc(capacity)
        self.entries: list[tuple[int, int, tuple[int, ...], np.dtype]] = []
        self.used = 0
        self.cursor = 0
        # CUDA: the last copy's completion; the host buffer is rewritten only after it
        self.copied: torch.cuda.Event | None = None

    def _alloc(self, capacity: int) -> None:
        self.host = torch.empty(capacity, dtype=torch.uint8, pin_memory=self.pinned)
        self.host_np = self.host.numpy()
        self.device_storage = torch.empty(capacity, dtype=torch.uint8, device=self.device)

    def reset(self) -> None:
        if self.copied is not None:  # normally long done: the step after it has synced
            self.copied.synchronize()
        self.entries.clear()
        self.used = 0
        self.cursor = 0

    def add(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        start = -(-self.used // _ALIGN) * _ALIGN
        end = start + a.nbytes
        if end > self.host_np.shape[0]:
            self._grow(end)
        self.host_np[start:end] = a.reshape(-1).view(np.uint8)
        self.entries.append((start, end, a.shape, a.dtype))
        self.used = end

    def _grow(self, need: int) -> None:
        old = self.host_np[: self.used].copy()
        self._alloc(max(need, 2 * self.host_np.shape[0]))
        self.host_np[: self.used] = old

    def copy_to_device(self) -> None:
        n = self.used
        self.device_storage[:n].copy_(self.host[:n], non_blocking=True)
        if self.device.type == "cuda":
            self.copied = torch.cuda.Event()
            self.copied.record()

    def take(self) -> torch.Tensor:
        """The next array of pass 1, as a view of the device buffer (its own dtype)."""
        start, end, shape, dtype = self.entries[self.cursor]
        self.cursor += 1
        flat = self.device_storage[start:end].view(_TORCH_DTYPES[np.dtype(dtype)])
        return flat.view(shape)


_TORCH_DTYPES = {
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.bool_): torch.bool,
}
