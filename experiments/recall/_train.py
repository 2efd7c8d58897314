"""Shared by the recall experiments: the training loop of a MixerLM on a synthetic task, and the log
of the commands whose results a report cites."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F


def fit_lm(model, inputs: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch: int, lr: float,
           weight_decay: float, seed: int) -> None:  # fmt: skip
    """AdamW with a one-cycle schedule, gradient clipping at 1, cross-entropy over the labels that are
    not -100; one line per epoch with the mean training loss."""
    vocab = model.config.vocab_size
    steps = epochs * math.ceil(len(inputs) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(inputs), generator=g)
        total = 0.0
        for i in range(0, len(inputs), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(
                model(inputs[idx]).reshape(-1, vocab), labels[idx].reshape(-1), ignore_index=-100
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"   epoch {epoch + 1}: loss {total / len(inputs):.3f}", flush=True)
    model.eval()


def log_command(path: Path, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(command + "\n")


def logged_commands(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.is_file() else []
