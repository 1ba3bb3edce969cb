"""``membound eval``: quality of a (quantized) model on plain text.

    membound eval perplexity MODEL --dataset FILE [--window 1024] [--stride 512]
    membound eval compare MODEL --quantization Q [--dataset FILE]
    membound eval compare QUANTIZED_MODEL --reference FLOAT_MODEL [--dataset FILE]
    membound eval compare MODEL --kv-cache-dtype fp8 [--max-num-batched-tokens 64]

Perplexity slides a window of ``window`` tokens over the text by ``stride`` tokens; every
token after the first is scored exactly once, with as much left context as its window holds
(the first window scores all its tokens, later ones only the ``stride`` new ones; a window
always starts at least one token before its first scored token):

    tokens:    0 1 2 3 4 5 6 7 8 9 ...
    window 0: [0 ........ 7]            scores 1..7
    window 1:     [4 ........ 11]       scores 8..11 (context 4..7)

``compare`` runs the unquantized and the quantized model over the same windows and reports
the mean KL divergence KL(P_float || P_quant) per scored token, top-1 agreement and both
perplexities. With ``--kv-cache-dtype`` it compares KV-cache formats instead, through the
engine with chunked prefill (see eval_kv.py). The engine's CLI registers this with ``add_parser(subparsers)``; standalone:
``python -m membound.entrypoints.eval perplexity MODEL --dataset FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# A few sentences for ``compare`` without --dataset (any text works; this one is ours).
DEFAULT_TEXT = (
    "Decoding a language model is limited by memory bandwidth: every generated token reads "
    "every weight once. Storing the weights in eight or four bits moves fewer bytes per "
    "token, so the same GPU produces tokens faster and holds a larger model. The price is "
    "accuracy, and the way to know how much was paid is to measure it on real text. "
    "This paragraph is short, so the numbers it gives are rough; point --dataset at a few "
    "thousand lines of the text your users send for numbers worth acting on.\n"
) * 4


@dataclass(frozen=True)
class PerplexityResult:
    num_tokens: int  # tokens scored (all but the first)
    nll: float  # mean negative log-likelihood per scored token (nats)
    perplexity: float
    window: int
    stride: int


@dataclass(frozen=True)
class CompareResult:
    num_tokens: int
    kl_divergence: float  # mean KL(P_float || P_quant) per scored token (nats)
    top1_agreement: float  # fraction of positions where both argmaxes agree
    perplexity_float: float
    perplexity_quantized: float
    quantization: str
    window: int
    stride: int


def sliding_windows(num_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first scored position) per window; positions [first, end) are scored."""
    if window < 2 or not (1 <= stride <= window):
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got {window}, {stride}")
    prev_end = 1  # token 0 has no context: never scored
    begin = 0
    while prev_end < num_tokens:
        end = min(begin + window, num_tokens)
        yield begin, end, max(prev_end, begin + 1)
        prev_end = end
        begin = min(begin + stride, end - 1)  # at least one token of context


def window_log_probs(model: Any, ids: Any, first: int, device: Any) -> Any:
    """log P(token t | tokens before t in the window) for scored t: [n_scored, vocab] fp32."""
    import torch

    from membound.layers.attention.metadata import build_attention_metadata

    n = ids.numel()
    md = build_attention_metadata([n], [n], None, 16, device, model.config.sliding_window)
    with torch.inference_mode():
        hidden = model(ids, torch.arange(n, device=device), None, md)  # [n, hidden]
        rows = hidden[first - 1 : n - 1]  # the row before each scored token predicts it
        return torch.log_softmax(model.compute_logits(rows).float(), dim=-1)


def perplexity(
    model: Any, token_ids: Sequence[int], window: int, stride: int, device: Any
) -> PerplexityResult:
    import torch

    ids = torch.tensor(list(token_ids), dtype=torch.int64, device=device)
    if ids.numel() < 2:
        raise ValueError("the dataset has fewer than 2 tokens; nothing to score")
    total, count = 0.0, 0
    for begin, end, first in sliding_windows(ids.numel(), window, stride):
        lp = window_log_probs(model, ids[begin:end], first - begin, device)
        targets = ids[first:end]
        total -= lp.gather(1, targets[:, None]).sum().item()
        count += targets.numel()
    nll = total / count
    return PerplexityResult(count, nll, math.exp(nll), window, stride)


