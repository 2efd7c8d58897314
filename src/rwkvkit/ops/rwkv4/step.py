"""WKV-4 for one token: the decoding form.

Exactly one iteration of the loop in :mod:`rwkvkit.ops.rwkv4.naive` (same operations in the same order),
without the time dimension, so a decoding loop pays no reshapes. Inputs ``k, v: [B, C]``, state
``[B, 3, C]`` = ``(aa, bb, pp)``; the returned state is in the loop's normalisation (``pp`` = the largest
exponent seen), so the step, naive and chunk tiers can be mixed freely along one sequence.
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import compute_dtype, no_autocast
from rwkvkit.ops._tiers import require_one_token
from rwkvkit.ops.rwkv4.naive import check_wkv4, wkv4_initial_state


def _check_step(op: str, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state) -> None:
    if k.dim() != 2 or v.shape != k.shape:
        raise ValueError(f"{op}: k and v must both be [B, C], got {tuple(k.shape)} and {tuple(v.shape)}")
    B, C = k.shape
    if w.shape[-1] != C or u.shape[-1] != C or w.numel() != C or u.numel() != C:
        raise ValueError(
            f"{op}: w and u must have C = {C} elements, got {tuple(w.shape)} and {tuple(u.shape)}"
        )
    if state is not None and tuple(state.shape) != (B, 3, C):
        raise ValueError(f"{op}: `state` has shape {tuple(state.shape)}, expected [B, 3, C] = {(B, 3, C)}")


@no_autocast
def wkv4_step(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One WKV-4 step.

    Args:
        w: ``[C]`` decay exponent per step, negative (``-exp(time_decay)``); any shape with ``C`` elements.
        u: ``[C]`` bonus of the current token (``time_first``).
        k, v: ``[B, C]``, the current token.
        state: ``[B, 3, C]`` = ``(aa, bb, pp)``, or None for a fresh state.

    Returns:
        ``(wkv [B, C] in v.dtype, new state [B, 3, C] in fp32 / fp64)``.
    """
    _check_step("wkv4_step", w, u, k, v, state)
    B, C = k.shape
    dt = compute_dtype(w, u, k, v)
    out_dtype = v.dtype if v.dtype.is_floating_point else dt
    w, u, k, v = (x.to(dt) for x in (w.reshape(C), u.reshape(C), k, v))
    if state is None:
        state = wkv4_initial_state(B, C, device=k.device, dtype=dt)
    aa, bb, pp = state.to(dt).unbind(1)
    # output: the state (exponent pp) plus the current token with its bonus (exponent u + k)
    ww = u + k
    p = torch.maximum(pp, ww)
    e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
    y = (e1 * aa + e2 * v) / (e1 * bb + e2)
    # update: decay the state by e^w, add the current token without bonus; pp stays the largest exponent
    ww = w + pp
    p = torch.maximum(ww, k)
    e1, e2 = torch.exp(ww - p), torch.exp(k - p)
    new_state = torch.stack([e1 * aa + e2 * v, e1 * bb + e2, p], dim=1)
    return y.to(out_dtype), new_state


def wkv4_one_token(w, u, k, v, state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`wkv4_step` in the sequence layout (``k, v [B, 1, C]`` in, ``wkv [B, 1, C]`` out): the
    ``step`` tier of :func:`rwkvkit.ops.wkv4`, and the kernel's fallback for one token."""
    check_wkv4("wkv4", w, u, k, v, state)  # shape errors in terms of [B, T, C] before slicing
    require_one_token("wkv4", k.shape[1], f"k of shape {tuple(k.shape)}")
    y, new_state = wkv4_step(w, u, k[:, 0], v[:, 0], state)
    return y.unsqueeze(1), new_state
