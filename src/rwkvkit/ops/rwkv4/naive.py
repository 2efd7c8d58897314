"""WKV-4 reference: the stable recurrence of docs/rwkv4.md#stable-recurrence, a loop over T.

Per channel, with decay ``w < 0`` (``w = -exp(time_decay)``) and bonus ``u`` (``time_first``)::

    wkv_t = ( sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t )
          / ( sum_{i<t} e^{(t-1-i) w + k_i}     + e^{u + k_t} )

The state is ``(aa, bb, pp)`` with ``a = aa e^pp`` and ``b = bb e^pp`` the numerator and denominator
sums: ``pp`` tracks the running maximum exponent, so nothing overflows however large ``k`` gets.
State layout: one tensor ``[B, 3, C]`` holding ``aa, bb, pp`` (fp32). A fresh state is
``aa = bb = 0, pp = -1e30`` (the official package's value).
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import compute_dtype, no_autocast

PP_INIT = -1e30  # "minus infinity" of the official package's fresh state


def wkv4_initial_state(B: int, C: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """A fresh WKV-4 state ``[B, 3, C]``: ``aa = bb = 0``, ``pp = -1e30``."""
    s = torch.zeros(B, 3, C, device=device, dtype=dtype)
    s[:, 2] = PP_INIT
    return s


def check_wkv4(op: str, w, u, k, v, state) -> None:
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"{op}: k and v must both be [B, T, C], got {tuple(k.shape)} and {tuple(v.shape)}")
    B, T, C = k.shape
    if w.shape[-1] != C or u.shape[-1] != C or w.numel() != C or u.numel() != C:
        raise ValueError(
            f"{op}: w and u must have C = {C} elements, got {tuple(w.shape)} and {tuple(u.shape)}"
        )
    if state is not None and tuple(state.shape) != (B, 3, C):
        raise ValueError(f"{op}: `state` has shape {tuple(state.shape)}, expected [B, 3, C] = {(B, 3, C)}")


@no_autocast
def wkv4_naive(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-4.

    Args:
        w: ``[C]`` decay exponent per step, negative (``-exp(time_decay)``).
        u: ``[C]`` bonus of the current token (``time_first``, raw).
        k, v: ``[B, T, C]``.
        state: ``[B, 3, C]`` = ``(aa, bb, pp)``, or None for a fresh state.

    Returns:
        ``(wkv [B, T, C] in v.dtype, state [B, 3, C] in fp32 / fp64)``.
    """
    check_wkv4("wkv4_naive", w, u, k, v, state)
    B, T, C = k.shape
    dt = compute_dtype(w, u, k, v)
    out_dtype = v.dtype
    w, u, k, v = (x.to(dt) for x in (w.reshape(C), u.reshape(C), k, v))
    if state is None:
        state = wkv4_initial_state(B, C, device=k.device, dtype=dt)
    aa, bb, pp = state.to(dt).unbind(1)
    out = []
    # unbind, not x[:, t]: indexing in a loop makes autograd write a full-size gradient per step
    for kt, vt in zip(k.unbind(1), v.unbind(1)):
        ww = u + kt
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        out.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        ww = w + pp
        p = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - p), torch.exp(kt - p)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    y = torch.stack(out, dim=1) if out else v.new_zeros(B, 0, C)
    return y.to(out_dtype), torch.stack([aa, bb, pp], dim=1)
