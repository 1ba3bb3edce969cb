"""The device at hand as a planner hardware entry: ``membound plan --gpu local``.

The planner does not measure (it imports no torch). The first time ``local`` is asked
for, it runs the probe in a child process:

    python -m membound.bench.device_probe --device DEVICE --output CACHE_FILE

and reads the plain JSON record it writes (memory bandwidth by a copy, matmul TFLOP/s per
dtype, memory capacity, cores; see bench/device_probe.py). Later plans read the cached
file; ``--remeasure`` measures again. The cache lives at

    $MEMBOUND_CACHE_DIR/local_device.json    (default: ~/.cache/membound, or
                                              $XDG_CACHE_HOME/membound when that is set)

One machine, one record: ``--local-device cpu|cuda`` picks what to measure (default
``auto``: CUDA when present) and measures again when the cached record is of the other kind.

The record becomes a ``GPUSpec`` named ``local``: bandwidth = the copy's read + written
GB/s, ``dense_fp32_tflops`` / ``dense_bf16_tflops`` = the measured matmul rates, no FP8 /
INT8 / FP4 rate (those precisions fall back to weight-only, with a note), no TDP or
price unless a hardware file adds them (``[gpu.local]``), one device (``max_tp`` 1).
Its device name is the one ``membound bench`` writes, so ``plan calibrate`` on this
machine's benchmark JSON fits the ``local`` entry.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from membound.planner.errors import PlannerError, read_json_object
from membound.planner.hardware import GPUSpec

LOCAL_NAME = "local"
CACHE_DIR_ENV = "MEMBOUND_CACHE_DIR"
DEVICES = ("auto", "cpu", "cuda")
PROBE_MODULE = "membound.bench.device_probe"
PROBE_TIMEOUT_S = 600
_COMPUTE = {"float32": "fp32", "bfloat16": "bf16"}  # torch dtype -> planner compute class


def cache_dir() -> Path:
    """``$MEMBOUND_CACHE_DIR``, else ``$XDG_CACHE_HOME/membound``, else ``~/.cache/membound``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "membound"


def cache_path() -> Path:
    """Where the record of the device at hand is cached."""
    return cache_dir() / "local_device.json"


@dataclass(frozen=True)
class LocalDevice:
    """What the probe measured (see bench/device_probe.py for how)."""

    device_type: str  # "cpu" | "cuda"
    device_name: str  # as membound bench writes device.name
    memory_bytes: int
    bandwidth_gbs: float  # copy: (read + written) bytes / s
    matmul_tflops: tuple[tuple[str, float], ...]  # (torch dtype name, TFLOP/s)
    engine_dtype: str
    overlap: bool
    matmul_rows_tflops: tuple[tuple[str, tuple[tuple[int, float], ...]], ...]
    cores: int
    threads: int
    created: str
    path: str = ""

    def __post_init__(self) -> None:
        if self.device_type not in ("cpu", "cuda"):
            raise PlannerError(f"{self.path}: device_type must be cpu or cuda")
        if not self.memory_bytes > 0 or not self.bandwidth_gbs > 0:
            raise PlannerError(f"{self.path}: memory_bytes and bandwidth_gbs must be positive")
        rates = dict(self.matmul_tflops)
        if not all(v > 0 for v in rates.values()) or "bfloat16" not in rates:
            raise PlannerError(f"{self.path}: matmul_tflops needs a positive bfloat16 rate")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: str = "<dict>") -> LocalDevice:
        try:
            matmul = raw["matmul_tflops"]
            return cls(
                device_type=str(raw["device_type"]),
                device_name=str(raw["device_name"]),
                memory_bytes=int(raw["memory_bytes"]),
                bandwidth_gbs=float(raw["bandwidth_gbs"]),
                matmul_tflops=tuple((str(k), float(v)) for k, v in matmul.items()),
                engine_dtype=str(raw.get("engine_dtype", "float32")),
                overlap=bool(raw.get("overlap", raw["device_type"] == "cuda")),
                matmul_rows_tflops=tuple(
                    (str(dtype), tuple(sorted((int(r), float(t)) for r, t in curve.items())))
                    for dtype, curve in (raw.get("matmul_rows_tflops") or {}).items()
                ),
                cores=int(raw.get("cores", 1)),
                threads=int(raw.get("threads", 1)),
                created=str(raw.get("created", "")),
                path=path,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlannerError(
                f"local device record {path!r} is incomplete ({e!r}); measure again with "
                "--remeasure"
            ) from e

    def gpu_spec(self) -> GPUSpec:
        """This device as a hardware-table entry named ``local``."""
        rates = dict(self.matmul_tflops)
        threads = f", {self.threads} of {self.cores} cores" if self.device_type == "cpu" else ""
        return GPUSpec(
            name=LOCAL_NAME,
            display_name=f"local {self.device_name}",
            memory_bytes=self.memory_bytes,
            memory_note="measured by the probe",
            bandwidth_gbs=self.bandwidth_gbs,
            dense_bf16_tflops=rates["bfloat16"],
            dense_fp32_tflops=rates.get("float32"),
            interconnect="none",
            interconnect_gbs=0.0,
            max_tp=1,
            spec_source=f"measured {self.created}{threads} ({self.path or PROBE_MODULE})",
            device_patterns=(f"^{re.escape(self.device_name.lower())}$",),
            overlap=self.overlap,
            tiled_moe=self.device_type == "cuda",
            matmul_rows_tflops=tuple(
                (_COMPUTE[d], curve) for d, curve in self.matmul_rows_tflops if d in _COMPUTE
            ),
        )


def read_local_device(path: str | os.PathLike[str]) -> LocalDevice:
    return LocalDevice.from_dict(read_json_object(path, "local device record"), os.fspath(path))


def measure_local_device(path: Path, device: str = "auto", extra: tuple[str, ...] = ()) -> None:
    """Run the probe in a child process (torch stays out of the planner's process)."""
    cmd = [sys.executable, "-m", PROBE_MODULE, "--device", device, "--output", str(path), *extra]
    print(f"membound plan: measuring the local device ({' '.join(cmd[1:])})", file=sys.stderr)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PlannerError(f"measuring the local device failed: {e}") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PlannerError(
            f"measuring the local device failed (exit {done.returncode}): {' / '.join(tail)}; "
            "it needs membound's engine dependencies (torch)"
        )


def local_device(
    device: str = "auto", *, remeasure: bool = False, path: str | os.PathLike[str] | None = None,
    probe_args: tuple[str, ...] = (),
) -> LocalDevice:  # fmt: skip
    """The cached record of the device at hand, measured first when absent, of another
    device type than ``device`` asks for, or when ``remeasure``."""
    if device not in DEVICES:
        raise PlannerError(f"--local-device {device!r} is not one of {', '.join(DEVICES)}")
    target = Path(path) if path is not None else cache_path()
    if not remeasure and target.is_file():
        record = read_local_device(target)
        if device in ("auto", record.device_type):
            return record
    target.parent.mkdir(parents=True, exist_ok=True)
    measure_local_device(target, device, probe_args)
    return read_local_device(target)


def cached_local_device(path: str | os.PathLike[str] | None = None) -> LocalDevice | None:
    """The cached record, if any, without measuring (calibration uses it)."""
    target = Path(path) if path is not None else cache_path()
    return read_local_device(target) if target.is_file() else None
