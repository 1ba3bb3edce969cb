"""The control plane stays pure Python: importing it pulls in no torch, triton or CUDA."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_imports_no_gpu_machinery() -> None:
    mods = _modules_after(
        "import membound.core.scheduler, membound.core.kv_cache_manager, membound.core.outputs"
    )
    assert not {m for m in mods if m == "triton" or m.startswith("triton.")}
    assert "torch.cuda" not in mods
    assert "torch" not in mods  # the control plane does not even need torch


def test_package_import_is_light() -> None:
    mods = _modules_after("import membound")
    assert "torch" not in mods
