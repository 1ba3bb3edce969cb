"""Under torchrun (two processes, gloo on CPU) every rank runs the same script: rank 0 gets
TP=1's greedy tokens, the other rank serves it and exits 0 when rank 0 shuts down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from membound import LLM, SamplingParams
from membound.distributed.launch import free_port, torchrun_env
from tiny_models import make_checkpoint

SCRIPT = Path(__file__).with_name("torchrun_script.py")


def test_torchrun_env_detection() -> None:
    assert torchrun_env({}) is None
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
           "MASTER_PORT": "1"}
    got = torchrun_env(env)
    assert got is not None and (got.rank, got.world_size, got.local_rank) == (1, 2, 1)


def test_two_ranks_under_torchrun(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "m", "llama_mha_untied", seed=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={free_port()}", str(SCRIPT), str(folder)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("TOKENS ")]
    assert len(lines) == 1  # rank 0 only
    got = json.loads(lines[0].removeprefix("TOKENS "))
    llm = LLM(str(folder), block_size=4, max_model_len=128, dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    ref = llm.generate([[5, 17, 42, 99, 7], [9, 8, 7, 6]], params, use_tqdm=False)
    assert got == [o.outputs[0].token_ids for o in ref]