def compare(
    reference: Any, quantized: Any, token_ids: Sequence[int], window: int, stride: int,
    device: Any, quantization: str,
) -> CompareResult:
    import torch

    ids = torch.tensor(list(token_ids), dtype=torch.int64, device=device)
    if ids.numel() < 2:
        raise ValueError("the dataset has fewer than 2 tokens; nothing to score")
    kl = agree = nll_ref = nll_q = 0.0
    count = 0
    for begin, end, first in sliding_windows(ids.numel(), window, stride):
        lp_ref = window_log_probs(reference, ids[begin:end], first - begin, device)
        lp_q = window_log_probs(quantized, ids[begin:end], first - begin, device)
        targets = ids[first:end, None]
        kl += (lp_ref.exp() * (lp_ref - lp_q)).sum().item()
        agree += (lp_ref.argmax(-1) == lp_q.argmax(-1)).sum().item()
        nll_ref -= lp_ref.gather(1, targets).sum().item()
        nll_q -= lp_q.gather(1, targets).sum().item()
        count += targets.shape[0]
    return CompareResult(
        count, kl / count, agree / count, math.exp(nll_ref / count), math.exp(nll_q / count),
        quantization, window, stride,
    )


# ---- loading ----------------------------------------------------------------------------------


def load_for_eval(
    args: argparse.Namespace, quantization: str | None, window: int, path: str | None = None
) -> tuple:
    """(model, tokenizer, device) for the eval options, quantized as asked."""
    import torch

    from membound.engine.engine_args import EngineArgs, torch_dtype
    from membound.engine.tokenizer import Tokenizer
    from membound.worker.weight_loader import load_model

    cfg = EngineArgs(model=path or args.model, dtype=args.dtype, device=args.device,
                     quantization=quantization).create_engine_config()
    if cfg.tokenizer is None:
        raise ValueError(f"{cfg.model} has no tokenizer.json; eval needs one to read text")
    device = torch.device(cfg.device)
    from membound.kernels.contract import select_kernel_ops

    ops = select_kernel_ops(device)  # the backend the engine would pick (Triton on CUDA)
    model = load_model(cfg.model_config, cfg.model, dtype=torch_dtype(cfg.dtype), device=device,
                       max_positions=max(window, 2), seed=cfg.seed, ops=ops)
    return model, Tokenizer.from_pretrained(cfg.tokenizer), device


def _read_text(path: str | None) -> str:
    if path is None:
        return DEFAULT_TEXT
    with open(path, encoding="utf-8") as f:
        return f.read()


