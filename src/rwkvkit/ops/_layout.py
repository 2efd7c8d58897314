"""The one tensor layout of rwkvkit's operators, and the shape checks shared by all of them.

Every sequence operator takes per-head inputs of shape ``[B, T, H, K]`` (batch, time, heads, key
dimension; values ``[B, T, H, V]``) and a recurrent state of shape ``[B, H, K, V]``: key-major,
``S[b, h, key, value]``. Official RWKV-7 code stores the transpose (``[H, V, K]``); conversion
happens only at the format boundary (``rwkvkit.state``).

This module imports nothing but torch; errors are plain ``ValueError`` with a message that names
the offending tensor and the expected shape.
"""

from __future__ import annotations

import functools

import torch


def check_same_shape(op: str, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    """All ``tensors`` must have the shape of the first one."""
    ref = tensors[0].shape
    for name, t in zip(names, tensors):
        if t.shape != ref:
            raise ValueError(
                f"{op}: `{name}` has shape {tuple(t.shape)} but `{names[0]}` has {tuple(ref)}; "
                "all per-key inputs must share the layout [B, T, H, K]"
            )


def check_bthk(op: str, name: str, x: torch.Tensor, ndim: int = 4) -> None:
    if x.dim() != ndim:
        layout = "[B, T, H, K]" if ndim == 4 else "[B, H, K]"
        raise ValueError(f"{op}: `{name}` must have {ndim} dims {layout}, got shape {tuple(x.shape)}")


def check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int = 4) -> None:
    """Attention-style inputs: ``q, k [B, T, H, K]`` of one shape, ``v [B, T, H, V]`` with the same
    leading dims (``ndim=3``: no ``T``), ``K >= 1``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_bthk(op, name, x, ndim=ndim)
    check_same_shape(op, ("q", "k"), (q, k))
    if v.shape[:-1] != q.shape[:-1]:
        lead = "[B, T, H]" if ndim == 4 else "[B, H]"
        raise ValueError(
            f"{op}: `v` has shape {tuple(v.shape)} but `q` has {tuple(q.shape)}; "
            f"their leading dims {lead} must match"
        )
    if q.shape[-1] < 1:
        raise ValueError(f"{op}: the last dim of `q` and `k` must be >= 1, got shape {tuple(q.shape)}")


def to_chunks(x: torch.Tensor, chunk: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, H, X]`` -> ``[B, H, N, chunk, X]`` in ``dtype``, ``N = ceil(T / chunk)``, zero-padded at
    the end (each chunked operator states why its zero padding is harmless)."""
    B, T, H, X = x.shape
    N = -(-T // chunk)
    x = x.to(dtype)
    if N * chunk != T:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, N * chunk - T))
    return x.view(B, N, chunk, H, X).permute(0, 3, 1, 2, 4)


def check_v(op: str, r: torch.Tensor, v: torch.Tensor) -> None:
    """``v`` is ``[B, T, H, V]`` with ``r``'s ``B, T, H`` (kernels index ``v`` by ``r``'s shape)."""
    if v.shape[:3] != r.shape[:3]:
        raise ValueError(
            f"{op}: `v` has shape {tuple(v.shape)}, expected [B, T, H, V] with B, T, H = {tuple(r.shape[:3])}"
        )


def check_state(op: str, state: torch.Tensor | None, B: int, H: int, K: int, V: int) -> None:
    if state is None:
        return
    if tuple(state.shape) != (B, H, K, V):
        raise ValueError(
            f"{op}: `state` has shape {tuple(state.shape)}, expected [B, H, K, V] = {(B, H, K, V)}"
        )


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 unless an input is fp64: the recurrence always accumulates in at least fp32."""
    dt = torch.float32
    for t in tensors:
        dt = torch.promote_types(dt, t.dtype)
    return dt


def no_autocast(fn):
    """Run an operator with autocast off: the recurrences are fp32 by design.

    Under ``torch.autocast`` (bf16 training) the matrix products inside the chunked forms would
    otherwise be cast to bf16, which the decays near 1 cannot afford ("everything must be in fp32
    because w can be very close to 1", RWKV-LM README). The inputs are cast up inside each op.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is None or not torch.is_autocast_enabled(t.device.type):
            return fn(*args, **kwargs)
        with torch.autocast(t.device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
