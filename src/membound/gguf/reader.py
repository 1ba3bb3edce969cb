"""Open a GGUF file with llama.cpp's own reader and check it whole before anything is built.

``GGUFFile`` holds the metadata as plain Python values (strings, numbers, lists) and the
tensor table (name, ggml type, shape in torch order, bytes). A truncated file, a file that
is not GGUF, or tensor data running past the end of the file raise ``GGUFError`` naming the
file and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

GGUF_MAGIC = b"GGUF"
_FIX_DOWNLOAD = "re-download or re-convert the file (llama.cpp's convert_hf_to_gguf.py)"


class GGUFError(ValueError):
    """A GGUF file membound cannot load; the message names the file and the fix."""


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """True for an existing file whose name ends in .gguf or that starts with the GGUF magic."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    if path.lower().endswith(".gguf"):
        return True
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def require_gguf_package() -> Any:
    """The ``gguf`` module, or a clear error saying how to install it."""
    try:
        import gguf
    except ImportError as e:
        raise GGUFError(
            "reading GGUF files needs the 'gguf' package; pip install 'membound[gguf]' "
            "(or pip install gguf)"
        ) from e
    return gguf


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of the file: ``shape`` in torch order ([rows, cols]), ``ggml_type`` by name
    (e.g. "Q4_1"), ``n_bytes`` as stored."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    n_bytes: int


class GGUFFile:
    """A validated GGUF file: ``metadata`` (key -> value), ``tensors`` (name -> info) and
    ``reader`` (the gguf package's memory-mapped reader, for tensor data)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        gguf = require_gguf_package()
        if not os.path.isfile(self.path):
            raise GGUFError(f"GGUF file {self.path} does not exist")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFError(
                f"{self.path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                "pass a .gguf file or a Hugging Face checkpoint folder"
            )
        try:
            self.reader = gguf.GGUFReader(self.path, "r")
        except Exception as e:  # the reader raises ValueError/IndexError/struct errors
            raise GGUFError(
                f"{self.path} could not be read as GGUF ({type(e).__name__}: {e}); the file is "
                f"probably truncated or corrupt: {_FIX_DOWNLOAD}"
            ) from e
        self.metadata: dict[str, Any] = {
            name: _field_value(field) for name, field in self.reader.fields.items()
        }
        self.tensors: dict[str, GGUFTensorInfo] = {}
        end = 0
        for t in self.reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ggml order is reversed
            self.tensors[t.name] = GGUFTensorInfo(t.name, t.tensor_type.name, shape, int(t.n_bytes))
            end = max(end, int(t.data_offset) + int(t.n_bytes))
        size = os.path.getsize(self.path)
        if end > size:
            raise GGUFError(
                f"{self.path} is truncated: its tensors need {end} bytes but the file has "
                f"{size}; {_FIX_DOWNLOAD}"
            )

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(
                f"{self.path} has no general.architecture in its metadata; {_FIX_DOWNLOAD}"
            )
        return arch

    def tensor_data(self, name: str) -> Any:
        """The tensor's raw numpy view (quantized types: uint8 [rows, bytes per row])."""
        for t in self.reader.tensors:
            if t.name == name:
                return t.data
        raise KeyError(name)

    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())


def _field_value(field: Any) -> Any:
    """A reader field as a Python value (string, number, bool or list of them)."""
    value = field.contents()
    if hasattr(value, "item"):
        value = value.item()
    return value
