"""Shared definitions for building the bundled default model (not part of the runtime package).

Everything the scripts in this folder agree on lives here: where the scratch files go, the
special tokens, the model shape, how membound's model is built and initialised for training,
and the one definition of held-out perplexity that the shipped metrics.json reports.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from membound.config import ModelConfig
from membound.layers.attention.metadata import AttentionMetadata, build_attention_metadata
from membound.models.llama import LlamaForCausalLM

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Scratch space (corpus text, token ids, checkpoints, logs): git-ignored.
DEFAULT_WORKDIR = os.path.join(REPO_ROOT, "build", "default_model")
ASSET_DIR = os.path.join(REPO_ROOT, "src", "membound", "assets", "default_model")

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 0, 1, 2
VOCAB_SIZE = 8192  # including the special tokens

CONTEXT_LEN = 256  # training sequence length == perplexity window length
MAX_POSITION_EMBEDDINGS = 1024

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def hf_config_dict() -> dict:
    """config.json of the shipped model (transformers' LlamaConfig fields)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 256,
        "intermediate_size": 704,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": 0,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


def build_model(max_positions: int = MAX_POSITION_EMBEDDINGS) -> LlamaForCausalLM:
    """membound's own Llama, made trainable and initialised (GPT-2 style)."""
    cfg = ModelConfig.from_dict(hf_config_dict())
    model = LlamaForCausalLM(cfg, max_positions=max_positions)
    model.requires_grad_(True)
    residual_std = 0.02 / math.sqrt(2 * cfg.num_hidden_layers)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                param.copy_(torch.randn(param.shape, generator=gen) * residual_std)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


def no_cache_metadata(batch: int, seq_len: int) -> AttentionMetadata:
    """Metadata for ``batch`` independent causal sequences of ``seq_len`` tokens (no KV cache)."""
    return build_attention_metadata(
        query_lens=[seq_len] * batch,
        seq_lens=[seq_len] * batch,
        block_tables=None,
        block_size=16,
        device=torch.device("cpu"),
    )


def forward_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, T] -> logits [B, T, vocab] through membound's no-cache path."""
    batch, seq_len = ids.shape
    md = no_cache_metadata(batch, seq_len)
    positions = torch.arange(seq_len).repeat(batch)  # [B * T]
    hidden = model(ids.flatten(), positions, None, md)  # [B * T, hidden]
    return model.compute_logits(hidden).view(batch, seq_len, -1)


def window_nll(model: torch.nn.Module, windows: torch.Tensor) -> tuple[float, int]:
    """Sum of NLL (nats) of tokens 1..L-1 of each window given the tokens before it, and the
    number of tokens scored. windows: [num_windows, L]; each window is scored independently."""
    logits = forward_logits(model, windows).float()  # [N, L, vocab]
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="sum"
    )
    return float(nll), windows.shape[0] * (windows.shape[1] - 1)


def heldout_windows(ids: Sequence[int], window: int = CONTEXT_LEN) -> torch.Tensor:
    """Non-overlapping windows from the start of the stream; the trailing remainder
    (len(ids) % window tokens) is dropped."""
    n = len(ids) // window
    return torch.tensor(list(ids[: n * window]), dtype=torch.int64).view(n, window)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module, ids: Sequence[int], window: int = CONTEXT_LEN, batch: int = 16
) -> dict:
    """exp(mean NLL) over the non-overlapping windows of ``ids`` (see ``window_nll``)."""
    windows = heldout_windows(ids, window)
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch):
        nll, n = window_nll(model, windows[start : start + batch])
        total += nll
        count += n
    return {
        "perplexity": math.exp(total / count),
        "mean_nll_nats": total / count,
        "num_windows": int(windows.shape[0]),
        "tokens_scored": count,
    }
