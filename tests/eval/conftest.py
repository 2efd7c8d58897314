"""Shared fixtures of the evaluation tests: the shipped default model (fp32) and a hand-written scorer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import rwkvkit

# the shared data folder (LAMBADA) sits beside the project root
SHARED_DATA = Path(
    os.environ.get("RWKVKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
LAMBADA = SHARED_DATA / "eval" / "lambada_test.jsonl"


@pytest.fixture(scope="session")
def model():
    """The default model in fp32, so the fast path and the reference agree to ~1e-6."""
    return rwkvkit.load("default", dtype="fp32")


@pytest.fixture(scope="session")
def tok():
    return rwkvkit.load_tokenizer("default")


@pytest.fixture(scope="session")
def passages() -> list[str]:
    """The first LAMBADA test passages (the shared data set; skipped where it is absent)."""
    if not LAMBADA.is_file():
        pytest.skip(f"{LAMBADA} is not here")
    with LAMBADA.open(encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(7)]


def hand_score(model, ids: list[int], start: int) -> tuple[float, bool]:
    """The reference computation: one plain forward of the model over ``ids`` (no fast path, no
    batching), log_softmax, the sum of ``log p(ids[t] | ids[:t])`` for ``t >= start``, and whether each
    of those tokens is the argmax."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    total, greedy = 0.0, True
    for t in range(start, len(ids)):
        total += float(logp[t - 1, ids[t]])
        greedy &= int(logits[0, t - 1].argmax()) == ids[t]
    return total, greedy
