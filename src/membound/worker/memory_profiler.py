"""Start-up memory accounting: weights, peak activations of one step, KV cache, swap space.

On CUDA the activation peak is measured with a dummy forward pass at the step's token
budget; on CPU nothing is measured (there is no allocator to ask) and the KV cache gets an
explicit budget instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from membound.layers.attention.metadata import build_attention_metadata

GiB = 1024**3


@dataclass(frozen=True)
class MemoryReport:
    device: str
    total_bytes: int | None  # device memory (None on CPU)
    weights_bytes: int
    activation_bytes: int | None  # measured peak of one step (None: not measured on CPU)
    kv_bytes: int
    num_blocks: int
    block_size: int
    max_model_len: int
    swap_bytes: int
    offloaded_bytes: int = 0  # layer weights kept in CPU memory (cpu_offload_gb)

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def max_concurrent_full_seqs(self) -> float:
        return self.kv_tokens / self.max_model_len

    def format(self) -> str:
        act = (
            f"{self.activation_bytes / GiB:.2f} GiB"
            if self.activation_bytes is not None
            else "not measured on CPU"
        )
        return (
            f"memory on {self.device}: weights {self.weights_bytes / GiB:.3f} GiB"
            + (f" (+ {self.offloaded_bytes / GiB:.3f} GiB offloaded to CPU)"
               if self.offloaded_bytes else "")
            + ", "
            f"activations {act}, KV cache {self.kv_bytes / GiB:.3f} GiB = {self.num_blocks} "
            f"blocks = {self.kv_tokens} tokens = {self.max_concurrent_full_seqs:.2f} concurrent "
            f"sequences at max_model_len={self.max_model_len}"
            + (f", swap space {self.swap_bytes / GiB:.2f} GiB" if self.swap_bytes else "")
        )


def weights_bytes(model: nn.Module) -> int:
    """Bytes of parameters resident on their device (offloaded layers hold empty tensors)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


@torch.inference_mode()
def profile_peak_activation_bytes(
    model: nn.Module, num_tokens: int, num_sample_rows: int, vocab_size: int, device: torch.device
) -> int:
    """Run one cache-less prefill of ``num_tokens`` tokens (plus logits for
    ``num_sample_rows`` rows) and return the CUDA memory it needed beyond what was held."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    ids = torch.randint(0, vocab_size, (num_tokens,), device=device)
    positions = torch.arange(num_tokens, device=device)
    md = build_attention_metadata([num_tokens], [num_tokens], None, 16, device)
    hidden = model(ids, positions, None, md)  # [num_tokens, hidden]
    rows = hidden[-min(num_sample_rows, num_tokens) :]
    logits = model.compute_logits(rows)  # None on tensor-parallel ranks other than 0
    if logits is not None:
        torch.softmax(logits.float(), dim=-1)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del hidden, logits, rows
    torch.cuda.empty_cache()
    return int(peak)
