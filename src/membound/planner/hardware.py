"""The accelerator table: capacity, bandwidth, dense peaks, power, links, price.

Every GPU name and peak rate in membound lives here (DESIGN.md principle 5).
Peaks are DENSE tensor-core rates (no 2:4 sparsity): datasheets often print the sparse
figure with an asterisk; the dense one is half of it. Capacities are what the device
reports (nvidia-smi MiB) where known, because that is what a program can allocate.
Prices are indicative, dated and sourced; override them with ``--price-per-gpu-hour``
or a hardware file (TOML or JSON, see docs/planner.md):

    [gpu.h100-sxm]
    price_per_gpu_hour = 2.69
    price_source = "RunPod spot"
    price_date = "2026-03"
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from membound.planner.errors import PlannerError, choices_text

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator. Rates in TFLOP/s (TOP/s for int8), bandwidths in GB/s (1e9 B/s)."""

    name: str
    display_name: str
    memory_bytes: int
    bandwidth_gbs: float
    dense_bf16_tflops: float
    dense_fp8_tflops: float | None = None  # None: no FP8 tensor cores
    dense_int8_tops: float | None = None
    dense_fp4_tflops: float | None = None
    dense_fp32_tflops: float | None = None  # None: not in the table (a measured device has it)
    tdp_w: float | None = None
    interconnect: str = "none"
    interconnect_gbs: float = 0.0  # per GPU, both directions together, as datasheets print
    host_link_gbs: float = 32.0  # CPU <-> GPU, one direction (offload streaming)
    max_tp: int = 8  # GPUs per node that the interconnect joins
    price_per_gpu_hour: float | None = None
    price_source: str = ""
    price_date: str = ""
    spec_source: str = ""
    memory_note: str = ""
    aliases: tuple[str, ...] = ()
    device_patterns: tuple[str, ...] = ()  # regexes matched against reported device names
    # Compute and memory traffic overlap within a pass (GPUs). A CPU core streams weights and
    # multiplies in turn, so a step takes their sum (measured: bench/device_probe.py).
    overlap: bool = True
    # Routed experts run as grouped GEMMs over row tiles (GPU kernels: rows padded to the
    # tile, planner/moe_cost.py). A CPU runs each expert's rows as they are (moe_gemm_ref).
    tiled_moe: bool = True
    # Measured matmul rate by rows (tokens in the pass), per compute class: ((class,
    # ((rows, tflops), ...)), ...). Empty: the dense peak at any row count (datasheets).
    matmul_rows_tflops: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()

    def __post_init__(self) -> None:
        for field in ("memory_bytes", "bandwidth_gbs", "dense_bf16_tflops"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not value > 0:
                raise PlannerError(f"GPU {self.name!r}: {field} must be positive, got {value!r}")
        optional = ("dense_fp8_tflops", "dense_int8_tops", "dense_fp4_tflops",
                    "dense_fp32_tflops", "tdp_w")  # fmt: skip
        for field in optional:
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise PlannerError(
                    f"GPU {self.name!r}: {field} must be positive or absent, got {value!r}"
                )
        if self.price_per_gpu_hour is not None and self.price_per_gpu_hour < 0:
            raise PlannerError(f"GPU {self.name!r}: price_per_gpu_hour must be >= 0")
        if not isinstance(self.max_tp, int) or self.max_tp < 1:
            raise PlannerError(f"GPU {self.name!r}: max_tp must be a positive integer")
        if self.interconnect_gbs < 0 or not self.host_link_gbs > 0:
            raise PlannerError(f"GPU {self.name!r}: link bandwidths must be positive")

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    def matmul_tflops(self, compute: str, rows: float) -> float | None:
        """Rate of a matmul with ``rows`` rows: the measured curve interpolated in log(rows)
        and held flat beyond its ends, or the dense peak when there is no curve."""
        curve = dict(self.matmul_rows_tflops).get(compute)
        if not curve:
            return self.dense_peak_tflops(compute)
        points = sorted(curve)
        rows = max(rows, 1.0)
        if rows <= points[0][0]:
            return points[0][1]
        for (r0, t0), (r1, t1) in zip(points, points[1:]):
            if rows <= r1:
                w = math.log(rows / r0) / math.log(r1 / r0)
                return t0 + w * (t1 - t0)
        return points[-1][1]

    def dense_peak_tflops(self, compute: str) -> float | None:
        """Dense peak for a compute class ("fp32", "bf16", "fp8", "int8", "fp4"); None if absent."""
        return {
            "fp32": self.dense_fp32_tflops,
            "bf16": self.dense_bf16_tflops,
            "fp8": self.dense_fp8_tflops,
            "int8": self.dense_int8_tops,
            "fp4": self.dense_fp4_tflops,
        }[compute]


_NVIDIA = "NVIDIA datasheet (dense rates)"
_RUNPOD = "RunPod on-demand"

BUILTIN_GPUS: tuple[GPUSpec, ...] = (
    GPUSpec(
        name="a100-80gb-sxm", display_name="A100 80GB SXM", aliases=("a100", "a100-80gb"),
        memory_bytes=81_920 * MIB, memory_note="80 GB HBM2e; 81,920 MiB reported",
        bandwidth_gbs=2039, dense_bf16_tflops=312, dense_int8_tops=624, tdp_w=400,
        interconnect="NVLink3", interconnect_gbs=600, host_link_gbs=32,
        price_per_gpu_hour=2.45, price_source=_RUNPOD + " (spot 1.39)", price_date="2026-03",
        spec_source=_NVIDIA, device_patterns=(r"a100",),
    ),
    GPUSpec(
        name="h100-pcie", display_name="H100 PCIe",
        memory_bytes=81_559 * MIB, memory_note="80 GB HBM2e; about 80 GiB reported",
        bandwidth_gbs=2000, dense_bf16_tflops=756, dense_fp8_tflops=1513, dense_int8_tops=1513,
        tdp_w=350, interconnect="PCIe Gen5", interconnect_gbs=128, host_link_gbs=64,
        price_per_gpu_hour=4.25, price_source="CoreWeave list price (H100)",
        price_date="2024-02", spec_source=_NVIDIA, device_patterns=(r"h100.*pcie",),
    ),
    GPUSpec(
        name="h100-sxm", display_name="H100 SXM", aliases=("h100", "h100-80gb"),
        memory_bytes=81_559 * MIB, memory_note="80 GB HBM3; 81,559 MiB reported by nvidia-smi",
        bandwidth_gbs=3350, dense_bf16_tflops=989, dense_fp8_tflops=1979, dense_int8_tops=1979,
        tdp_w=700, interconnect="NVLink4", interconnect_gbs=900, host_link_gbs=64,
        price_per_gpu_hour=4.76, price_source=_RUNPOD + " (spot 2.69)", price_date="2026-03",
        spec_source=_NVIDIA, device_patterns=(r"h100",),
    ),
    GPUSpec(
        name="h200", display_name="H200 SXM", aliases=("h200-sxm",),
        memory_bytes=143_771 * MIB, memory_note="141 GB HBM3e; 143,771 MiB reported",
        bandwidth_gbs=4800, dense_bf16_tflops=989, dense_fp8_tflops=1979, dense_int8_tops=1979,
        tdp_w=700, interconnect="NVLink4", interconnect_gbs=900, host_link_gbs=64,
        price_per_gpu_hour=6.35, price_source=_RUNPOD + " (spot 3.59)", price_date="2026-03",
        spec_source=_NVIDIA, device_patterns=(r"h200",),
    ),
    GPUSpec(
        name="b200", display_name="B200 (HGX, 1000 W)",
        memory_bytes=180 * GIB, memory_note="180 GB usable of 192 GB marketed",
        bandwidth_gbs=8000, dense_bf16_tflops=2250, dense_fp8_tflops=4500, dense_int8_tops=4500,
        dense_fp4_tflops=9000, tdp_w=1000, interconnect="NVLink5", interconnect_gbs=1800,
        host_link_gbs=64, price_per_gpu_hour=10.57, price_source=_RUNPOD + " (spot 5.98)",
        price_date="2026-03", device_patterns=(r"b200",),
        spec_source="NVIDIA Blackwell datasheet and DGX B200 key specs (dense rates)",
    ),
    GPUSpec(
        name="mi300x", display_name="AMD MI300X", aliases=("mi300",),
        memory_bytes=192 * GIB, memory_note="192 GB HBM3",
        bandwidth_gbs=5300, dense_bf16_tflops=1307, dense_fp8_tflops=2615, dense_int8_tops=2615,
        tdp_w=750, interconnect="Infinity Fabric", interconnect_gbs=896, host_link_gbs=64,
        price_per_gpu_hour=1.85, price_source="TensorWave, Vultr (1.71 - 1.85)",
        price_date="2026", device_patterns=(r"mi300x",),
        spec_source="AMD MI300X datasheet (dense; INT8 unconfirmed; link figure third-party)",
    ),
    GPUSpec(
        name="l40s", display_name="L40S",
        memory_bytes=46_068 * MIB, memory_note="48 GB GDDR6; 46,068 MiB usable",
        bandwidth_gbs=864, dense_bf16_tflops=362, dense_fp8_tflops=733, dense_int8_tops=733,
        tdp_w=350, interconnect="PCIe Gen4", interconnect_gbs=64, host_link_gbs=32,
        price_per_gpu_hour=1.40, price_source=_RUNPOD + " (spot 0.79)", price_date="2026-03",
        spec_source=_NVIDIA, device_patterns=(r"l40s",),
    ),
    GPUSpec(
        name="tpu-v5e", display_name="TPU v5e", aliases=("v5e",),
        memory_bytes=16 * GIB, memory_note="16 GB HBM2; no TDP or price in the reference table",
        bandwidth_gbs=819, dense_bf16_tflops=197, dense_int8_tops=394,
        interconnect="ICI", interconnect_gbs=200, host_link_gbs=32,
        spec_source="Google Cloud TPU v5e documentation", device_patterns=(r"v5\s*e|v5\s*lite",),
    ),
)  # fmt: skip

_FIELDS = {f.name for f in dataclasses.fields(GPUSpec)}
_MEMORY_KEYS = {"memory_gib": GIB, "memory_mib": MIB, "memory_gb": 10**9}


def normalize_gpu_name(name: str) -> str:
    """``"H100 SXM"`` -> ``"h100-sxm"``."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


@dataclass(frozen=True)
class HardwareTable:
    """An immutable set of GPUs, looked up by name or alias."""

    gpus: tuple[GPUSpec, ...] = BUILTIN_GPUS

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for gpu in self.gpus:
            for key in (gpu.name, *gpu.aliases):
                key = normalize_gpu_name(key)
                if key in seen:
                    raise PlannerError(
                        f"GPU name {key!r} is used by both {seen[key]!r} and {gpu.name!r}"
                    )
                seen[key] = gpu.name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.gpus)

    def find(self, name: str) -> GPUSpec | None:
        key = normalize_gpu_name(name)
        for gpu in self.gpus:
            if key == gpu.name or key in (normalize_gpu_name(a) for a in gpu.aliases):
                return gpu
        return None

    def get(self, name: str) -> GPUSpec:
        gpu = self.find(name)
        if gpu is None:
            raise PlannerError(f"GPU {name!r} is not known; use one of {choices_text(self.names)}")
        return gpu

    def select(self, names: str | None) -> tuple[GPUSpec, ...]:
        """GPUs from a comma-separated list; all of them for None, "" or "all"."""
        if not names or names.strip().lower() == "all":
            return self.gpus
        picked = [self.get(n) for n in names.split(",") if n.strip()]
        return tuple(dict.fromkeys(picked))

    def match_device(self, device_name: str) -> GPUSpec | None:
        """The entry for a reported device name ("NVIDIA H100 80GB HBM3"), if any."""
        if self.find(device_name) is not None:
            return self.find(device_name)
        text = device_name.lower()
        for gpu in self.gpus:
            if any(re.search(p, text) for p in gpu.device_patterns):
                return gpu
        return None

    def with_overrides(self, entries: dict[str, dict[str, Any]]) -> HardwareTable:
        """A new table with entries merged in: known names are updated, new ones added."""
        gpus = list(self.gpus)
        for raw_name, fields in entries.items():
            if not isinstance(fields, dict):
                raise PlannerError(f"hardware entry {raw_name!r} must be a table of fields")
            values = _field_values(raw_name, fields)
            existing = self.find(raw_name)
            if existing is not None:
                gpus[gpus.index(existing)] = dataclasses.replace(existing, **values)
                continue
            values.setdefault("name", normalize_gpu_name(raw_name))
            values.setdefault("display_name", raw_name)
            missing = [k for k in ("memory_bytes", "bandwidth_gbs", "dense_bf16_tflops")
                       if k not in values]  # fmt: skip
            if missing:
                raise PlannerError(
                    f"new GPU {raw_name!r} needs {', '.join(missing)} (memory as "
                    "memory_gib, memory_mib, memory_gb or memory_bytes)"
                )
            gpus.append(GPUSpec(**values))
        return HardwareTable(tuple(gpus))

    def with_prices(self, prices: dict[str, float]) -> HardwareTable:
        """Override prices; the key ``"*"`` applies to every GPU."""
        out = []
        for gpu in self.gpus:
            price = prices.get(gpu.name, prices.get("*"))
            if price is not None:
                gpu = dataclasses.replace(
                    gpu, price_per_gpu_hour=price, price_source="given by the user", price_date=""
                )
            out.append(gpu)
        return HardwareTable(tuple(out))


def _field_values(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _MEMORY_KEYS:
            values["memory_bytes"] = int(float(value) * _MEMORY_KEYS[key])
        elif key in ("aliases", "device_patterns"):
            values[key] = tuple(value)
        elif key == "matmul_rows_tflops":  # {"fp32": {"1": 0.01, "16": 0.1}, ...}
            values[key] = tuple(
                (c, tuple(sorted((int(r), float(t)) for r, t in curve.items())))
                for c, curve in value.items()
            )
        elif key in _FIELDS:
            values[key] = value
        else:
            valid = sorted((_FIELDS | set(_MEMORY_KEYS)) - {"memory_bytes"})
            raise PlannerError(
                f"hardware entry {name!r}: unknown field {key!r}; valid fields: {', '.join(valid)}"
            )
    return values


def read_hardware_file(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The ``gpu`` table of a TOML (``.toml``) or JSON file: name -> fields."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PlannerError(f"hardware file {path!r} does not exist")
    try:
        if path.endswith(".toml"):
            raw = _load_toml(path)
        else:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
    except (ValueError, OSError) as e:
        raise PlannerError(f"hardware file {path!r} could not be read: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("gpu"), dict):
        raise PlannerError(
            f"hardware file {path!r} must hold a 'gpu' table mapping names to fields, "
            'e.g. [gpu.my-gpu] in TOML or {"gpu": {"my-gpu": {...}}} in JSON'
        )
    return raw["gpu"]


def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as e:
            raise PlannerError(
                "reading TOML needs Python 3.11 or the 'tomli' package; use a JSON file"
            ) from e
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_hardware(path: str | os.PathLike[str] | None = None) -> HardwareTable:
    """The built-in table, extended or overridden by ``path`` when given."""
    table = HardwareTable()
    return table if path is None else table.with_overrides(read_hardware_file(path))
