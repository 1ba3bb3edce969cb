"""A tensor-parallel rank that dies makes the engine raise WorkerDiedError (naming the rank,
its pid and the signal) within seconds, never a hang; the engine then refuses further steps
and shuts down cleanly."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from tp_testing import ENGINE

from membound import LLM, SamplingParams
from membound.distributed import RankProcesses, WorkerDiedError
from tiny_models import make_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("die") / "m", "mistral", seed=2)


def test_killed_rank_raises_instead_of_hanging(folder: Path) -> None:
    llm = LLM(str(folder), **ENGINE, tensor_parallel_size=2)
    engine = llm.llm_engine
    procs = engine.executor.procs
    assert procs is not None
    pid = procs.pid(1)
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    engine.add_request("r", [5, 6, 7, 8], params)
    engine.step()  # running: both ranks are in the step loop
    killed_at: list[float] = []

    def kill() -> None:  # mid-run: lands while rank 0 is stepping
        killed_at.append(time.monotonic())
        os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(0.2, kill)
    timer.start()
    try:
        with pytest.raises(WorkerDiedError) as info:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # far more steps than 100 tokens need
                engine.step()
                if not engine.has_unfinished_requests():
                    engine.add_request(str(time.monotonic()), [5, 6, 7, 8], params)
        assert time.monotonic() - killed_at[0] < 5.0
        message = str(info.value)
        assert f"rank 1 (pid {pid}) died (killed by SIGKILL)" in message
        with pytest.raises(WorkerDiedError):  # the engine stays failed
            engine.step()
    finally:
        timer.cancel()
        llm.shutdown()
    assert not torch.distributed.is_initialized()


def _fail_on_rank(rank: int, message: str) -> None:
    raise ValueError(f"{message} on rank {rank}")


def test_rank_error_is_reported_with_its_traceback() -> None:
    procs = RankProcesses(_fail_on_rank, 2, ("boom",))
    try:
        deadline = time.monotonic() + 60
        while not procs.dead() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(WorkerDiedError, match=r"rank 1 \(pid \d+\) died \(exit code 1\); "
                                                  r"its error: ValueError: boom on rank 1"):
            procs.check_alive()
    finally:
        procs.stop()
