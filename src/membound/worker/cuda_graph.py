"""CUDA graphs for decode steps.

A decode step at batch size n launches a few hundred small kernels; replaying a captured
graph launches them all at once. One graph per size of a ladder (``KernelConfig``:
1, 2, 4, 8, 16, ..., 256 by default, capped at ``max_num_seqs``); a step of n decodes
replays the smallest captured size p >= n with the rows past n padded:

    static rows:  | n live decodes | p - n padding rows | ...unused up to the largest size |
    padding row:  slot -1 (the KV store skips it), seq_len 0 (attention writes zeros)

Every tensor the model reads lives in a static buffer that the graph was captured on; a step
copies its inputs into them and replays. No forward context is needed: the captured
``AttentionMetadata`` (``decode_only_metadata``) points at the static buffers and is passed
explicitly, like any other step's. The flash-decoding split is fixed per size at capture
(computed for ``max_model_len``), so the replay for a given padded batch is bitwise the
eager forward of that padded batch with the same metadata (tests/worker: GPU).

Graphs need the Triton backend on CUDA and no dynamic-NTK rope (its base depends on a
host-side check of the sequence lengths).
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any

import torch
from torch import nn

from membound.config import KernelConfig
from membound.kernels.contract import KernelBackend
from membound.kernels.paged_attention import choose_num_splits
from membound.kernels.triton_utils import num_sms
from membound.layers.attention.metadata import AttentionMetadata, decode_only_metadata

logger = logging.getLogger(__name__)

DEFAULT_SIZES: tuple[int, ...] = (1, 2, 4, *range(8, 257, 8))


def decode_graph_sizes(config: KernelConfig, max_num_seqs: int) -> list[int]:
    """The capture ladder: the configured sizes (or the default) up to ``max_num_seqs``,
    plus ``max_num_seqs`` itself when the default ladder would stop short of it."""
    if config.cuda_graph_sizes is not None:
        return [s for s in config.cuda_graph_sizes if s <= max_num_seqs] or [max_num_seqs]
    sizes = [s for s in DEFAULT_SIZES if s <= max_num_seqs]
    if max_num_seqs < DEFAULT_SIZES[-1] and max_num_seqs not in sizes:
        sizes.append(max_num_seqs)
    return sizes


class CUDAGraphRunner:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        sizes: list[int],
        max_model_len: int,
        block_size: int,
        sliding_window: int | None,
        device: torch.device,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = sorted(set(sizes))
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.sliding_window = sliding_window
        self.device = device
        self.num_kv_heads = int(kv_caches[0].shape[3])
        self.max_blocks = -(-max_model_len // block_size)
        b = self.sizes[-1]
        i64 = {"dtype": torch.int64, "device": device}
        self.input_ids = torch.zeros(b, **i64)  # [max_batch]
        self.positions = torch.zeros(b, **i64)
        self.slot_mapping = torch.full((b,), -1, **i64)
        self.block_tables = torch.zeros(b, self.max_blocks, **i64)  # [max_batch, max_blocks]
        self.seq_lens = torch.zeros(b, dtype=torch.int32, device=device)
        self.seq_lens_per_token = torch.zeros(b, **i64)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # [size, hidden] static graph outputs
        self.metadata: dict[int, AttentionMetadata] = {}

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def padded_size(self, n: int) -> int | None:
        i = bisect.bisect_left(self.sizes, n)
        return self.sizes[i] if i < len(self.sizes) else None

    def metadata_for(self, size: int) -> AttentionMetadata:
        """The metadata a graph of ``size`` rows is captured with (over the static buffers)."""
        if size not in self.metadata:
            splits = choose_num_splits(
                size, self.num_kv_heads, self.max_model_len, num_sms(self.device)
            )
            self.metadata[size] = decode_only_metadata(
                self.slot_mapping[:size], self.block_tables[:size], self.seq_lens[:size],
                self.seq_lens_per_token[:size], self.sliding_window, splits,
            )
        return self.metadata[size]

    def forward_static(self, size: int) -> torch.Tensor:
        """The eager forward over the first ``size`` static rows (what a graph captures)."""
        md = self.metadata_for(size)
        return self.model(self.input_ids[:size], self.positions[:size], self.kv_caches, md)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first, sharing one memory pool. The static rows are
        all padding meanwhile, so capture writes nothing into the KV cache."""
        t0 = time.perf_counter()
        self.slot_mapping.fill_(-1)
        self.seq_lens.zero_()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            for _ in range(2):  # compile the kernels, settle the allocator
                self.forward_static(size)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.forward_static(size)
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        logger.info("captured %d decode CUDA graphs (batch %d..%d) in %.1fs",
                    len(self.sizes), self.sizes[0], self.sizes[-1], time.perf_counter() - t0)

    def fits(self, md: AttentionMetadata) -> bool:
        """A step made of decodes alone, at most the largest size, with the captured window."""
        d = md.decode
        return (
            d is not None
            and md.prefill is None
            and md.slot_mapping is not None
            and d.token_range == (0, md.num_tokens)
            and md.num_tokens <= self.max_batch
            and d.block_tables.shape[1] <= self.max_blocks
            and md.sliding_window == self.sliding_window
        )

    def can_run(self, md: AttentionMetadata) -> bool:
        return bool(self.graphs) and self.fits(md)

    def load_inputs(self, input_ids: torch.Tensor, positions: torch.Tensor,
                    md: AttentionMetadata, size: int) -> None:
        """Copy a step's inputs into the static rows and pad rows n..size."""
        d, n = md.decode, md.num_tokens
        assert d is not None and md.slot_mapping is not None
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(md.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        self.block_tables[:n, : d.block_tables.shape[1]].copy_(d.block_tables)
        self.seq_lens[:n].copy_(d.seq_lens)
        self.seq_lens[n:size].zero_()
        self.seq_lens_per_token[:n].copy_(md.seq_lens_per_token)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            md: AttentionMetadata) -> torch.Tensor:
        """Replay the graph for this decode step: hidden states [n, hidden], a view of the
        graph's static output (valid until the next replay)."""
        n = md.num_tokens
        size = self.padded_size(n)
        assert size is not None and self.can_run(md)
        self.load_inputs(input_ids, positions, md, size)
        self.graphs[size].replay()
        return self.outputs[size][:n]


def maybe_capture_decode_graphs(
    model: nn.Module,
    kv_caches: list[torch.Tensor],
    config: KernelConfig,
    backend: KernelBackend,
    max_num_seqs: int,
    max_model_len: int,
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
) -> CUDAGraphRunner | None:
    """Capture decode graphs when they apply: CUDA, the Triton backend, not enforce_eager,
    a KV cache, and a rope whose cos/sin do not depend on host-side sequence lengths."""
    if device.type != "cuda" or config.enforce_eager or backend is not KernelBackend.TRITON:
        return None
    if not kv_caches:
        return None
    scaling: Any = getattr(getattr(model, "config", None), "rope_scaling", None)
    if scaling is not None and scaling.rope_type == "dynamic":
        logger.info("dynamic-NTK rope: decode steps run eagerly (no CUDA graphs)")
        return None
    sizes = decode_graph_sizes(config, max_num_seqs)
    runner = CUDAGraphRunner(model, kv_caches, sizes, max_model_len, block_size,
                             sliding_window, device)  # fmt: skip
    runner.capture()
    return runner
