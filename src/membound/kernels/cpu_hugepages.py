"""Transparent huge pages for the weights, on Linux with glibc.

A CPU decode step streams every weight from memory. With 4 KiB pages that is one TLB entry
per 4 KiB: SmolLM2's 0.27 GB of bf16 weights are ~66,000 pages a step, and the page walks
cost a measurable share of the step. glibc backs its allocations with transparent huge pages
(2 MiB) when the tunable ``glibc.malloc.hugetlb=1`` is set, and oneDNN's prepacked weights
are allocated through malloc. Measured on the development machine (SmolLM2's GEMM stack
streamed cold, benchmarks/kernels/bench_cpu_hugepages.py): 30.9 -> 27.8 ms a step at one
thread (1.11x), 17.9 -> 14.9 ms at two (1.20x); docs/benchmarks.md run 4.

The tunable is read when the process starts, so it cannot be switched on from inside: the
``membound`` command re-executes itself once with it set (``console_main``), and users of the
Python API export it themselves (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``); the engine logs
a hint on a CPU when it is missing. Where transparent huge pages are disabled in the kernel
(``/sys/kernel/mm/transparent_hugepage/enabled`` is ``[never]``) nothing is done.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
NO_REEXEC = "MEMBOUND_NO_HUGEPAGES"  # set to 1 to keep the command from re-executing


def thp_available(setting_file: Path = THP_SETTING) -> bool:
    """The kernel grants transparent huge pages on request (``always`` or ``madvise``)."""
    try:
        text = setting_file.read_text()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


def has_tunable(env: Mapping[str, str]) -> bool:
    return "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", "")


def env_with_tunable(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the huge-page tunable added to any tunables already there."""
    out = dict(env)
    current = out.get("GLIBC_TUNABLES", "")
    out["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    return out


def should_reexec(env: Mapping[str, str], system: str | None = None,
                  libc: str | None = None, thp: bool | None = None) -> bool:  # fmt: skip
    """Re-execute with the tunable: Linux + glibc, THP grantable, not set yet, not refused."""
    system = platform.system() if system is None else system
    libc = platform.libc_ver()[0] if libc is None else libc
    thp = thp_available() if thp is None else thp
    return (system == "Linux" and libc == "glibc" and thp and not has_tunable(env)
            and env.get(NO_REEXEC, "0") != "1")  # fmt: skip


def reexec_with_hugepages(argv: Sequence[str]) -> None:
    """Replace this process with the same command and the tunable set (returns only when no
    re-execution is wanted)."""
    if should_reexec(os.environ):
        env = env_with_tunable(os.environ)
        env[NO_REEXEC] = "1"  # once: whatever happens, never loop
        os.execve(sys.executable, [sys.executable, *argv], env)


def hint() -> str | None:
    """A start-up log line for CPU engines started without the tunable (else None)."""
    if has_tunable(os.environ) or not should_reexec({**os.environ, NO_REEXEC: "0"}):
        return None
    return (f"CPU weights sit in 4 KiB pages: export GLIBC_TUNABLES={TUNABLE} before starting "
            "Python for transparent huge pages (the weights stream 1.1-1.2x faster on the development machine; the "
            "`membound` command sets it itself)")  # fmt: skip
