"""WKV-6 / WKV-5 through the sequential C++ recurrence (:mod:`rwkvkit.ops.cpu.wkv_seq`): CPU, forward
only."""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import no_autocast
from rwkvkit.ops.cpu import wkv_seq
from rwkvkit.ops.rwkv6.chunk import wkv6_chunk
from rwkvkit.ops.rwkv6.naive import check_wkv6
from rwkvkit.ops.rwkv6.step import broadcast_wkv5, wkv6_one_token


@no_autocast
def wkv6_kernel(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-6 (and WKV-5, with a broadcast decay) in C++; the contract of
    :func:`rwkvkit.ops.wkv6_naive`: ``(y [B, T, H, V] in r.dtype, state [B, H, K, V] fp32)``."""
    op = "wkv6_kernel"
    check_wkv6(op, r, log_w, k, v, u, state)
    B, T, H, K = r.shape
    code = wkv_seq.isa_code(isa)
    ops = wkv_seq.ops_for(r, log_w, k, v, u, state)
    if ops is None:
        return (wkv6_one_token if T == 1 else wkv6_chunk)(r, log_w, k, v, u, state)
    f32 = wkv_seq.f32
    y, S = ops.wkv6(*(f32(x) for x in (r, log_w, k, v, u)), None if state is None else f32(state), code)
    return y.to(r.dtype), S


def wkv5_kernel(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-5 in C++: ``log_w`` and ``u`` are ``[H, K]`` or ``[H, 1]``, broadcast as in
    :func:`rwkvkit.ops.wkv5`, then :func:`wkv6_kernel`."""
    log_w, u = broadcast_wkv5("wkv5_kernel", r, log_w, u)
    return wkv6_kernel(r, log_w, k, v, u, state, isa=isa)
