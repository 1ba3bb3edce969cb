"""CPU offloading of decoder-layer weights, streamed to the device just before use.

``cpu_offload_gb`` GiB worth of whole decoder layers (spread evenly through the stack, so
resident layers' compute hides the transfers) keep their weights in pinned host memory. A
small ring of device staging slots holds the layers in flight: when an offloaded layer
starts, the next ``prefetch`` offloaded layers (wrapping into the next step) are copied on a
side stream, each into a slot whose previous occupant has finished computing. The KV cache
stays on the device.

On a CPU-only machine the engine logs that the option changes nothing; tests drive this class
with the CPU standing in for the device, which exercises the same transfer schedule
(synchronous copies, recorded in ``trace``).

The hooks installed on the layers hold the offloader only weakly: a strong reference would
close a cycle (layers -> hooks -> offloader -> layers) that keeps the whole model, and its
device memory, alive after the engine is dropped until the cycle collector happens to run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

GiB = 1024**3


@dataclass(frozen=True)
class OffloadPlan:
    layer_indices: tuple[int, ...]
    offloaded_bytes: int
    resident_layer_bytes: int


def layer_bytes(layer: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in layer.parameters())


def plan_offload(layers: nn.ModuleList, budget_bytes: int) -> OffloadPlan:
    """As many whole layers as fit in the budget, spread evenly over the stack."""
    sizes = [layer_bytes(layer) for layer in layers]
    n = len(sizes)
    k, total = 0, 0
    for size in sorted(sizes):
        if total + size > budget_bytes:
            break
        total += size
        k += 1
    if k == 0:
        return OffloadPlan((), 0, sum(sizes))
    indices = tuple(sorted({min(n - 1, (i * n) // k) for i in range(k)}))
    off = sum(sizes[i] for i in indices)
    return OffloadPlan(indices, off, sum(sizes) - off)


class WeightOffloader:
    def __init__(
        self,
        layers: nn.ModuleList,
        plan: OffloadPlan,
        device: torch.device,
        prefetch: int = 2,
        trace: list[tuple[str, int]] | None = None,
    ) -> None:
        self.layers = layers
        self.order = list(plan.layer_indices)
        self.device = device
        self.trace = trace
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.host: dict[int, list[torch.Tensor]] = {}
        for i in self.order:
            self.host[i] = [self._to_host(p) for p in layers[i].parameters()]
        num_slots = min(prefetch + 1, len(self.order))
        self.prefetch = num_slots - 1
        template = self.host[self.order[0]] if self.order else []
        self.slots = [
            [torch.empty(t.shape, dtype=t.dtype, device=device) for t in template]
            for _ in range(num_slots)
        ]
        self.slot_free: list[object] = [None] * num_slots  # per slot: its last use is done
        self.next_slot = 0  # slots are taken round-robin, in the order layers run
        self.loaded: dict[int, tuple[int, object]] = {}  # layer -> (slot, copy-done event)
        self.running_slot: dict[int, int] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for pos, i in enumerate(self.order):
            self._hooks.append(layers[i].register_forward_pre_hook(self._pre_hook(pos)))
            self._hooks.append(layers[i].register_forward_hook(self._post_hook(pos)))

    def _to_host(self, p: torch.Tensor) -> torch.Tensor:
        host = p.data.detach().to("cpu", copy=True)
        if self.cuda:
            host = host.pin_memory()
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)  # release device memory
        return host

    def _start_copy(self, pos: int) -> None:
        layer = self.order[pos]
        if layer in self.loaded:
            return
        # The slot taken now was last used num_slots layers ago, which has finished running.
        slot = self.next_slot
        self.next_slot = (slot + 1) % len(self.slots)
        if self.trace is not None:
            self.trace.append(("copy", layer))
        if self.cuda:
            assert self.stream is not None
            with torch.cuda.stream(self.stream):
                if self.slot_free[slot] is not None:
                    self.stream.wait_event(self.slot_free[slot])  # type: ignore[arg-type]
                for dst, src in zip(self.slots[slot], self.host[layer]):
                    dst.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self.loaded[layer] = (slot, event)
        else:
            for dst, src in zip(self.slots[slot], self.host[layer]):
                dst.copy_(src)
            self.loaded[layer] = (slot, None)

    def _pre_hook(self, pos: int) -> Callable[[nn.Module, object], None]:
        ref = weakref.ref(self)

        def hook(module: nn.Module, args: object) -> None:
            offloader = ref()
            if offloader is not None:
                offloader._before_layer(pos, module)

        return hook

    def _post_hook(self, pos: int) -> Callable[[nn.Module, object, object], None]:
        ref = weakref.ref(self)

        def hook(module: nn.Module, args: object, output: object) -> None:
            offloader = ref()
            if offloader is not None:
                offloader._after_layer(pos, module)

        return hook

    def _before_layer(self, pos: int, module: nn.Module) -> None:
        layer = self.order[pos]
        self._start_copy(pos)  # no-op when prefetched
        slot, event = self.loaded.pop(layer)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)  # type: ignore[arg-type]
        for p, buf in zip(module.parameters(), self.slots[slot]):
            p.data = buf
        self.running_slot[pos] = slot
        if self.trace is not None:
            self.trace.append(("run", layer))
        for ahead in range(1, self.prefetch + 1):  # wraps into the next step
            self._start_copy((pos + ahead) % len(self.order))

    def _after_layer(self, pos: int, module: nn.Module) -> None:
        slot = self.running_slot.pop(pos)
        if self.cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.slot_free[slot] = event
        for p in module.parameters():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def remove(self) -> None:
        """Uninstall: every offloaded layer gets its weights back on the device."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for layer, host in self.host.items():
            for p, src in zip(self.layers[layer].parameters(), host):
                p.data = src.to(self.device)
        self.host.clear()
        self.loaded.clear()
