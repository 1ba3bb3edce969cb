"""tests/conftest.py on a machine with a GPU (simulated: a plugin makes
torch.cuda.is_available() answer True): tests not marked gpu see no CUDA device, module-scoped
fixtures included; gpu tests see it; gpus(n) skips with fewer GPUs, saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

FAKE_CUDA = "import torch\ntorch.cuda.is_available = lambda: True\n"
SAMPLE = '''
import os
import pytest
import torch


@pytest.fixture(scope="module")
def seen_by_module_fixture():
    return torch.cuda.is_available()


def test_cpu_test_sees_no_cuda(seen_by_module_fixture):
    assert seen_by_module_fixture is False and torch.cuda.is_available() is False
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.gpu
def test_gpu_test_sees_cuda():
    assert torch.cuda.is_available() is True


@pytest.mark.gpus(2)
def test_needs_two():
    raise AssertionError("must be skipped")
'''


def test_cpu_tests_are_pinned_on_a_gpu_machine(tmp_path: Path) -> None:
    (tmp_path / "fakecuda.py").write_text(FAKE_CUDA)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), str(TESTS), str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fakecuda", "-p", "conftest", "-q", "-rs",
         "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(tmp_path),
         str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 passed, 1 skipped" in out and "needs 2 CUDA GPUs, 0 visible" in out
