"""CPU feature detection and the dtype "auto" resolves to on a CPU."""

from __future__ import annotations

from pathlib import Path

from membound.kernels.cpu_features import (
    CpuFeatures,
    default_cpu_dtype,
    detect_cpu_features,
    parse_cpuinfo_flags,
)

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu
"""


def test_flags_of_the_first_processor() -> None:
    flags = parse_cpuinfo_flags(CPUINFO)
    assert {"avx512_bf16", "amx_bf16", "amx_tile"} <= flags and "fpu" in flags
    assert parse_cpuinfo_flags("no flags here") == frozenset()


def test_bf16_default_only_with_native_bf16() -> None:
    amx = CpuFeatures(parse_cpuinfo_flags(CPUINFO), "AVX512")
    assert amx.native_bf16 and amx.amx and default_cpu_dtype(amx) == "bfloat16"
    assert "amx_bf16" in amx.describe()
    avx2 = CpuFeatures(frozenset({"avx2", "fma"}), "AVX2")
    assert not avx2.native_bf16 and default_cpu_dtype(avx2) == "float32"
    assert "no bf16/AMX flags" in avx2.describe()


def test_detect_reads_a_cpuinfo_file_and_survives_a_missing_one(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(CPUINFO)
    assert detect_cpu_features(f).native_bf16
    assert detect_cpu_features(tmp_path / "missing").flags == frozenset()


def test_engine_auto_dtype_on_cpu_follows_the_features(tiny_llama: Path) -> None:
    from membound.engine.engine_args import EngineArgs

    cfg = EngineArgs(model=str(tiny_llama), device="cpu").create_engine_config()
    assert cfg.dtype == default_cpu_dtype(detect_cpu_features())
    explicit = EngineArgs(model=str(tiny_llama), device="cpu", dtype="float32")
    assert explicit.create_engine_config().dtype == "float32"
