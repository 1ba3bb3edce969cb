"""Where a model's files come from: a local folder, or a Hugging Face hub id when online."""

from __future__ import annotations

import os
from pathlib import Path

_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.txt"]


def default_model_path() -> str:
    """The small model shipped inside the package (used when no model is named)."""
    return str(Path(__file__).resolve().parent / "assets" / "default_model")


def resolve_model_path(model: str | None) -> str:
    """Return a local folder for ``model``: a path as given, or a hub snapshot download."""
    if model is None:
        path = default_model_path()
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"the bundled default model is missing from {path}; name a model folder"
            )
        return path
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise FileNotFoundError(f"{model} is a file; point membound at a checkpoint folder")
    if model.count("/") != 1 or model.startswith((".", "/")):
        raise FileNotFoundError(f"model folder {model!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(
            f"{model!r} is not a local folder and looks like a hub id, but huggingface_hub is "
            "not installed; pip install 'membound[hub]' or download the checkpoint yourself"
        ) from e
    try:
        return snapshot_download(model, allow_patterns=_HUB_PATTERNS)
    except Exception as e:  # network errors, missing repos, gated models
        raise FileNotFoundError(f"could not fetch {model!r} from the hub: {e}") from e
