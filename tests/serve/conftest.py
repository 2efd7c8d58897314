"""Fixtures of the rwkvkit serve tests."""

from __future__ import annotations

import pytest

import rwkvkit


@pytest.fixture(scope="session")
def lm():
    """The shipped default model (eval mode) and its tokenizer, loaded once for every serve test."""
    model = rwkvkit.load("default")
    model.eval()
    return model, rwkvkit.load_tokenizer("default")
