"""Load a GGUF file into a built model: check every tensor first, then stream them in.

Each GGUF tensor becomes one or more checkpoint tensors under Hugging Face names
(names.py), so the model's own ``load_weights`` and its layers' quantization methods do the
copying, exactly as for safetensors:

- a decoder linear kept int4 (``config.quantization`` "gguf", module not ``ignored``) gives
  ``<module>.qweight`` / ``.scales`` / ``.zeros`` decoded from its blocks (tensors.py);
- a module the config holds int8 (``int8_modules``: linears of other block types, a quantized
  token embedding / output table) gives ``<name>`` dequantized to float32, which its layer
  requantizes per output row as it loads (layers/quantization/gguf.py, vocab_embedding.py);
- anything else gives ``<name>`` dequantized to float32 (the layer casts to the engine dtype).

Llama q/k rows are put back in HF order on the way. The whole file is validated against a
copy of the model built on the meta device (no memory) BEFORE the real model is allocated,
so a bad file never half-loads.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from membound.config import ModelConfig
from membound.distributed.context import ParallelContext
from membound.gguf.names import PERMUTED_QK_ARCHITECTURES, hf_module, hf_name
from membound.gguf.reader import GGUFError, GGUFFile, GGUFTensorInfo
from membound.gguf.tensors import decode_int4, dequantize, int4_layout, unpermute_rows
from membound.gguf.types import INT4_BLOCK_TYPES
from membound.kernels.contract import KernelOps
from membound.layers.checkpoint_tensor import LazyTensor, process_after_loading
from membound.models.registry import build_model

logger = logging.getLogger(__name__)
_DENSE_PARTS = ("float", "int8")  # parts read dequantized (int8: the layer requantizes)


@dataclass(frozen=True)
class _Source:
    """One checkpoint tensor made from a GGUF tensor: ``part`` is "float" (held at the engine
    dtype), "int8" (float32 handed to a layer that requantizes it) or one of the int4 pieces
    ("qweight", "scales", "zeros")."""

    info: GGUFTensorInfo
    part: str
    shape: tuple[int, ...]
    header_dtype: str  # safetensors spelling, for the shared validation


def plan_tensors(file: GGUFFile, config: ModelConfig) -> dict[str, _Source]:
    """Checkpoint name -> source, for every tensor of the file; unknown tensors raise."""
    quant = config.quantization
    plan: dict[str, _Source] = {}
    unknown = []
    for info in file.tensors.values():
        name = hf_name(info.name)
        if name is None:
            unknown.append(info.name)
            continue
        module = hf_module(info.name)
        if (
            quant is not None
            and module is not None
            and not quant.is_ignored(module)
            and not quant.is_int8(module)
            and info.ggml_type in INT4_BLOCK_TYPES
        ):
            rows, cols = info.shape  # stored transposed: [in // 8, out], [in // 32, out]
            plan[f"{module}.qweight"] = _Source(info, "qweight", (cols // 8, rows), "I32")
            plan[f"{module}.scales"] = _Source(info, "scales", (cols // 32, rows), "F32")
            plan[f"{module}.zeros"] = _Source(info, "zeros", (cols // 32, rows), "F32")
        else:
            int8 = quant is not None and quant.is_int8(name.rsplit(".", 1)[0])
            plan[name] = _Source(info, "int8" if int8 else "float", info.shape, "F32")
    if unknown:
        raise GGUFError(
            f"{file.path} has tensors membound does not know for {file.architecture}: "
            f"{', '.join(sorted(unknown)[:10])}; this file's model variant is not supported"
        )
    return plan


def validate_gguf(
    file: GGUFFile, config: ModelConfig, plan: dict[str, _Source], max_positions: int | None
) -> None:
    """Check names, shapes and completeness against a meta-device copy of the model."""
    from membound.worker.weight_loader import CheckpointError, validate_checkpoint

    with torch.device("meta"):
        meta = build_model(config, max_positions, None, False)
    headers = {name: (file.path, s.shape, s.header_dtype) for name, s in plan.items()}
    try:
        validate_checkpoint(meta, headers)
    except CheckpointError as e:
        raise GGUFError(f"{file.path} does not match its own metadata: {e}") from e


class _Reader:
    """Reads (and decodes once) the GGUF tensor behind the checkpoint tensors it feeds."""

    def __init__(self, file: GGUFFile, config: ModelConfig) -> None:
        self.file = file
        arch = file.architecture
        self.heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
        self.permute = arch in PERMUTED_QK_ARCHITECTURES
        self._cached: tuple[str, tuple[np.ndarray, ...]] | None = None

    def arrays(self, source: _Source) -> dict[str, np.ndarray]:
        info = source.info
        dense = source.part in _DENSE_PARTS
        if self._cached is None or self._cached[0] != info.name:
            data = self.file.tensor_data(info.name)
            if dense:
                arrays: tuple[np.ndarray, ...] = (dequantize(data, info.ggml_type, info.shape),)
            else:
                arrays = decode_int4(data, info.ggml_type, info.shape)  # type: ignore[arg-type]
            arrays = tuple(self._unpermute(info.name, a) for a in arrays)  # rows = outputs
            if not dense:
                arrays = int4_layout(*arrays)
            self._cached = (info.name, arrays)
        arrays = self._cached[1]
        if dense:
            return {source.part: arrays[0]}
        return dict(zip(("qweight", "scales", "zeros"), arrays))

    def _unpermute(self, name: str, a: np.ndarray) -> np.ndarray:
        piece = name.split(".")[2] if name.startswith("blk.") else ""
        if self.permute and piece in self.heads:
            return unpermute_rows(a, self.heads[piece])
        return a

    def lazy(self, source: _Source) -> LazyTensor:
        def read(slices: tuple[slice, ...] | None) -> torch.Tensor:
            a = self.arrays(source)[source.part]
            t = torch.from_numpy(a if a.flags.writeable else a.copy())
            return t if slices is None else t[slices]

        return LazyTensor(read, source.shape)


def iterate_gguf(
    file: GGUFFile, config: ModelConfig, plan: dict[str, _Source], progress: bool
) -> Iterator[tuple[str, LazyTensor]]:
    from tqdm import tqdm

    reader = _Reader(file, config)
    for name, source in tqdm(
        plan.items(), desc="Loading GGUF", unit="tensor", disable=not progress
    ):
        yield name, reader.lazy(source)


def describe_plan(
    file: GGUFFile, plan: dict[str, _Source], dtype: torch.dtype, tied: bool = False
) -> str:
    """The start-up line naming how each ggml type loaded (int4 in memory, int8 per row, or
    dense at ``dtype``), e.g. ``210 tensors stay int4 in memory (Q4_1 x210); 1 stays int8,
    requantized per row: Q8_0 x1 (token_embd.weight); loaded at float32: F32 x61``."""
    kept = Counter(s.info.ggml_type for s in plan.values() if s.part == "qweight")
    int8 = [s.info for s in plan.values() if s.part == "int8"]
    dense = [s.info for s in plan.values() if s.part == "float"]
    int4 = ", ".join(f"{t} x{n}" for t, n in sorted(kept.items()))
    dtype_name = str(dtype).removeprefix("torch.")
    line = (
        f"GGUF {file.path}: {sum(kept.values())} tensors stay int4 in memory"
        f"{f' ({int4})' if int4 else ''}; "
    )
    if int8:
        line += f"{len(int8)} stay int8, requantized per row: {_by_type(int8)}; "
    if tied and any(i.name == "token_embd.weight" for i in int8):
        line += "the tied output head reads the int8 token_embd table (no second copy); "
    return line + f"loaded at {dtype_name}: {_by_type(dense, skip=('F32',))}"


def _by_type(infos: list[GGUFTensorInfo], skip: tuple[str, ...] = ()) -> str:
    """``Q8_0 x1 (token_embd.weight); F32 x61``: each type, its count, a few names."""
    types = Counter(i.ggml_type for i in infos)
    parts = []
    for t, n in sorted(types.items()):
        few = [i.name for i in infos if i.ggml_type == t][:3] if t not in skip else []
        parts.append(f"{t} x{n}" + (f" ({', '.join(few)}{'...' if n > 3 else ''})" if few else ""))
    return "; ".join(parts) if parts else "nothing"


def load_gguf_model(
    config: ModelConfig,
    path: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int | None = None,
    progress: bool = False,
    parallel: ParallelContext | None = None,
    ops: KernelOps | None = None,
) -> nn.Module:
    """Validate the whole file, then build the model on ``device`` with ``ops`` (the kernel
    backend; None: the references) and stream it in."""
    from membound.worker.weight_loader import _default_dtype

    file = GGUFFile(path)
    plan = plan_tensors(file, config)
    validate_gguf(file, config, plan, max_positions)
    logger.info("%s", describe_plan(file, plan, dtype, config.tie_word_embeddings))
    with _default_dtype(dtype), torch.device(device):
        model = build_model(config, max_positions, parallel, False, ops)
    model.load_weights(iterate_gguf(file, config, plan, progress))  # type: ignore[operator]
    process_after_loading(model)  # linears, experts, an untied LM head, then the model
    kernels = describe_int8_kernels(model)
    if kernels:
        logger.info("GGUF int8 tensors compute through %s", kernels)
    return model.eval()


def describe_int8_kernels(model: nn.Module) -> str:
    """Which kernel serves the int8 tables and linears after loading (empty: none held):
    torch's packed CPU kernel (CPU backend, bf16) or the torch reference elsewhere."""
    fast = ref = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if getattr(method, "name", None) == "gguf_int8":
            fast, ref = fast + module.cpu_weight_only, ref + (not module.cpu_weight_only)
    head = getattr(model, "lm_head", None)
    parts = []
    if head is not None and getattr(head, "weight_scale", None) is not None:
        kernel = "the packed CPU int8 kernel" if head.int8_cpu_kernel else "int8_logits_ref"
        parts.append(f"lm_head: {kernel}")
    if fast:
        parts.append(f"{fast} linears: the packed CPU int8 kernel")
    if ref:
        parts.append(f"{ref} linears: int8_weight_only_linear_ref (dequantize + GEMM per call)")
    return "; ".join(parts)
