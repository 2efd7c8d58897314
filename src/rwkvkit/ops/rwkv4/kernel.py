"""WKV-4 through the sequential C++ recurrence (:mod:`rwkvkit.ops.cpu.wkv_seq`): CPU, forward only."""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import no_autocast
from rwkvkit.ops.cpu import wkv_seq
from rwkvkit.ops.rwkv4.chunk import wkv4_chunk
from rwkvkit.ops.rwkv4.naive import check_wkv4
from rwkvkit.ops.rwkv4.step import wkv4_one_token


@no_autocast
def wkv4_kernel(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-4 (max-tracking form) in C++; the contract of :func:`rwkvkit.ops.wkv4_naive`:
    ``w, u`` with ``C`` elements, ``k, v [B, T, C]``, state ``[B, 3, C]`` = ``(aa, bb, pp)``;
    returns ``(wkv [B, T, C] in v.dtype, state [B, 3, C] fp32)``."""
    op = "wkv4_kernel"
    check_wkv4(op, w, u, k, v, state)
    B, T, C = k.shape
    code = wkv_seq.isa_code(isa)
    ops = wkv_seq.ops_for(w, u, k, v, state)
    if ops is None:
        return (wkv4_one_token if T == 1 else wkv4_chunk)(w, u, k, v, state)
    f32 = wkv_seq.f32
    y, S = ops.wkv4(
        f32(w.reshape(C)), f32(u.reshape(C)), f32(k), f32(v), None if state is None else f32(state), code
    )
    return y.to(v.dtype), S
