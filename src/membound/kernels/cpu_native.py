"""membound's native CPU kernels: C++ (csrc/cpu_kernels.cpp), built on this machine on
first use with torch's extension builder and cached by it (``~/.cache/torch_extensions``,
or ``$TORCH_EXTENSIONS_DIR``).

Why C++: the torch formulations of the small per-layer ops are several passes each with
float32 temporaries, and each op costs microseconds of dispatch. At batch 1 that overhead is a
third of a SmolLM2 decode step (benchmarks/results/cpu_profile_*). Decode attention in torch
also gathers every sequence's K/V into fresh tensors before reading them; the kernel here
reads the paged cache in place.

    kernel                 reference (the oracle its test compares against)
    decode_attention       paged_attention.paged_decode_attention_ref
    prefill_attention      prefill_attention.prefill_attention_ref (bf16, on the CPU's matrix
                           units through torch's brgemm ukernel, or with AVX512-BF16 where
                           there is no AMX; ``prefill_supported``, ``bf16_gemm_path``)
    rms_norm (+ residual)  rms_norm.rms_norm_ref / fused_add_rms_norm_ref
    silu_and_mul           activation.silu_and_mul_ref
    rotary_embedding       rotary.rotate_ref (in place on q and k)
    linear_int8 (+ silu)   cpu_quant_linear.int8_grouped_linear_ref (int8 W8A8 on AVX512-VNNI,
                           activations in groups of 64; ``int8_linear_supported``)

Results equal the references' in bf16 (the same roundings in the same places, float32
accumulation; the attention kernels within bf16 rounding: they sum in another order and
prefill rounds the softmax numerators to bf16 for its second GEMM); in float32 they differ
by summation order (~1e-6), so ``CpuOps`` routes only bf16/fp16 here and float32 keeps the
references, which are token-identical to transformers.

The build needs a C++ compiler and takes about a minute once per machine and source version;
where it fails the CPU backend runs the references and says why in the log.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"
EXTENSION_NAME = "membound_cpu_kernels"
CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fno-math-errno")
NATIVE_DTYPES = (torch.bfloat16, torch.float16)  # float32 keeps the references (docstring)
GEMM_PATHS = {  # the native module's bf16_gemm_path(), as the start-up log words it
    "ukernel": "torch's brgemm ukernel on the matrix units (AMX)",
    "avx512_bf16": "membound's AVX512-BF16 kernel (no AMX here)",
    "none": "nothing native (no AVX512-BF16 or AMX: oneDNN's GEMM and the torch attention)",
}


STALE_LOCK_S = 600.0  # a build takes about a minute: a lock this old was left by a killed one


class NativeBuildError(RuntimeError):
    """The native CPU kernels could not be built or loaded here."""


def clear_stale_lock(root: Path, now: float | None = None) -> list[Path]:
    """Remove build locks older than ``STALE_LOCK_S`` under ``root``; returns them.

    torch's builder takes a ``lock`` file in the build folder and removes it when done. A
    build that is killed (Ctrl-C during a first start's minute of compiling) leaves the file
    behind, and every later start waits on it forever, silently."""
    now = time.time() if now is None else now
    removed = []
    for folder in [*root.glob(EXTENSION_NAME), *root.glob(f"*/{EXTENSION_NAME}")]:
        lock = folder / "lock"
        try:
            age = now - lock.stat().st_mtime
        except OSError:  # no lock: nothing to do
            continue
        if age > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
            logger.warning("removed %s, a build lock %.0f s old: a build of the native CPU "
                           "kernels was killed before it finished", lock, age)  # fmt: skip
            removed.append(lock)
        else:
            logger.warning("waiting for another process building the native CPU kernels "
                           "(lock %s); if none is, delete that file", lock)  # fmt: skip
    return removed


def build_failure_fix(which: Callable[[str], str | None] = shutil.which) -> str:
    """What to do about a failed build: the tool that is missing (the compiler torch's builder
    runs, ``$CXX`` or ``c++``; ninja), else the compiler rejected the source on this machine.
    ``which`` looks a program up on the PATH (``shutil.which``)."""
    compiler = os.environ.get("CXX", "c++")
    missing = []
    if which(compiler) is None:
        missing.append(f"a C++ compiler ({compiler}: set CXX or install g++ / clang++)")
    if which("ninja") is None:
        missing.append("ninja (pip install ninja)")
    if missing:
        return "missing " + " and ".join(missing)
    return (f"{compiler} and ninja are here, so the compiler rejected the source on this "
            f"machine (its output is quoted above): report it with `{compiler} --version`")  # fmt: skip


def build_native_cpu_kernels(verbose: bool = False) -> ModuleType:
    """Build (or load the cached build of) the C++ kernels; raises NativeBuildError with the
    compiler's complaint. torch's builder holds a file lock, so concurrent processes build
    once."""
    from torch.utils import cpp_extension

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    # torch builds in $TORCH_EXTENSIONS_DIR/<name>/, else <default root>/<py+device tag>/<name>/
    clear_stale_lock(root)
    built = [*root.glob(f"{EXTENSION_NAME}/*.so"), *root.glob(f"*/{EXTENSION_NAME}/*.so")]
    if not built:  # a first build: say why we wait
        logger.warning("compiling membound's native CPU kernels for this machine (once, about "
                       "a minute; cached under %s)", root)  # fmt: skip
    start = time.perf_counter()
    try:
        module = cpp_extension.load(
            name=EXTENSION_NAME, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
            extra_ldflags=["-fopenmp"], verbose=verbose,
        )  # fmt: skip
    except (RuntimeError, OSError, ImportError, SystemExit) as e:  # compiler missing/failed
        raise NativeBuildError(
            f"could not build membound's native CPU kernels from {SOURCE}: {e}. "
            f"{build_failure_fix()}; until then the CPU backend runs the plain-torch kernels "
            "(MEMBOUND_CPU_NATIVE=0 skips the build)"
        ) from e
    logger.debug("native CPU kernels ready in %.1f s", time.perf_counter() - start)
    return module


def load_native_cpu_kernels() -> ModuleType | None:
    """The kernels for the CPU backend, or None (logged) where they cannot be built, or where
    ``MEMBOUND_CPU_NATIVE=0`` asks for the plain-torch kernels."""
    if os.environ.get("MEMBOUND_CPU_NATIVE", "1") == "0":
        logger.info("MEMBOUND_CPU_NATIVE=0: the CPU backend runs the plain-torch kernels")
        return None
    try:
        module = build_native_cpu_kernels()
    except NativeBuildError as e:
        logger.warning("%s", e)
        return None
    logger.info("CPU backend: native kernels for bf16/fp16 decode attention, bf16 prefill "
                "attention (a bf16 model's FP8 KV cache too), RMSNorm, rotary, SiLU-and-mul; "
                "bf16 GEMMs and prefill attention multiply by %s; int8 GEMMs by %s "
                "(kernels/cpu_native.py)", GEMM_PATHS[module.bf16_gemm_path()],
                "membound's AVX512-VNNI kernel (W8A8)" if module.int8_linear_supported(64)
                else "torch's weight-only kernel (no AVX512-VNNI here)")  # fmt: skip
    return module


def uses_native(x: torch.Tensor) -> bool:
    """Whether ``CpuOps`` sends an op on ``x`` to the native kernels (bf16/fp16 on CPU)."""
    return x.is_cpu and x.dtype in NATIVE_DTYPES


@dataclass(frozen=True)
class NativeDecodePlan:
    """The native decode kernel's per-step inputs, converted once for every layer: the block
    tables contiguous, the lengths in the tables' integer type."""

    block_tables: torch.Tensor
    seq_lens: torch.Tensor

    @classmethod
    def build(cls, block_tables: torch.Tensor, seq_lens: torch.Tensor) -> NativeDecodePlan:
        return cls(block_tables.contiguous(), seq_lens.to(block_tables.dtype).contiguous())
