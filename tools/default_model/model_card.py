"""Write the shipped model's README.md from metrics.json, config.json and a greedy sample.

python tools/default_model/model_card.py
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
from common import ASSET_DIR, CONTEXT_LEN, forward_logits
from tokenizers import Tokenizer

GREEDY_PROMPT = "class Foo:\n    def __init__(self"
SAMPLED_PROMPT = "import os\n\n\ndef "


def continuation(out: str, prompt: str, n: int = 48, temperature: float = 0.0) -> str:
    """Greedy (temperature 0) or seeded top-k 40 sampling, re-running the whole sequence."""
    from membound.config import ModelConfig
    from membound.worker.weight_loader import load_model

    model = load_model(
        ModelConfig.from_hf(out), out, dtype=torch.float32, device=torch.device("cpu")
    )
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    ids = tok.encode(prompt).ids
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(n):
            logits = forward_logits(model, torch.tensor([ids]))[0, -1]
            if temperature == 0.0:
                ids.append(int(logits.argmax()))
                continue
            top, idx = (logits / temperature).topk(40)
            ids.append(int(idx[torch.multinomial(top.softmax(-1), 1, generator=gen)]))
    return tok.decode(ids, skip_special_tokens=False)


def card(cfg: dict, m: dict, samples: tuple[str, str], params: int, size_mb: float) -> str:
    meth, tr = m["method"], m["training"]
    return f"""# membound default model

A small Llama-architecture language model trained from scratch, on CPU, on the Python
standard library's own source code and its bundled pydoc help topics. It exists so that
`membound generate` and `membound serve` work on a fresh machine with no downloads. It writes
Python-flavoured text; do not expect it to answer questions.

| | |
|---|---|
| architecture | `LlamaForCausalLM` (RMSNorm, RoPE θ={cfg["rope_theta"]:g}, SwiGLU, GQA) |
| shape | hidden {cfg["hidden_size"]}, {cfg["num_hidden_layers"]} layers, {cfg["num_attention_heads"]} heads / {cfg["num_key_value_heads"]} KV heads (head_dim {cfg["head_dim"]}), MLP {cfg["intermediate_size"]}, tied embeddings |
| parameters | {params:,} ({size_mb:.1f} MB as float32 safetensors) |
| vocabulary | 8,192 byte-level BPE tokens trained on the same corpus; specials `<\\|endoftext\\|>` (0, EOS and document separator), `<\\|im_start\\|>` (1), `<\\|im_end\\|>` (2) |
| context | trained on {CONTEXT_LEN}-token windows; `max_position_embeddings` {cfg["max_position_embeddings"]} (positions beyond {CONTEXT_LEN} were never trained) |
| training | {tr["steps"]:,} steps, {tr["tokens"]:,} tokens ({tr["tokens"] / tr["train_split_tokens"]:.2f} epochs of {tr["train_split_tokens"]:,}), {tr["wall_seconds"] / 60:.1f} min on 2 shared CPU cores, with membound's own model code |
| **held-out perplexity** | **{m["heldout_perplexity"]:.2f}** (mean NLL {m["heldout_mean_nll_nats"]:.4f} nats/token) |

## Held-out perplexity, exactly

The held-out split is {m["heldout_split"]["documents"]} documents chosen by hashing their paths
(`{m["heldout_split"]["rule"]}`, Python {m["heldout_split"]["python"]}), never seen by the
tokenizer trainer or the model. They ship here as `heldout.txt` ({meth["total_tokens"]:,} tokens).

- Tokenise the whole of `heldout.txt` with `tokenizer.json` (its `<|endoftext|>` separators
  become token 0; nothing else is added).
- Cut the stream into non-overlapping windows of **{meth["window_length"]} tokens** from the
  start; the final {meth["total_tokens"] % meth["window_length"]} tokens are dropped. Each window
  is scored on its own (no context carried over, no stride).
- In each window, score tokens 1..{meth["window_length"] - 1} given the earlier tokens of that
  window; **the first token of a window is not scored**.
- Perplexity = exp(total NLL / tokens scored) = exp({m["heldout_mean_nll_nats"]:.4f}) over
  {meth["num_windows"]} windows and **{meth["tokens_scored"]:,} scored tokens**, float32.

`metrics.json` records the same, plus the figure for its first {m["slice"]["num_windows"]} windows
(perplexity {m["slice"]["perplexity"]:.2f}) that the test suite recomputes.

## Training curve

![training curve](training_curve.png)

Train loss per step and its moving average; held-out loss on a fixed 24-window subset every
two minutes; the dashed line is the final full held-out figure.

## Samples (float32, prompt included)

Greedy, 48 tokens:

```python
{samples[0]}
```

Temperature 0.7, top-k 40, seed 0, 48 tokens. Greedy decoding of a model this small tends
to loop (`import os` over and over), so `generation_config.json` suggests these sampling
settings; it stops at `<|endoftext|>` or `<|im_end|>`.

```python
{samples[1]}
```

## Reproduce

See `tools/default_model/README.md` in the repository. The corpus depends on the interpreter's
patch version, so a retrained model will differ slightly; this folder is the reference.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=ASSET_DIR)
    args = parser.parse_args()
    with open(os.path.join(args.out, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    with open(os.path.join(args.out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    from safetensors import safe_open

    params = 0
    with safe_open(os.path.join(args.out, "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            params += math.prod(f.get_slice(name).get_shape())
    size_mb = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 1e6
    samples = (
        continuation(args.out, GREEDY_PROMPT),
        continuation(args.out, SAMPLED_PROMPT, temperature=0.7),
    )
    text = card(cfg, metrics, samples, params, size_mb)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
