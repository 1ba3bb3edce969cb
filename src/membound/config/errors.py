"""What every config module shares: ConfigError and dtype-name normalisation."""

from __future__ import annotations

_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class ConfigError(ValueError):
    """A configuration value membound cannot honour. The message names it and the fix."""


def normalize_dtype_name(name: str) -> str:
    """Map "bf16", "torch.bfloat16", "half"... to one of float32/float16/bfloat16."""
    key = str(name).replace("torch.", "").lower()
    if key not in _DTYPE_NAMES:
        raise ConfigError(
            f"dtype {name!r} is not supported; use one of float32, float16, bfloat16 (or 'auto')"
        )
    return _DTYPE_NAMES[key]
