"""Export the trained model to Hugging Face format in src/membound/assets/default_model/.

Splits membound's fused parameters back into checkpoint names (qkv_proj -> q/k/v_proj,
gate_up_proj -> gate/up_proj; lm_head is tied to embed_tokens and not stored), writes
model.safetensors (float32), config.json, generation_config.json, tokenizer.json,
tokenizer_config.json and heldout.txt, then reloads the folder with membound's loader to
measure held-out perplexity (metrics.json) and checks transformers gives the same logits.

    python tools/default_model/export.py [--checkpoint build/default_model/final.pt]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil

import numpy as np
import torch
from common import (
    ASSET_DIR,
    CHAT_TEMPLATE,
    CONTEXT_LEN,
    DEFAULT_WORKDIR,
    ENDOFTEXT,
    MAX_POSITION_EMBEDDINGS,
    SPECIAL_TOKENS,
    build_model,
    forward_logits,
    hf_config_dict,
    perplexity,
)
from safetensors.torch import save_file
from tokenizers import Tokenizer

# Stop at <|endoftext|> or <|im_end|>. Suggested sampling: greedy decoding of a model this
# small loops ("import os" over and over); temperature 0.7 with top-k 40 reads better.
GENERATION_CONFIG = {
    "bos_token_id": None,
    "eos_token_id": [0, 2],
    "pad_token_id": 0,
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 40,
}
SLICE_WINDOWS = 8  # the test recomputes perplexity on the first 8 windows


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    cfg = model.config
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to(torch.float32).contiguous()
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if ".qkv_proj." in name:
            q, k, v = t.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=0)
            for piece, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[name.replace("qkv_proj", piece)] = part.contiguous()
        elif ".gate_up_proj." in name:
            gate, up = t.split([cfg.intermediate_size, cfg.intermediate_size], dim=0)
            out[name.replace("gate_up_proj", "gate_proj")] = gate.contiguous()
            out[name.replace("gate_up_proj", "up_proj")] = up.contiguous()
        else:
            out[name] = t
    return out


def tokenizer_config() -> dict:
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "chat_template": CHAT_TEMPLATE,
    }


def write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export_files(model: torch.nn.Module, workdir: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    weights = os.path.join(out, "model.safetensors")
    save_file(hf_state_dict(model), weights, metadata={"format": "pt"})
    os.chmod(weights, 0o644)
    write_json(os.path.join(out, "config.json"), hf_config_dict())
    write_json(os.path.join(out, "generation_config.json"), GENERATION_CONFIG)
    write_json(os.path.join(out, "tokenizer_config.json"), tokenizer_config())
    shutil.copyfile(os.path.join(workdir, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    shutil.copyfile(os.path.join(workdir, "heldout.txt"), os.path.join(out, "heldout.txt"))


def measure(out: str, workdir: str, train_state: dict) -> dict:
    """Reload the exported folder the way membound serves it and score heldout.txt."""
    from membound.config import ModelConfig
    from membound.worker.weight_loader import load_model

    cfg = ModelConfig.from_hf(out)
    model = load_model(cfg, out, dtype=torch.float32, device=torch.device("cpu"))
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "heldout.txt"), encoding="utf-8", newline="") as f:
        text = f.read()
    ids = tok.encode(text).ids
    expected = np.fromfile(os.path.join(workdir, "heldout.bin"), dtype=np.uint16).tolist()
    assert ids == expected, "heldout.txt does not tokenise to the stream held out in training"
    full = perplexity(model, ids)
    part = perplexity(model, ids[: SLICE_WINDOWS * CONTEXT_LEN])
    manifest = json.load(open(os.path.join(workdir, "manifest.json"), encoding="utf-8"))
    return {
        "heldout_perplexity": round(full["perplexity"], 4),
        "heldout_mean_nll_nats": round(full["mean_nll_nats"], 6),
        "method": {
            "data": "heldout.txt in this folder (documents joined as doc + '<|endoftext|>')",
            "data_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "tokenization": "tokenizer.json encode(whole file); special tokens in the text map "
            "to their ids; no BOS or other tokens added",
            "total_tokens": len(ids),
            "window_length": CONTEXT_LEN,
            "windowing": "non-overlapping windows ids[i*L:(i+1)*L] from the start; the last "
            f"{len(ids) % CONTEXT_LEN} tokens (len % L) are dropped; no stride, no context carried "
            "between windows",
            "first_token_of_window_scored": False,
            "scored_per_window": CONTEXT_LEN - 1,
            "num_windows": full["num_windows"],
            "tokens_scored": full["tokens_scored"],
            "formula": "exp(sum of NLL of tokens 1..L-1 of every window given the earlier "
            "tokens of that window / tokens_scored), natural log, float32 weights and logits",
        },
        "slice": {
            "description": f"the first {SLICE_WINDOWS} windows only (tokens 0..{SLICE_WINDOWS * CONTEXT_LEN - 1}), same method",
            "num_windows": part["num_windows"],
            "tokens_scored": part["tokens_scored"],
            "perplexity": round(part["perplexity"], 4),
        },
        "heldout_split": {
            "rule": manifest["heldout_rule"],
            "documents": manifest["heldout"]["documents"],
            "keys": manifest["heldout"]["keys"],
            "python": manifest["python"],
        },
        "training": {
            "steps": train_state["step"],
            "tokens": logged_tokens(os.path.join(workdir, "train_log.csv"), train_state["step"]),
            "wall_seconds": round(train_state["elapsed"], 1),
            "train_split_tokens": int(os.path.getsize(os.path.join(workdir, "train.bin")) // 2),
        },
    }


def logged_tokens(path: str, step: int) -> int:
    """Training tokens consumed by ``step``, as train.py logged them."""
    with open(path, newline="") as f:
        return next(int(r["tokens"]) for r in csv.DictReader(f) if int(r["step"]) == step)


def check_transformers(out: str, model: torch.nn.Module) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(3, 8192, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = forward_logits(model, ids)
        theirs = hf(ids).logits
    return float((ours - theirs).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument("--checkpoint", default=None, help="default: <workdir>/final.pt")
    parser.add_argument("--out", default=ASSET_DIR)
    args = parser.parse_args()
    state = torch.load(
        args.checkpoint or os.path.join(args.workdir, "final.pt"), weights_only=False
    )
    model = build_model()
    model.load_state_dict(state["model"])
    model.eval()
    export_files(model, args.workdir, args.out)
    diff = check_transformers(args.out, model)
    print(f"max |logit diff| membound vs transformers: {diff:.2e}")
    assert diff < 1e-4, diff
    metrics = measure(args.out, args.workdir, state)
    metrics["transformers_max_abs_logit_diff"] = float(f"{diff:.3g}")
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "heldout_split"}, indent=1))


if __name__ == "__main__":
    main()
