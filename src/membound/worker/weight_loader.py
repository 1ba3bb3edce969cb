"""Checkpoint loading: safetensors (one file or shards), streamed tensor by tensor.

Every tensor name, shape and (for quantized layouts) dtype is validated from the safetensors
headers BEFORE any data is copied, so a bad checkpoint fails with the offending tensors named
and never half-loads. Peak host memory stays near one tensor: each is read, converted and
copied into its (already on-device) parameter, then dropped. Linear layers take their
tensors through their quantization method, which also quantizes float weights shard by shard
while loading (quantization="fp8"/"int8"/"int4"/...), so the float model never exists whole;
``process_weights_after_loading`` runs once everything is in. Tensors reach the layers as
``LazyTensor``s: under tensor parallelism each rank reads only its slice of each.
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
from membound.distributed.context import ParallelContext
from membound.kernels.contract import KernelOps
from membound.layers.checkpoint_tensor import (
    LazyTensor,
    owns_checkpoint_loading,
    process_after_loading,
)
from membound.layers.linear import Linear
from membound.layers.quantization import TensorSpec, UnquantizedLinearMethod
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


# name -> (file, shape, safetensors dtype such as "BF16", "F8_E4M3", "I32")
Headers = dict[str, tuple[str, tuple[int, ...], str]]


def _headers(files: list[str]) -> Headers:
    from safetensors import SafetensorError, safe_open

    out: Headers = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    out[name] = (file, tuple(sl.get_shape()), str(sl.get_dtype()))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{file} is not a readable safetensors file ({e}); it is probably truncated "
                "or corrupt: download or copy it again"
            ) from None
    return out


def _expected_specs(model: nn.Module) -> dict[tuple[str, object], TensorSpec]:
    """(parameter or checkpoint-tensor name, shard id) -> what a checkpoint tensor must be.
    Linear layers answer through their quantization method (per shard, and whole)."""
    specs: dict[tuple[str, object], TensorSpec] = {}
    for module_name, module in model.named_modules():
        if owns_checkpoint_loading(module):
            for shard in {None, *module.shard_ids()}:  # type: ignore[operator]
                for suffix, spec in module.checkpoint_specs(shard).items():  # type: ignore[operator]
                    specs[(f"{module_name}.{suffix}", shard)] = spec
    for name, param in model.named_parameters():
        if not owns_checkpoint_loading(model.get_submodule(name.rsplit(".", 1)[0])):
            shape = getattr(param, "checkpoint_shape", tuple(param.shape))  # vocab-parallel
            specs[(name, None)] = TensorSpec((tuple(shape),), ("float",))
    return specs


def validate_checkpoint(model: nn.Module, headers: Headers) -> None:
    """Raise CheckpointError naming unexpected, mis-shaped, mistyped and missing tensors."""
    specs = _expected_specs(model)
    unexpected, misshaped, mistyped, filled = [], [], [], set()
    for ckpt_name, (_, shape, dtype) in sorted(headers.items()):
        target = model.checkpoint_to_param(ckpt_name)  # type: ignore[operator]
        if target is None:
            continue
        if target not in specs:
            unexpected.append(ckpt_name)
            continue
        spec = specs[target]
        if not spec.accepts(shape):
            misshaped.append(f"{ckpt_name} {shape} (expected {spec.describe()})")
        elif not spec.accepts_dtype(dtype):
            mistyped.append(f"{ckpt_name} {dtype} (expected {' or '.join(spec.kinds)})")
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
    if mistyped:
        problems.append(f"wrong dtypes: {'; '.join(mistyped[:20])}")
    if problems:
        raise CheckpointError(
            "checkpoint does not match its config.json (" + " | ".join(problems) + "); "
            "check that config.json belongs to these weights"
        )


def iterate_tensors(headers: Headers, progress: bool) -> Iterator[tuple[str, LazyTensor]]:
    """(name, LazyTensor) for every tensor; each is readable until the next one is yielded."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for name, (file, *_) in headers.items():
        by_file.setdefault(file, []).append(name)
    bar = _progress(len(headers), progress)
    for file, names in sorted(by_file.items()):
        with safe_open(file, framework="pt") as f:
            for name in names:
                yield name, LazyTensor(_reader(f, name), headers[name][1])
                bar.update(1)
    bar.close()


