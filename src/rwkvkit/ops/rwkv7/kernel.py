"""WKV-7 through the sequential C++ recurrence (:mod:`rwkvkit.ops.cpu.wkv_seq`): CPU, forward only."""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import no_autocast
from rwkvkit.ops.cpu import wkv_seq
from rwkvkit.ops.rwkv7.chunk import wkv7_chunk
from rwkvkit.ops.rwkv7.naive import check_wkv7
from rwkvkit.ops.rwkv7.step import wkv7_one_token


@no_autocast
def wkv7_kernel(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-7 in C++; the contract of :func:`rwkvkit.ops.wkv7_naive`.

    ``(o [B, T, H, V] in r.dtype, state [B, H, K, V] fp32)``. ``isa`` forces an instruction set
    (tests; RuntimeError if the CPU lacks it). Falls back to ``wkv7_step`` / ``wkv7_chunk`` (see
    :mod:`rwkvkit.ops.cpu.wkv_seq`).
    """
    op = "wkv7_kernel"
    check_wkv7(op, r, log_w, k, v, a, b, state)
    T = r.shape[1]
    code = wkv_seq.isa_code(isa)
    ops = wkv_seq.ops_for(r, log_w, k, v, a, b, state)
    if ops is None:
        return (wkv7_one_token if T == 1 else wkv7_chunk)(r, log_w, k, v, a, b, state)
    f32 = wkv_seq.f32
    o, S = ops.wkv7(*(f32(x) for x in (r, log_w, k, v, a, b)), None if state is None else f32(state), code)
    return o.to(r.dtype), S
