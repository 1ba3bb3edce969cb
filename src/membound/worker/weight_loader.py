"""Checkpoint loading: safetensors (one file or shards), streamed tensor by tensor.

Every tensor name and shape is validated from the safetensors headers BEFORE any data is
copied, so a bad checkpoint fails with the offending tensors named and never half-loads.
Peak host memory stays near one tensor: each is read, converted and copied into its
(already on-device) parameter, then dropped.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator

import torch
from torch import nn

from membound.config import ModelConfig
from membound.layers.linear import MergedLinear
from membound.models.registry import build_model

_PICKLE_EXTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint membound refuses to load; the message names the tensors or files."""


def find_safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted({os.path.join(path, v) for v in weight_map.values()})
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise CheckpointError(
                f"model.safetensors.index.json lists shards that are missing: "
                f"{', '.join(os.path.basename(m) for m in missing)}; re-download the checkpoint"
            )
        return files
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if files:
        return files
    pickles = [f for f in sorted(os.listdir(path)) if f.endswith(_PICKLE_EXTS)]
    if pickles:
        raise CheckpointError(
            f"{path} holds only pickle checkpoints ({', '.join(pickles[:3])}); membound loads "
            "safetensors only, because unpickling can run arbitrary code. Convert with "
            "transformers: AutoModelForCausalLM.from_pretrained(path).save_pretrained(out, "
            "safe_serialization=True)"
        )
    raise CheckpointError(f"no *.safetensors weights found in {path}")


def _headers(files: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                out[name] = (file, tuple(f.get_slice(name).get_shape()))
    return out


def _expected_shapes(model: nn.Module) -> dict[tuple[str, object], tuple[int, ...]]:
    """(parameter name, shard id) -> the shape a checkpoint tensor must have."""
    shapes: dict[tuple[str, object], tuple[int, ...]] = {}
    for name, param in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, MergedLinear):
            for shard, (_, size) in module.shard_offsets.items():
                shapes[(name, shard)] = (size, *param.shape[1:])
            shapes[(name, None)] = tuple(param.shape)
        else:
            shapes[(name, None)] = tuple(param.shape)
    return shapes


def validate_checkpoint(model: nn.Module, headers: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Raise CheckpointError naming unexpected, mis-shaped and missing tensors."""
    shapes = _expected_shapes(model)
    unexpected, misshaped, filled = [], [], set()
    for ckpt_name, (_, shape) in sorted(headers.items()):
        target = model.checkpoint_to_param(ckpt_name)  # type: ignore[operator]
        if target is None:
            continue
        if target not in shapes:
            unexpected.append(ckpt_name)
            continue
        if shapes[target] != shape:
            misshaped.append(f"{ckpt_name} {shape} (expected {shapes[target]})")
        name, shard = target
        filled.add(name if shard is None else f"{name}#{shard}")
    fused_whole = {n for n in filled if "#" not in n}
    missing = sorted(
        e for e in model.expected_loads()  # type: ignore[operator]
        if e not in filled and e.split("#")[0] not in fused_whole
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:20])}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:20])}")
    if misshaped:
        problems.append(f"wrong shapes: {'; '.join(misshaped[:20])}")
    if problems:
        raise CheckpointError(
            "checkpoint does not match its config.json (" + " | ".join(problems) + "); "
            "check that config.json belongs to these weights"
        )


def iterate_tensors(
    headers: dict[str, tuple[str, tuple[int, ...]]], progress: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for name, (file, _) in headers.items():
        by_file.setdefault(file, []).append(name)
    bar = _progress(len(headers), progress)
    for file, names in sorted(by_file.items()):
        with safe_open(file, framework="pt") as f:
            for name in names:
                yield name, f.get_tensor(name)
                bar.update(1)
    bar.close()


def _progress(total: int, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc="Loading weights", unit="tensor", disable=not enabled)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights for any config: N(0, 0.02) matrices, unit norms, zero biases."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.02
                param.copy_(noise)


def load_model(
    config: ModelConfig,
    path: str | None,
    *,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    max_positions: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Build the model directly on ``device`` in ``dtype`` and fill its weights."""
    headers = None
    if load_format != "dummy":
        if path is None:
            raise CheckpointError("a checkpoint path is needed unless load_format='dummy'")
        headers = _headers(find_safetensors_files(path))
    with _default_dtype(dtype), torch.device(device):
        model = build_model(config, max_positions)
    if headers is None:
        init_dummy_weights(model, seed)
    else:
        validate_checkpoint(model, headers)
        model.load_weights(iterate_tensors(headers, progress))  # type: ignore[operator]
    return model.eval()
