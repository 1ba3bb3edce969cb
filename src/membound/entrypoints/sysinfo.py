"""Machine facts for ``membound info`` and benchmark JSON: device, memory, versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _host_memory_gib() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        return f"{total / 1024**3:.1f} GiB total, {avail / 1024**3:.1f} GiB free"
    except (ValueError, OSError, AttributeError):
        return "unknown"


def collect_info() -> dict[str, str]:
    import torch

    info = {
        "membound": _version("membound"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "host memory": _host_memory_gib(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "cuda available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        info["cuda runtime"] = str(torch.version.cuda)
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            info[f"gpu {i}"] = (
                f"{props.name}, compute capability {props.major}.{props.minor}, "
                f"{total / 1024**3:.1f} GiB total, {free / 1024**3:.1f} GiB free"
            )
        info["default device"] = "cuda"
    else:
        info["default device"] = "cpu (no CUDA GPU visible)"
    return info
