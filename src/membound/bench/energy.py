"""Measured GPU energy from NVML's total-energy counter, or "not measured".

``nvmlDeviceGetTotalEnergyConsumption`` is a hardware counter in millijoules since the
driver loaded (Volta and later). The meter reads it on every selected GPU before and after
the timed region; joules = the difference, mean watts = joules / seconds. Where there is no
counter (no NVIDIA GPU, no driver, ``nvidia-ml-py`` missing, a GPU too old) the result says
"not measured" and why. It never falls back to an estimate: TDP-based energy is the
planner's business and is labelled as an estimate there.

``pynvml`` (package ``nvidia-ml-py``, in the ``bench`` extra) is imported only when a meter
starts.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one timed region. ``joules`` is None when nothing was measured."""

    joules: float | None
    seconds: float
    num_gpus: int
    label: str
    devices: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        return self.joules is not None

    @property
    def avg_power_w(self) -> float | None:
        if self.joules is None or self.seconds <= 0:
            return None
        return self.joules / self.seconds

    def joules_per_token(self, tokens: int) -> float | None:
        if self.joules is None or tokens <= 0:
            return None
        return self.joules / tokens

    def figures(self, output_tokens: int) -> dict[str, Any]:
        """``energy_j`` / ``avg_power_w`` / ``energy_j_per_token`` (the planner reads the last
        two) or ``"not measured"`` strings, which the planner ignores."""
        if self.joules is None:
            return {"energy_j": NOT_MEASURED, "avg_power_w": NOT_MEASURED,
                    "energy_j_per_token": NOT_MEASURED}  # fmt: skip
        return {
            "energy_j": self.joules,
            "avg_power_w": self.avg_power_w,
            "energy_j_per_token": self.joules_per_token(output_tokens),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "label": self.label, "joules": self.joules,
                "seconds": self.seconds, "num_gpus": self.num_gpus,
                "devices": list(self.devices)}  # fmt: skip


@dataclass
class EnergyMeter:
    """Start/stop around a timed region. ``device_ids``: NVML identifiers of the GPUs to read,
    each a UUID string or an NVML index; None means every GPU NVML sees; () means none."""

    device_ids: tuple[str | int, ...] | None = None
    _handles: list[Any] = field(default_factory=list)
    _names: list[str] = field(default_factory=list)
    _start_mj: list[int] = field(default_factory=list)
    _t0: float = 0.0
    _reason: str = ""

    def start(self) -> EnergyMeter:
        self._t0 = time.perf_counter()
        self._reason = self._open()
        if not self._reason:
            try:
                self._start_mj = [_total_energy_mj(h) for h in self._handles]
            except Exception as e:  # NVMLError_NotSupported on pre-Volta GPUs
                self._reason = f"the GPU has no total-energy counter ({e})"
        return self

    def stop(self) -> EnergyReading:
        seconds = time.perf_counter() - self._t0
        if self._reason:
            return EnergyReading(None, seconds, 0, f"{NOT_MEASURED}: {self._reason}")
        try:
            end = [_total_energy_mj(h) for h in self._handles]
        except Exception as e:
            return EnergyReading(None, seconds, 0, f"{NOT_MEASURED}: NVML read failed ({e})")
        joules = sum(b - a for a, b in zip(self._start_mj, end, strict=True)) / 1e3
        label = (f"measured: NVML total-energy counter on {len(self._handles)} GPU(s), "
                 f"before/after difference over {seconds:.1f}s")  # fmt: skip
        return EnergyReading(joules, seconds, len(self._handles), label, tuple(self._names))

    def _open(self) -> str:
        """Find the NVML handles; returns why not ("" on success)."""
        if self.device_ids == ():
            return "no GPU selected (the run is not on an NVIDIA GPU)"
        try:
            import pynvml
        except ImportError:
            return "nvidia-ml-py is not installed (pip install 'membound[bench]')"
        try:
            pynvml.nvmlInit()
        except Exception as e:
            return f"NVML is not available ({e})"
        try:
            ids = self.device_ids
            if ids is None:
                ids = tuple(range(pynvml.nvmlDeviceGetCount()))
            if not ids:
                return "NVML sees no GPU"
            self._handles = [_handle(pynvml, i) for i in ids]
            self._names = [_name(pynvml, h) for h in self._handles]
        except Exception as e:
            return f"NVML could not open the GPU(s) ({e})"
        return ""


def _handle(pynvml: Any, ident: str | int) -> Any:
    """An NVML handle by index, or by UUID (with or without the "GPU-" prefix, matched
    against every GPU's ``nvmlDeviceGetUUID`` so the format torch prints works too)."""
    if not isinstance(ident, str):
        return pynvml.nvmlDeviceGetHandleByIndex(int(ident))
    want = ident.lower().removeprefix("gpu-")
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        if uuid.lower().removeprefix("gpu-") == want:
            return handle
    raise LookupError(f"no GPU with UUID {ident}")


def _name(pynvml: Any, handle: Any) -> str:
    name = pynvml.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else str(name)


def _total_energy_mj(handle: Any) -> int:
    import pynvml

    return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))


def torch_device_nvml_ids(device: str) -> tuple[str | int, ...]:
    """NVML identifiers for a torch device string, or () for a CPU run: the CUDA device's UUID
    (robust to CUDA_VISIBLE_DEVICES renumbering), else its CUDA_VISIBLE_DEVICES entry, else
    its index."""
    if not device.startswith("cuda"):
        return ()
    import torch

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", ""))
    if re.fullmatch(r"(GPU-)?[0-9a-fA-F-]{32,40}", uuid):
        return (uuid,)
    visible = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    if index < len(visible):
        return (int(visible[index]) if visible[index].isdigit() else visible[index],)
    return (index,)


def nvml_driver_version() -> str | None:
    """The NVIDIA driver version via NVML, or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def nvml_device_names() -> list[str]:
    """Names of the GPUs NVML sees on this host ([] without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [_name(pynvml, pynvml.nvmlDeviceGetHandleByIndex(i))
                for i in range(pynvml.nvmlDeviceGetCount())]  # fmt: skip
    except Exception:
        return []
