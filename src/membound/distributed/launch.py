"""Starting the ranks: spawned child processes on one machine, or torchrun's processes.

``RankProcesses`` starts ranks 1..N-1 with the ``spawn`` start method (rank 0 is the engine's
own process), collects the traceback of any rank that fails, and tells the engine at once
when one has died (``check_alive``), so it raises ``WorkerDiedError`` instead of waiting on a
collective that can never finish. Children are daemonic: they die with the engine's process.

Under ``torchrun`` every rank runs the user's script; ``torchrun_env`` reads the variables
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and the ranks meet
through ``env://``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """A tensor-parallel rank exited; the message names it, its exit code and its error."""


@dataclass(frozen=True)
class TorchrunEnv:
    rank: int
    world_size: int
    local_rank: int


def torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """The rank torchrun (or any env:// launcher) gave this process; None when not launched
    that way."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    return TorchrunEnv(rank, world, int(env.get("LOCAL_RANK", rank)))


def free_port() -> int:
    """A TCP port free on this machine now (for the spawned ranks' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_main(target: Callable[..., None], rank: int, errors: Any, args: tuple) -> None:
    """Run ``target(rank, *args)``; on failure report the traceback and exit non-zero."""
    import traceback

    try:
        target(rank, *args)
    except BaseException as e:  # noqa: BLE001 - everything is reported, then re-raised
        try:
            errors.send(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        except OSError:  # the engine's process is gone (so is rank 0): exit quietly
            os._exit(1)
        raise


class RankProcesses:
    """Ranks 1..world_size-1 as spawned processes running ``target(rank, *args)``."""

    def __init__(self, target: Callable[..., None], world_size: int, args: tuple) -> None:
        ctx = mp.get_context("spawn")
        self.procs: dict[int, Any] = {}
        self.errors: dict[int, Any] = {}  # rank -> the reading end of its error pipe
        for rank in range(1, world_size):
            reader, writer = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child_main, args=(target, rank, writer, args),
                            name=f"membound-tp-rank{rank}", daemon=True)
            p.start()
            writer.close()
            self.procs[rank] = p
            self.errors[rank] = reader
        self._reported: dict[int, str] = {}
        self._monitor: threading.Thread | None = None

    def pid(self, rank: int) -> int:
        return int(self.procs[rank].pid)

    def dead(self) -> list[int]:
        return [r for r, p in self.procs.items() if p.exitcode is not None]

    def describe(self, rank: int) -> str:
        p = self.procs[rank]
        code = p.exitcode
        how = f"exit code {code}"
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        msg = f"tensor-parallel rank {rank} (pid {p.pid}) died ({how})"
        error = self._error_of(rank)
        if error:
            return f"{msg}; its error: {error}"
        if code == 1:  # failed before reaching membound code: usually the spawn re-import
            msg += (
                " before it started; if your script builds the engine at import time, put "
                "that under `if __name__ == \"__main__\":` (ranks are started with the spawn "
                "method, which imports the main module again)"
            )
        return msg

    def _error_of(self, rank: int) -> str | None:
        reader = self.errors[rank]
        try:
            while rank not in self._reported and reader.poll(0.2):
                self._reported[rank] = str(reader.recv())
        except (EOFError, OSError):
            pass  # it exited without reporting (killed)
        return self._reported.get(rank)

    def check_alive(self, grace_s: float = 0.0) -> None:
        """Raise WorkerDiedError if a rank has exited (waiting up to ``grace_s`` for one that
        is exiting: a failed collective can arrive before its process is reaped)."""
        deadline = time.monotonic() + grace_s
        while True:
            dead = self.dead()
            if dead:
                raise WorkerDiedError(
                    "; ".join(self.describe(r) for r in dead)
                    + ". The engine cannot continue; start a new one."
                )
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def watch(self, on_death: Callable[[], None], interval_s: float = 0.5) -> None:
        """Call ``on_death`` once from a daemon thread when any rank exits (NCCL: abort the
        communicator so a collective blocked on the dead rank returns)."""

        def loop() -> None:
            while not self.dead():
                time.sleep(interval_s)
            on_death()

        self._monitor = threading.Thread(target=loop, name="membound-tp-monitor", daemon=True)
        self._monitor.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Wait for the ranks to exit (after the shutdown broadcast), then terminate any left."""
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs.values():
            if p.exitcode is None:
                p.terminate()
                p.join(1.0)
        for reader in self.errors.values():
            reader.close()
