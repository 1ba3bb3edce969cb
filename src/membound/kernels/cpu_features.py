"""What this CPU computes natively, and the dtype membound runs on it by default.

A decode step on a CPU is bound by how many weight bytes stream from memory, so bf16 weights
(half of fp32's bytes) are the default wherever the CPU multiplies bf16 natively: AVX512-BF16
(``avx512_bf16``) or AMX (``amx_bf16``), on which oneDNN runs bf16 GEMMs without converting
through fp32. Elsewhere bf16 is emulated and slower than fp32, so fp32 stays the default.

The flags come from ``/proc/cpuinfo`` (Linux); where it cannot be read, from torch's own
CPU capability (``torch.backends.cpu.get_cpu_capability()``, which names the widest vector
ISA torch dispatches to but not the bf16 extensions: it is never enough alone to pick bf16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuFeatures:
    flags: frozenset[str]
    torch_capability: str  # "AVX512", "AVX2", "DEFAULT", ...

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    def describe(self) -> str:
        found = [f for f in (*BF16_FLAGS, "amx_int8", "avx512_vnni", "avx512_fp16")
                 if f in self.flags]  # fmt: skip
        return f"torch {self.torch_capability}, " + (", ".join(found) or "no bf16/AMX flags")


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a ``/proc/cpuinfo`` text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def detect_cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    import torch

    try:
        flags = parse_cpuinfo_flags(Path(cpuinfo).read_text())
    except OSError:
        flags = frozenset()
    return CpuFeatures(flags, torch.backends.cpu.get_cpu_capability())


def default_cpu_dtype(features: CpuFeatures) -> str:
    """dtype "auto" on a CPU: bfloat16 where the CPU has native bf16, else float32."""
    return "bfloat16" if features.native_bf16 else "float32"
