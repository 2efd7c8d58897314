"""Shared fixtures: deterministic seeds, and NaN-poisoned uninitialised memory for operator tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# the shared data folder (tokenizers, LAMBADA, ETT) sits beside the project root
SHARED_DATA = Path(
    os.environ.get("RWKVKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _poison_empty(request, monkeypatch):
    """In tests/ops, torch.empty & co. return NaN-filled memory, so an unwritten output cannot pass."""
    if "tests/ops" not in str(request.node.fspath).replace(os.sep, "/"):
        yield
        return
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty_like(*args, **kwargs):
        t = real_empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield
