"""Train the default model with membound's own Llama code (membound.models.llama) on CPU.

Random windows of CONTEXT_LEN + 1 tokens from train.bin (the held-out split is never read
here except to report held-out loss on a fixed 24-window subset). AdamW (betas 0.9/0.95,
weight decay 0.1 on matrices), bf16 autocast with float32 master weights, gradient clipping
at 1.0. The learning-rate schedule is a function of *elapsed wall time* over the budget
(linear warm-up for the first 3%, cosine to 10% of the peak), because the machine's shared
cores make throughput unpredictable. Checkpoints every two minutes; rerunning resumes.

    nohup python tools/default_model/train.py --budget-s 1440 > build/default_model/train.out &
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import CONTEXT_LEN, DEFAULT_WORKDIR, build_model, forward_logits, heldout_windows


def lr_at(progress: float, peak: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    if progress < warmup:
        return peak * max(progress, 1e-3) / warmup
    p = min(1.0, (progress - warmup) / (1.0 - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p)))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


@torch.no_grad()
def subset_loss(model: torch.nn.Module, windows: torch.Tensor) -> float:
    logits = forward_logits(model, windows).float()
    return float(
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    )


def save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument("--budget-s", type=float, default=1440.0, help="wall-clock training budget")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every-s", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_ids = torch.from_numpy(
        np.fromfile(os.path.join(args.workdir, "train.bin"), dtype=np.uint16).astype(np.int64)
    )
    held = heldout_windows(np.fromfile(os.path.join(args.workdir, "heldout.bin"), dtype=np.uint16))
    eval_windows = held[torch.linspace(0, held.shape[0] - 1, 24).long()]
    model = build_model(max_positions=CONTEXT_LEN)
    opt = make_optimizer(model, args.lr)
    gen = torch.Generator().manual_seed(0)
    ckpt_path = os.path.join(args.workdir, "ckpt.pt")
    log_path = os.path.join(args.workdir, "train_log.csv")
    step, elapsed = 0, 0.0
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed at step {step}, {elapsed:.0f}s")
    rows = [["step", "elapsed_s", "tokens", "lr", "train_loss", "heldout_loss"]]
    if step and os.path.exists(log_path):  # drop rows logged after the checkpoint
        with open(log_path, newline="") as f:
            rows += [r for r in list(csv.reader(f))[1:] if int(r[0]) <= step]
    log_file = open(log_path, "w", newline="")
    log = csv.writer(log_file)
    log.writerows(rows)
    tokens_per_step = args.batch * CONTEXT_LEN
    t0 = time.time() - elapsed
    last_eval = last_ckpt = -1e9
    while True:
        elapsed = time.time() - t0
        if elapsed - last_eval >= args.eval_every_s or elapsed >= args.budget_s:
            model.eval()
            held_loss = subset_loss(model, eval_windows)
            model.train()
            last_eval = elapsed
            log.writerow(
                [step, f"{elapsed:.1f}", step * tokens_per_step, "", "", f"{held_loss:.4f}"]
            )
            print(f"step {step} {elapsed:.0f}s held-out loss {held_loss:.4f}", flush=True)
        if elapsed >= args.budget_s:
            break
        lr = lr_at(elapsed / args.budget_s, args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, train_ids.numel() - CONTEXT_LEN - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s : s + CONTEXT_LEN + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = forward_logits(model, batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        log.writerow(
            [
                step,
                f"{time.time() - t0:.1f}",
                step * tokens_per_step,
                f"{lr:.6g}",
                f"{loss.item():.4f}",
                "",
            ]
        )
        if step % 20 == 0:
            log_file.flush()
            rate = step * tokens_per_step / max(time.time() - t0, 1e-9)
            print(
                f"step {step} {elapsed:.0f}s loss {loss.item():.4f} lr {lr:.2e} {rate:.0f} tok/s",
                flush=True,
            )
        if elapsed - last_ckpt >= 120:
            last_ckpt = elapsed
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
            save(ckpt_path, {**state, "step": step, "elapsed": time.time() - t0})
    log_file.close()
    save(
        os.path.join(args.workdir, "final.pt"),
        {"model": model.state_dict(), "step": step, "elapsed": elapsed},
    )
    print(f"done: {step} steps, {step * tokens_per_step:,} tokens, {elapsed:.0f}s", flush=True)


if __name__ == "__main__":
    main()
