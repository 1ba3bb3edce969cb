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

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tiny_models import add_tokenizer, make_checkpoint

_KERNEL_TESTS = Path(__file__).resolve().parent / "kernels"
_GPU_MODULES = pytest.StashKey[set[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpus(n): needs n CUDA GPUs (skipped with fewer)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_GPU_MODULES] = {
        item.module.__name__ for item in items
        if item.get_closest_marker("gpu") and getattr(item, "module", None) is not None
    }  # fmt: skip
    for item in items:
        marker = item.get_closest_marker("gpus")
        if marker is not None:
            needed = int(marker.args[0]) if marker.args else 2
            if torch.cuda.device_count() < needed:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"needs {needed} CUDA GPUs, {torch.cuda.device_count()} visible"
                    )
                )


def _pin_cpu(mp: pytest.MonkeyPatch) -> None:
    mp.setenv("CUDA_VISIBLE_DEVICES", "")
    mp.setattr(torch.cuda, "is_available", lambda: False)


def _cuda_test_module(path: Path) -> bool:
    return _KERNEL_TESTS in path.parents


@pytest.fixture(scope="module", autouse=True)
def _cpu_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """Modules without gpu tests run on the CPU whole (module-scoped engines included)."""
    module = request.module.__name__
    if (
        not torch.cuda.is_available()
        or module in request.config.stash.get(_GPU_MODULES, set())
        or _cuda_test_module(Path(request.module.__file__))
    ):
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        _pin_cpu(mp)
        yield


@pytest.fixture(autouse=True)
def _cpu_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In modules mixing both, each test not marked gpu runs on the CPU."""
    if (
        torch.cuda.is_available()
        and request.node.get_closest_marker("gpu") is None
        and not _cuda_test_module(Path(str(request.node.path)))
    ):
        _pin_cpu(monkeypatch)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GQA Llama with a byte-level tokenizer, shared by the engine tests."""
    folder = make_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "mistral", seed=1)
    return add_tokenizer(folder)