def _reader(f, name: str):  # type: ignore[no-untyped-def]
    """Whole tensor (None) or only the requested slices, straight from the file."""

    def read(slices: tuple[slice, ...] | None) -> torch.Tensor:
        return f.get_tensor(name) if slices is None else f.get_slice(name)[slices]

    return read


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


def _quantized_linears(model: nn.Module) -> list[Linear]:
    return [
        m for m in model.modules()
        if isinstance(m, Linear) and not isinstance(m.quant_method, UnquantizedLinearMethod)
    ]


_CHUNK_ELEMENTS = 1 << 26  # draw larger tensors in row chunks (bounds the fp32 scratch)


class _DeviceGenerators:
    """One generator per device, each seeded with ``seed``: noise is drawn where the weights
    live (a serial CPU draw takes minutes for a 70B model), reproducibly per device."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.by_device: dict[torch.device, torch.Generator] = {}

    def randn(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        gen = self.by_device.get(device)
        if gen is None:
            gen = self.by_device[device] = torch.Generator(device=device).manual_seed(self.seed)
        return torch.randn(shape, generator=gen, dtype=torch.float32, device=device) * 0.02


def _fill_normal(param: torch.Tensor, gens: _DeviceGenerators) -> None:
    if param.numel() <= _CHUNK_ELEMENTS or param.dim() < 2:
        param.copy_(gens.randn(tuple(param.shape), param.device))
        return
    rows = max(1, _CHUNK_ELEMENTS // (param.numel() // param.shape[0]))
    for chunk in param.split(rows):
        chunk.copy_(gens.randn(tuple(chunk.shape), chunk.device))


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights for any config: N(0, 0.02) matrices, unit norms, zero biases, drawn on
    the weights' device. Quantized linears quantize their random float weight one layer at a
    time (in row chunks for large layers), so the float model never exists whole."""
    gens = _DeviceGenerators(seed)
    quantized = _quantized_linears(model)
    skip = {id(p) for m in quantized for n, p in m.named_parameters() if n != "bias"}
    with torch.no_grad():
        for layer in quantized:
            device = next(p.device for n, p in layer.named_parameters() if n != "bias")
            rows = max(1, _CHUNK_ELEMENTS // layer.input_size)
            for start in range(0, layer.output_size, rows):
                size = min(rows, layer.output_size - start)
                noise = gens.randn((size, layer.input_size), device)
                layer.quant_method.quantize_rows(layer, noise, (start, size))
        for name, param in model.named_parameters():
            if id(param) in skip:
                continue
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                _fill_normal(param, gens)


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
    parallel: ParallelContext | None = None,
    expert_parallel: bool = False,
    ops: KernelOps | None = None,
) -> nn.Module:
    """Build the model (this rank's shard of it under ``parallel``) on ``ops`` (None: the
    references) directly on ``device`` in ``dtype``, fill its weights (a GGUF file:
    membound/gguf/loader.py), then run each layer's post-load step (which lays the weights out
    for those kernels)."""
    if load_format != "dummy" and path is not None and os.path.isfile(path):
        from membound.gguf.loader import load_gguf_model

        return load_gguf_model(config, path, dtype=dtype, device=device,
                               max_positions=max_positions, progress=progress, parallel=parallel,
                               ops=ops)  # fmt: skip
    headers = None
    if load_format != "dummy":
        if path is None:
            raise CheckpointError("a checkpoint path is needed unless load_format='dummy'")
        headers = _headers(find_safetensors_files(path))
    with _default_dtype(dtype), torch.device(device):
        model = build_model(config, max_positions, parallel, expert_parallel, ops)
    if headers is None:
        init_dummy_weights(model, seed)
    else:
        validate_checkpoint(model, headers)
        model.load_weights(iterate_tensors(headers, progress))  # type: ignore[operator]
    process_after_loading(model)  # linears, experts, an untied LM head, then the model
    return model.eval()
