"""Shared fixtures, and where tests run on a machine with a GPU.

Most tests were written for the CPU (tolerances, expected kernels, ``device="auto"``
engines). On a GPU machine they stay on the CPU: every test not marked ``gpu`` sees no CUDA
device (``torch.cuda.is_available()`` answers False and ``CUDA_VISIBLE_DEVICES`` is empty
for the processes it starts; TP=2 tests therefore run their two ranks on the CPU with gloo
instead of failing on a one-GPU machine). Tests marked ``gpu`` see the GPU; those needing
several carry ``@pytest.mark.gpus(n)`` and skip, with the reason, when fewer are visible.
tests/kernels/ is the exception: its fp16/fp32 cases are written for both devices
(kernel_testing.device_for) and run compiled on a GPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tiny_models import add_tokenizer, make_checkpoint

_KERNEL_TESTS = Path(__file__).resolve().parent / "kernels"
_PIN = pytest.StashKey[pytest.MonkeyPatch]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpus(n): needs n CUDA GPUs (skipped with fewer)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("gpus")
        if marker is not None:
            needed = int(marker.args[0]) if marker.args else 2
            if torch.cuda.device_count() < needed:
                reason = f"needs {needed} CUDA GPUs, {torch.cuda.device_count()} visible"
                item.add_marker(pytest.mark.skip(reason=reason))


def _runs_on_cpu(item: pytest.Item) -> bool:
    return (
        torch.cuda.is_available()
        and item.get_closest_marker("gpu") is None
        and _KERNEL_TESTS not in Path(str(item.path)).parents
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Pinned before any fixture of the test is set up, module- and session-scoped ones
    included, and until its teardown ends (pytest_runtest_teardown below)."""
    if _runs_on_cpu(item):
        mp = pytest.MonkeyPatch()
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        mp.setattr(torch.cuda, "is_available", lambda: False)
        item.stash[_PIN] = mp
    return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        mp = item.stash.get(_PIN, None)
        if mp is not None:
            mp.undo()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GQA Llama with a byte-level tokenizer, shared by the engine tests."""
    folder = make_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "mistral", seed=1)
    return add_tokenizer(folder)


@pytest.fixture(scope="session")
def native() -> ModuleType:
    """membound's native CPU kernels (kernels/cpu_native.py), built once per session. Skipped
    where they cannot be built (no C++ compiler or ninja); where both are present a failed
    build fails the tests that need it, so a broken C++ source never passes as skipped."""
    from membound.kernels import cpu_native

    try:
        return cpu_native.build_native_cpu_kernels()
    except cpu_native.NativeBuildError as e:
        has_tools = shutil.which("ninja") and (shutil.which("c++") or shutil.which("g++"))
        if has_tools:
            pytest.fail(f"the native CPU kernels failed to build with a compiler present: {e}")
        pytest.skip(f"native CPU kernels cannot be built here: {e}")
