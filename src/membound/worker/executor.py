"""Executor: runs each step on every tensor-parallel rank; rank 0's result comes back.

    rank 0 (the engine's process)          ranks 1..N-1 (spawned, or torchrun's processes)
    scheduler.schedule() -> sched
    check the ranks are alive
    broadcast(sched)  ------------------>  sched = broadcast()   (None: shut down)
    worker.execute(sched)  <-all-reduce->  worker.execute(sched)  (result dropped)
    ModelRunnerOutput (rank 0 sampled)

The scheduler, tokenizer and output processing exist on rank 0 only. With
``tensor_parallel_size`` > 1 and no torchrun variables, the executor spawns ranks 1..N-1 on
this machine (rendezvous on a free local port); under torchrun every process builds the
engine, and on ranks other than 0 building it serves rank 0 until rank 0 shuts down and then
exits the process (SystemExit(0)): code after ``LLM(...)`` runs on rank 0 only.

A rank that dies is reported as WorkerDiedError (rank, pid, exit code or signal, its
traceback) at the next step, or by the collective it breaks (gloo sees the closed sockets at
once; on NCCL a monitor thread aborts the communicator), never as a hang.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from membound.config import ConfigError, EngineConfig
from membound.core.outputs import ModelRunnerOutput, SchedulerOutput
from membound.distributed.context import (
    ParallelContext,
    destroy_parallel_context,
    init_parallel_context,
)
from membound.distributed.launch import RankProcesses, WorkerDiedError, free_port, torchrun_env
from membound.worker.worker import Worker, WorkerReady

logger = logging.getLogger(__name__)
T = TypeVar("T")


def rank_device(device: str, local_rank: int) -> torch.device:
    """cuda:<local rank> on GPUs (one GPU per rank), else the CPU."""
    if device.startswith("cuda"):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def serve_rank(ctx: ParallelContext, config: EngineConfig) -> None:
    """A rank other than 0: build its worker, then run every step rank 0 broadcasts."""
    worker = Worker(config, ctx)
    while True:
        sched = ctx.broadcast_object(None)
        if sched is None:
            return
        worker.execute(sched)


def _share_cores(tp: int) -> None:
    """CPU ranks on one machine split its cores (oversubscribed OpenMP threads spin)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp))


def _spawned_rank_main(rank: int, config: EngineConfig, init_method: str) -> None:
    pc = config.parallel_config
    device = rank_device(config.device, rank)
    if device.type == "cpu":
        _share_cores(pc.tensor_parallel_size)
    ctx = init_parallel_context(rank, pc.tensor_parallel_size, device, init_method,
                                pc.distributed_timeout_s)
    try:
        serve_rank(ctx, config)
    finally:
        destroy_parallel_context(ctx)


def _is_collective_error(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset", "gloo", "NCCL")
    )


