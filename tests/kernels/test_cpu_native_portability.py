"""The native kernels' source compiles for CPUs without this one's features.

The build uses ``-march=native``, so the machine that runs the tests compiles only its own
branch of the source's feature guards (AMX, AVX512-BF16, AVX512-VBMI, ...). A helper that
exists in one branch and is called from shared code breaks every other CPU's build, and
there the CPU backend falls back to the plain-torch kernels with a warning (as it did for CPUs
without AMX until a stub was added). Here the source is checked (``-fsyntax-only``, templates
instantiated) for an AVX2 desktop, an AVX-512 server without BF16
and one with AVX512-BF16 but no AMX."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig

import pytest

from membound.kernels import cpu_native

# an AVX2 desktop; AVX-512 without BF16; AVX512-BF16 without AMX (the machine's own build,
# -march=native, covers what it has: AMX here)
TARGETS = ("x86-64-v3", "icelake-server", "cooperlake")


def test_source_compiles_without_this_cpus_features() -> None:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ on this machine (the native kernels need a C++ compiler)")
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    includes.append(f"-I{sysconfig.get_paths()['include']}")
    runs = {}
    for march in TARGETS:  # concurrently: each takes ~20 s
        flags = [f"-march={march}" if f == "-march=native" else f for f in cpu_native.CFLAGS]
        cmd = [compiler, "-std=c++20", "-fsyntax-only", *flags, *includes,  # as torch builds
               "-DTORCH_EXTENSION_NAME=portability_check", str(cpu_native.SOURCE)]  # fmt: skip
        runs[march] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)  # fmt: skip
    failed = {}
    for march, proc in runs.items():
        _, stderr = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failed[march] = [line for line in stderr.splitlines() if "error" in line][:10]
    assert not failed, "\n".join(f"-march={m}:\n" + "\n".join(e) for m, e in failed.items())
