"""The attention layer: stores new K/V into the paged cache, then attends through block tables.

Decodes go to the paged decode kernel as one batch, prefill chunks to the varlen prefill
kernel as another; the backend's ops (Triton, CPU or the torch references) come in ``__init__``.

The layer owns its FP8 KV-cache scales (kernels/kv_quant.py): one for K and one for V, read
from the checkpoint when it carries them (``k_scale`` / ``v_scale``, optional), else 1.0.
They apply only when the cache it is handed is FP8; a cache in the model dtype ignores them.
"""

from __future__ import annotations

import torch
from torch import nn

from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.kernels.kv_quant import is_fp8
from membound.layers.attention.metadata import AttentionMetadata, DecodeBatch, PrefillBatch
from membound.layers.checkpoint_tensor import LazyTensor, materialize
from membound.layers.quantization.base import SCALAR_SHAPES, TensorSpec


class Attention(nn.Module):
    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.k_scale = 1.0  # FP8 KV cache: stored K = K / k_scale (checkpoint or 1.0)
        self.v_scale = 1.0
        self.kv_scales_from_checkpoint = False
        self.ops: KernelOps = ops or TORCH_OPS

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor | None,
        md: AttentionMetadata,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] -> [T, H * D]."""
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [T, H, D]
        if kv_cache is None:
            if md.prefill is not None:
                self._varlen(q, k, v, md.prefill, md.sliding_window, out)
            return out.flatten(1)
        assert md.slot_mapping is not None
        scales = self.cache_scales(kv_cache)
        self.ops.store_kv(key=k, value=v, kv_cache=kv_cache, slot_mapping=md.slot_mapping,
                          **scales)  # fmt: skip
        if md.decode is not None:
            self._decode(q, kv_cache, md.decode, md.sliding_window, md.backend_decode, out,
                         scales)  # fmt: skip
        if md.prefill is not None:
            self._prefill(q, kv_cache, md.prefill, md.sliding_window, out, scales)
        return out.flatten(1)  # [T, H * D]

    def cache_scales(self, kv_cache: torch.Tensor) -> dict[str, float]:
        """The scales a kernel needs for ``kv_cache``: this layer's for FP8, else 1.0."""
        if is_fp8(kv_cache.dtype):
            return {"k_scale": self.k_scale, "v_scale": self.v_scale}
        return {"k_scale": 1.0, "v_scale": 1.0}

    # ---- loading: the optional FP8 KV-cache scales of the checkpoint ------------------------
    def shard_ids(self) -> tuple[object, ...]:
        return (None,)

    def checkpoint_specs(self, shard_id: object = None) -> dict[str, TensorSpec]:
        return {s: TensorSpec(SCALAR_SHAPES, required=False) for s in ("k_scale", "v_scale")}

    def load_checkpoint_tensor(
        self, suffix: str, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
        name: str = "?",
    ) -> None:
        value = float(materialize(loaded).float().reshape(-1)[0])
        if not value > 0.0:
            raise ValueError(f"checkpoint tensor {name} = {value}: a KV-cache scale must be > 0")
        setattr(self, suffix, value)
        self.kv_scales_from_checkpoint = True

    def process_weights_after_loading(self) -> None:
        """Nothing to lay out: the scales are plain numbers the kernels take as arguments."""

    def _decode(
        self, q: torch.Tensor, kv_cache: torch.Tensor, d: DecodeBatch, window: int | None,
        plan: object | None, out: torch.Tensor, scales: dict[str, float],
    ) -> None:
        """``plan``: the backend's per-step metadata, built once by the runner (None: none)."""
        kw = {"kv_cache": kv_cache, "block_tables": d.block_tables, "seq_lens": d.seq_lens,
              "scale": self.scale, "sliding_window": window, "num_splits": d.num_splits,
              "plan": plan, **scales}  # fmt: skip
        if d.token_range is not None:
            s, e = d.token_range
            self.ops.decode_attention(query=q[s:e], out=out[s:e], **kw)
        else:
            out[d.token_idx] = self.ops.decode_attention(query=q[d.token_idx], out=None, **kw)

    def _prefill(
        self, q: torch.Tensor, kv_cache: torch.Tensor, p: PrefillBatch, window: int | None,
        out: torch.Tensor, scales: dict[str, float],
    ) -> None:
        assert p.block_tables is not None
        kw = {"kv_cache": kv_cache, "block_tables": p.block_tables,
              "query_start_loc": p.query_start_loc, "seq_lens": p.seq_lens, "scale": self.scale,
              "sliding_window": window, "max_query_len": p.max_query_len, **scales}  # fmt: skip
        if p.token_range is not None:
            s, e = p.token_range
            self.ops.prefill_attention(query=q[s:e], out=out[s:e], **kw)
        else:
            out[p.token_idx] = self.ops.prefill_attention(query=q[p.token_idx], out=None, **kw)

    def _varlen(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: PrefillBatch,
        window: int | None, out: torch.Tensor,
    ) -> None:
        """No KV cache: each sequence attends to its own new tokens only."""
        kw = {"query_start_loc": p.query_start_loc, "scale": self.scale,
              "sliding_window": window, "max_query_len": p.max_query_len}  # fmt: skip
        if p.token_range is not None:
            s, e = p.token_range
            self.ops.varlen_attention(query=q[s:e], key=k[s:e], value=v[s:e], out=out[s:e], **kw)
        else:
            idx = p.token_idx
            out[idx] = self.ops.varlen_attention(query=q[idx], key=k[idx], value=v[idx],
                                                 out=None, **kw)  # fmt: skip