class Executor:
    def __init__(self, config: EngineConfig, *, progress: bool = False) -> None:
        self.config = config
        self.procs: RankProcesses | None = None
        self.failure: WorkerDiedError | None = None
        threads = torch.get_num_threads()  # restored at shutdown (CPU ranks share the cores)
        pc = config.parallel_config
        if pc.tensor_parallel_size == 1:
            self.parallel = ParallelContext.single(config.device)
        else:
            self.parallel = self._start_ranks(config)
        self._finalizer = weakref.finalize(self, _shutdown, self.parallel, self.procs, threads)
        try:
            self.driver = Worker(config, self.parallel, progress=progress)
            self.ready: WorkerReady = self.driver.ready
        except BaseException as e:
            error = self._rank_failure(e)
            if self.procs is not None:  # they may be blocked in a collective with us
                self.procs.stop(1.0)
            self.shutdown()
            if error is not None:
                raise error from e
            raise

    # ---- start-up ---------------------------------------------------------------------
    def _start_ranks(self, config: EngineConfig) -> ParallelContext:
        pc = config.parallel_config
        tp, timeout = pc.tensor_parallel_size, pc.distributed_timeout_s
        env = torchrun_env()
        if env is not None:
            if env.world_size != tp:
                raise ConfigError(
                    f"torchrun started {env.world_size} processes but tensor_parallel_size={tp}; "
                    "they must match (one process per tensor-parallel rank)"
                )
            device = rank_device(config.device, env.local_rank)
            ctx = init_parallel_context(env.rank, tp, device, "env://", timeout)
            if ctx.rank != 0:
                try:
                    serve_rank(ctx, config)
                finally:
                    destroy_parallel_context(ctx)
                raise SystemExit(0)
            return ctx
        if dist.is_initialized():
            raise ConfigError(
                "a tensor-parallel engine is already running in this process; shut it down "
                "(LLM.shutdown()) before starting another"
            )
        if config.device.startswith("cuda") and torch.cuda.device_count() < tp:
            raise ConfigError(
                f"tensor_parallel_size={tp} needs {tp} GPUs on this machine but "
                f"{torch.cuda.device_count()} are visible; lower it or launch with torchrun"
            )
        init_method = f"tcp://127.0.0.1:{free_port()}"
        self.procs = RankProcesses(_spawned_rank_main, tp, (config, init_method))
        device = rank_device(config.device, 0)
        if device.type == "cpu":  # this process is rank 0: it takes its share of the cores
            _share_cores(tp)
        try:
            ctx = self._watched(
                lambda: init_parallel_context(0, tp, device, init_method, timeout)
            )
        except BaseException:
            self.procs.stop(0.0)
            raise
        if ctx.backend == "nccl":  # NCCL does not notice a dead peer by itself
            self.procs.watch(ctx.abort)
        return ctx

    def _watched(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a blocking rendezvous) while checking the spawned ranks stay alive."""
        assert self.procs is not None
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread
                box["error"] = e

        thread = threading.Thread(target=run, name="membound-tp-rendezvous", daemon=True)
        thread.start()
        while thread.is_alive():
            self.procs.check_alive()
            thread.join(0.05)
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    # ---- steps ------------------------------------------------------------------------
    def execute(
        self, sched: SchedulerOutput, token_bitmasks: dict[str, torch.Tensor] | None = None
    ) -> ModelRunnerOutput:
        """One step on every rank. ``token_bitmasks`` (structured outputs: allowed tokens per
        request id) only reach rank 0, the rank that samples."""
        if self.parallel.world_size == 1:
            return self.driver.execute(sched, token_bitmasks)
        if self.failure is not None:
            raise self.failure
        try:
            if self.procs is not None:
                self.procs.check_alive()
            self.parallel.broadcast_object(sched)
            return self.driver.execute(sched, token_bitmasks)
        except BaseException as e:
            error = self._rank_failure(e)
            if error is None:
                raise
            self.failure = error
            raise error from e

    def _rank_failure(self, e: BaseException) -> WorkerDiedError | None:
        """The WorkerDiedError behind ``e`` if a rank died (or a collective broke)."""
        if isinstance(e, WorkerDiedError):
            return e
        if self.parallel.world_size == 1:
            return None
        if self.procs is not None:
            try:
                self.procs.check_alive(grace_s=2.0 if _is_collective_error(e) else 0.0)
            except WorkerDiedError as died:
                return died
        if _is_collective_error(e):
            return WorkerDiedError(
                f"a tensor-parallel collective failed ({e}); another rank has probably "
                "exited: see its log. The engine cannot continue; start a new one."
            )
        return None

    def shutdown(self) -> None:
        """Tell the other ranks to exit and wait for them (idempotent)."""
        self._finalizer()


def _shutdown(parallel: ParallelContext, procs: RankProcesses | None, threads: int) -> None:
    if parallel.world_size == 1:
        return
    torch.set_num_threads(threads)
    try:
        if procs is None or not procs.dead():
            parallel.broadcast_object(None)
    except Exception as e:  # noqa: BLE001 - the ranks are going away anyway
        logger.debug("shutdown broadcast failed: %s", e)
    if procs is not None:
        procs.stop()
    try:
        destroy_parallel_context(parallel)
    except Exception as e:  # noqa: BLE001
        logger.debug("destroying the process group failed: %s", e)
