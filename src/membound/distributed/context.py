"""ParallelContext: one rank's view of its tensor-parallel group, and the collectives it runs.

There is no module-level state: the only global is what ``torch.distributed`` itself holds
(the default process group). Layers, the model runner and the executor receive a
``ParallelContext`` explicitly; ``ParallelContext.single()`` is the TP=1 context, whose
collectives are identities, so single-device code pays nothing.

Two groups over the same ranks (the whole world is the TP group: no pipeline or data
parallelism):

    device_group   activations: all-reduce, gather. NCCL on CUDA, gloo on CPU;
                   ``distributed_timeout_s`` bounds each collective.
    control_group  gloo, CPU: the pickled SchedulerOutput broadcast from rank 0. Workers
                   wait in it while the engine is idle, so its timeout is long; a dead rank
                   0 still ends the wait at once (its sockets close).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

IDLE_TIMEOUT = datetime.timedelta(days=30)  # control group: an idle server is not an error


@dataclass(frozen=True, eq=False)
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # "device" and "control" ProcessGroups; emptied by destroy_parallel_context, so no group
    # outlives it (one torn down later, at interpreter exit, can abort the process)
    groups: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> ParallelContext:
        return cls(0, 1, torch.device(device))

    @property
    def device_group(self) -> Any:
        return self.groups.get("device")

    @property
    def control_group(self) -> Any:
        return self.groups.get("control")

    @property
    def is_driver(self) -> bool:
        """Rank 0 runs the scheduler and samples."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    # ---- collectives (identities at world_size 1) -------------------------------------
    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place; returns it."""
        if self.world_size > 1:
            dist.all_reduce(t, group=self.device_group)
        return t

    def all_reduce_min(self, value: int) -> int:
        """The smallest ``value`` any rank holds (ranks agree on a KV block count)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.device_group)
        return int(t.item())

    def all_gather(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``t`` concatenated along ``dim``, in rank order, on every rank."""
        if self.world_size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous(), group=self.device_group)
        return torch.cat(parts, dim)

    def gather(self, t: torch.Tensor, dim: int = -1, dst: int = 0) -> torch.Tensor | None:
        """Every rank's ``t`` concatenated along ``dim`` on rank ``dst``; None elsewhere."""
        if self.world_size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)] if self.rank == dst else None
        dist.gather(t.contiguous(), parts, dst=dst, group=self.device_group)
        return torch.cat(parts, dim) if parts is not None else None

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Rank ``src``'s (picklable) ``obj`` on every rank, over the control group."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.control_group)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.control_group)

    def abort(self) -> None:
        """Best effort: make collectives blocked in NCCL return (a peer died). Gloo notices
        closed sockets by itself."""
        if self.world_size == 1 or self.backend != "nccl":
            return
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            abort(self.device_group)


def init_parallel_context(
    rank: int,
    world_size: int,
    device: torch.device,
    init_method: str,
    timeout_s: float,
) -> ParallelContext:
    """Join the process group (``init_method``: "tcp://host:port" or "env://" under torchrun)
    and build both groups. NCCL on CUDA devices, gloo on CPU."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout,
        **kwargs,
    )
    control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    groups = {"device": dist.group.WORLD, "control": control}
    return ParallelContext(rank, world_size, device, groups)


def destroy_parallel_context(ctx: ParallelContext) -> None:
    """Destroy the process groups (all of them: the TP group is the world) and drop ours."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    ctx.groups.clear()