def _window(args: argparse.Namespace, model: Any) -> tuple[int, int]:
    window = min(args.window, model.config.max_supported_len)
    return window, min(args.stride or window // 2 or 1, window)


def _tokens(tokenizer: Any, text: str, limit: int | None) -> list[int]:
    ids = tokenizer.encode(text)
    return ids[:limit] if limit else ids


def run_perplexity(args: argparse.Namespace) -> int:
    model, tok, device = load_for_eval(args, args.quantization, args.window)
    window, stride = _window(args, model)
    result = perplexity(model, _tokens(tok, _read_text(args.dataset), args.max_tokens),
                        window, stride, device)
    _report(args, result, f"perplexity {result.perplexity:.4f} over {result.num_tokens} tokens "
            f"(mean NLL {result.nll:.4f} nats; window {window}, stride {stride})")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Both models are held at once: budget memory for the float and the quantized one."""
    if args.kv_cache_dtype is not None:
        return run_kv_compare(args)
    reference, tok, device = load_for_eval(args, None, args.window, args.reference)
    if reference.config.quantization is not None:
        raise ValueError(
            f"{args.reference or args.model} is a quantized checkpoint; pass the float "
            "checkpoint it came from with --reference"
        )
    quantized, _, _ = load_for_eval(args, args.quantization, args.window)
    quant = quantized.config.quantization
    if quant is None:
        raise ValueError("nothing to compare: pass --quantization (fp8, int8, int4, ...)")
    window, stride = _window(args, reference)
    ids = _tokens(tok, _read_text(args.dataset), args.max_tokens)
    result = compare(reference, quantized, ids, window, stride, device, quant.method)
    _report(args, result, (
        f"{quant.method} vs unquantized over {result.num_tokens} tokens: "
        f"KL divergence {result.kl_divergence:.6f} nats/token, top-1 agreement "
        f"{100 * result.top1_agreement:.2f}%, perplexity {result.perplexity_float:.4f} -> "
        f"{result.perplexity_quantized:.4f} (window {window}, stride {stride})"
    ))
    return 0


def run_kv_compare(args: argparse.Namespace) -> int:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.tokenizer import Tokenizer
    from membound.entrypoints.eval_kv import kv_cache_compare

    if args.quantization is not None or args.reference is not None:
        raise ValueError("--kv-cache-dtype compares KV caches of one model; drop "
                         "--quantization / --reference (run them as a separate compare)")
    cfg = EngineArgs(model=args.model, dtype=args.dtype, device=args.device).create_engine_config()
    if cfg.tokenizer is None:
        raise ValueError(f"{cfg.model} has no tokenizer.json; eval needs one to read text")
    ids = _tokens(Tokenizer.from_pretrained(cfg.tokenizer), _read_text(args.dataset),
                  args.max_tokens)  # fmt: skip
    result = kv_cache_compare(
        cfg.model, ids, args.kv_cache_dtype, window=args.window,
        max_num_batched_tokens=args.max_num_batched_tokens, dtype=args.dtype, device=args.device,
    )
    _report(args, result, (
        f"KV cache {result.kv_cache_dtype} vs the model dtype over {result.num_tokens} tokens "
        f"(windows of {result.window}, prefill chunks of {result.max_num_batched_tokens}): "
        f"perplexity {result.perplexity_reference:.4f} -> {result.perplexity_quantized:.4f} "
        f"({100 * result.perplexity_change:+.2f}%), top-1 agreement "
        f"{100 * result.top1_agreement:.2f}%, greedy agreement "
        f"{100 * result.greedy_agreement:.2f}% of {result.greedy_tokens} tokens"
    ))
    return 0


def _report(args: argparse.Namespace, result: Any, line: str) -> None:
    print(json.dumps(asdict(result), indent=2) if args.json else line)


# ---- command line -----------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="checkpoint folder or hub id")
    p.add_argument("--window", type=int, default=1024, help="tokens per window (1024)")
    p.add_argument("--stride", type=int, default=None, help="tokens between windows (window/2)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    p.add_argument("--device", default="auto", help="auto, cuda, cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``eval`` with its ``perplexity`` and ``compare`` modes on ``subparsers``."""
    from membound.config import KV_CACHE_DTYPES, QUANTIZATION_METHODS

    ev = subparsers.add_parser("eval", help="perplexity and quantization quality on text",
                               description=__doc__.split("\n\n")[0] if __doc__ else None)
    modes = ev.add_subparsers(dest="eval_mode", metavar="{perplexity,compare}", required=True)
    ppl = modes.add_parser("perplexity", help="sliding-window perplexity of plain text")
    _add_common(ppl)
    ppl.add_argument("--dataset", required=True, metavar="FILE", help="plain-text file")
    ppl.add_argument("--quantization", default=None, choices=QUANTIZATION_METHODS,
                     help="quantize while loading (default: the checkpoint's own)")
    ppl.set_defaults(func=run_perplexity)
    cmp = modes.add_parser("compare", help="KL divergence and top-1 agreement vs unquantized")
    _add_common(cmp)
    cmp.add_argument("--quantization", default=None, choices=QUANTIZATION_METHODS,
                     help="quantize MODEL while loading (default: MODEL's own quantization)")
    cmp.add_argument("--reference", default=None, metavar="MODEL",
                     help="the float checkpoint, when MODEL is pre-quantized (default: MODEL)")
    cmp.add_argument("--dataset", default=None, metavar="FILE",
                     help="plain-text file (default: a built-in paragraph)")
    cmp.add_argument("--kv-cache-dtype", default=None, choices=KV_CACHE_DTYPES[1:],
                     help="compare this KV cache format against the model dtype's, through "
                     "the engine (chunked prefill reads K/V back from the cache)")
    cmp.add_argument("--max-num-batched-tokens", type=int, default=64,
                     help="prefill chunk size for --kv-cache-dtype (64)")
    cmp.set_defaults(func=run_compare)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="membound")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
