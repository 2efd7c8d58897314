"""What the tests of the ``triton`` tiers share (tests/ops/test_wkv7_triton.py, test_wkv6_triton.py).

Import it before anything that imports the kernels: without CUDA it turns Triton's interpreter on
(``TRITON_INTERPRET=1``), which Triton reads when a kernel is decorated, and it skips the importing
module where Triton is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated (first use)
pytest.importorskip("triton", reason="the triton tier needs the triton package (a dev dependency)")

from rwkvkit.utils.testing import rel_rms  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error of ``x`` against ``ref`` (:func:`rwkvkit.utils.testing.rel_rms`)."""
    return rel_rms(ref, x)


def grads(fn, xs, S0, seed=1, cotangent_dtype=None):
    """Outputs and the gradients of every input (the initial state included) of a random loss on both
    outputs. The output's cotangent is rounded to ``cotangent_dtype`` (default: the output's dtype),
    so an fp64 reference can see exactly the cotangent a bf16 run sees."""
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    s = None if S0 is None else S0.detach().clone().requires_grad_()
    y, S = fn(*leaves, s)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g).to(cotangent_dtype or y.dtype).to(y)
    gS = torch.randn(S.shape, generator=g).to(S)
    wrt = leaves + ([s] if s is not None else [])
    return y, S, torch.autograd.grad((y * gy).sum() + (S * gS).sum(), wrt)


@pytest.fixture(autouse=True)
def widest_column_blocks(monkeypatch):
    """Keep the widest column blocks at the tests' small B * H (autouse where imported): the GPU
    heuristic would narrow them to 8, which only multiplies the interpreter's programs (several
    blocks are tested on their own)."""
    from rwkvkit.ops import _triton

    monkeypatch.setattr(_triton, "MIN_PROGRAMS", 0)
