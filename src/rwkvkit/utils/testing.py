"""One way to measure numerical error, shared by tests and benchmarks.

``rel_rms(ref, out) = ||out - ref||_2 / ||ref||_2`` (FLA's ``assert_close`` metric), with an absolute
shortcut for references that are (nearly) zero, and NaN/inf checks: a NaN never passes.
"""

from __future__ import annotations

import torch


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Relative RMS error of ``out`` against ``ref`` (computed in fp64)."""
    ref64, out64 = ref.detach().double(), out.detach().double()
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float, atol: float = 0.0) -> None:
    """Assert ``rel_rms(ref, out) <= ratio`` (or max abs error ``<= atol``), with a readable report."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: output has NaN/inf"
    assert torch.isfinite(ref).all(), f"{name}: reference has NaN/inf"
    err = rel_rms(ref, out)
    max_abs = (out.detach().double() - ref.detach().double()).abs().max().item() if ref.numel() else 0.0
    assert err <= ratio or max_abs <= atol, (
        f"{name}: relative RMS error {err:.3e} > {ratio:.1e} (max |diff| {max_abs:.3e}, atol {atol:.1e})"
    )
