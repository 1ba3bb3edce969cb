"""Rotary position embedding (NeoX / HF "rotate_half" layout) with linear, dynamic-NTK and
llama3 frequency scaling, matching transformers' definitions. The scaling lives in the
cos/sin rows; applying them is kernels/rotary.py (torch reference on CPU, in place with
Triton on CUDA)."""

from __future__ import annotations

import math

import torch
from torch import nn

from membound.config import RopeScaling
from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.kernels.rotary import rotate_ref as apply_rotary_ref

__all__ = ["RotaryEmbedding", "apply_rotary_ref"]


def base_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """inv_freq[i] = 1 / base^(2i / head_dim), in float32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (base**exponents)


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama-3.1: long wavelengths divided by ``factor``, short ones kept, a smooth ramp between."""
    assert scaling.original_max_position_embeddings is not None
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def dynamic_ntk_base(base: float, head_dim: int, scaling: RopeScaling, seq_len: int) -> float:
    """HF's dynamic NTK: the base grows once a sequence passes the original length."""
    assert scaling.original_max_position_embeddings is not None
    orig = scaling.original_max_position_embeddings
    return base * ((scaling.factor * seq_len / orig) - (scaling.factor - 1)) ** (
        head_dim / (head_dim - 2)
    )


class RotaryEmbedding(nn.Module):
    """Holds a float32 cos/sin table for every position up to ``max_positions``."""

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        base: float,
        scaling: RopeScaling | None = None,
        ops: KernelOps | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.scaling = scaling
        inv_freq = base_inv_freq(head_dim, base)
        if scaling is not None and scaling.rope_type == "llama3":
            inv_freq = llama3_inv_freq(inv_freq, scaling)
        elif scaling is not None and scaling.rope_type == "linear":
            inv_freq = inv_freq / scaling.factor
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.max_positions = max_positions
        cos, sin = self._table(inv_freq, max_positions)
        self.register_buffer("cos_cache", cos, persistent=False)  # [max_positions, head_dim // 2]
        self.register_buffer("sin_cache", sin, persistent=False)
        self.ops = ops or TORCH_OPS

    @staticmethod
    def _table(inv_freq: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(n, dtype=torch.int64).to(torch.float32)
        freqs = t[:, None] * inv_freq[None, :]
        return freqs.cos(), freqs.sin()

    def cos_sin(
        self, positions: torch.Tensor, seq_lens_per_token: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for each token. ``seq_lens_per_token`` (the length of the token's
        sequence after this step) is only consulted by dynamic NTK scaling."""
        sc = self.scaling
        if (
            sc is not None
            and sc.rope_type == "dynamic"
            and seq_lens_per_token is not None
            and sc.original_max_position_embeddings is not None
            and int(seq_lens_per_token.max()) > sc.original_max_position_embeddings
        ):
            return self._dynamic_cos_sin(positions, seq_lens_per_token)
        return self.cos_cache[positions], self.sin_cache[positions]

    def _dynamic_cos_sin(
        self, positions: torch.Tensor, seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.scaling is not None and self.scaling.original_max_position_embeddings
        cos = self.cos_cache.new_empty(positions.shape[0], self.head_dim // 2)
        sin = torch.empty_like(cos)
        orig = self.scaling.original_max_position_embeddings
        for length in torch.unique(seq_lens).tolist():
            sel = seq_lens == length
            if length <= orig:
                cos[sel], sin[sel] = self.cos_cache[positions[sel]], self.sin_cache[positions[sel]]
                continue
            base = dynamic_ntk_base(self.base, self.head_dim, self.scaling, int(length))
            inv = base_inv_freq(self.head_dim, base).to(cos.device)
            freqs = positions[sel].to(torch.float32)[:, None] * inv[None, :]
            cos[sel], sin[sel] = freqs.cos(), freqs.sin()
        return cos, sin

    def forward(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        seq_lens_per_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [num_tokens, num_heads, head_dim], k: [num_tokens, num_kv_heads, head_dim].
        The references return rotated copies; the Triton kernel rotates q and k in place."""
        return self.rotate(q, k, self.cos_sin(positions, seq_lens_per_token))

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q/k by ``cos_sin`` (``cos_sin(positions)``, [num_tokens, head_dim // 2] each):
        a model looks the rows up once per step and every layer rotates with them."""
        cos, sin = cos_sin
        return self.ops.rotary_embedding(query=q, key=k, cos=cos, sin=sin)
