"""Tiny random Hugging Face checkpoints (built with transformers, the oracle) for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

BASE: dict[str, Any] = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 112,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.1,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

# family name -> (transformers config class name, model class name, overrides)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama3_tied": ("LlamaConfig", "LlamaForCausalLM", {
        "tie_word_embeddings": True, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    }),
    "llama_mha_untied": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 4, "tie_word_embeddings": False,
    }),
    "llama_head_dim": ("LlamaConfig", "LlamaForCausalLM", {
        "head_dim": 24, "num_attention_heads": 4, "num_key_value_heads": 1,
        "tie_word_embeddings": False,
    }),
    "llama_linear_rope": ("LlamaConfig", "LlamaForCausalLM", {
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "max_position_embeddings": 128,
    }),
    "llama_dynamic_rope": ("LlamaConfig", "LlamaForCausalLM", {
        "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 64,
    }),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 12}),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": False}),
    "qwen3_qknorm": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
}


def make_checkpoint(
    folder: Path, family: str = "llama_mha_untied", seed: int = 0, **overrides: Any
) -> Path:
    """Save a tiny random model of ``family`` (float32, safetensors) into ``folder``."""
    import transformers

    cfg_name, model_name, fam = FAMILIES[family]
    kwargs = {**BASE, **fam, **overrides}
    config = getattr(transformers, cfg_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def load_hf(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model: Any, prompt: list[int], n: int, k: int = 5) -> tuple[list[int], list[dict]]:
    """Greedy tokens by full re-computation each step (no EOS handling), and top-k logprobs."""
    ids = list(prompt)
    tokens, top = [], []
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        lp = torch.log_softmax(logits, -1)
        vals, idx = lp.topk(k)
        top.append(dict(zip(idx.tolist(), vals.tolist())))
        t = int(logits.argmax())
        tokens.append(t)
        ids.append(t)
    return tokens, top


CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nimport sys\n\nprint(os.path.join('a', 'b'))\n",
    "class Foo:\n    def __init__(self, x):\n        self.x = x\n",
    "for i in range(10):\n    if i % 2 == 0:\n        continue\n",
    "héllo wörld — naïve café 😀 中文",
]


def add_tokenizer(folder: Path, vocab_size: int = 320) -> Path:
    """Train a byte-level BPE of at most ``vocab_size`` ids into the checkpoint folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 8, trainer)
    tok.save(str(folder / "tokenizer.json"))
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "bos_token": None, "pad_token": "<|pad|>", "chat_template": template,
    }))
    return folder


@torch.no_grad()
def hf_generate_cached(model: Any, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from transformers' own generate() with its KV cache, EOS disabled."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False)
    return out[0, len(prompt):].tolist()


# Mixture-of-Experts families (tests/models/test_moe.py; also matched by test_hf_equivalence)
FAMILIES.update({
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {
        "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 48,
        "sliding_window": None,
    }),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48, "norm_topk_prob": False,
        "decoder_sparse_step": 1, "mlp_only_layers": [1], "tie_word_embeddings": False,
    }),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {
        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "norm_topk_prob": True, "head_dim": 32,
    }),
})
