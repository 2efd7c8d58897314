"""WKV-7 reference: the RWKV-7 recurrence of docs/rwkv7.md#recurrence, a readable loop over T.

This is the reference every other WKV-7 implementation is tested against (trust chain
naive -> chunk -> step / kernels). It computes in fp32 (fp64 if given fp64 inputs).

Per head, with a key-major state ``S`` of shape ``[K, V]`` (the transpose of the official
``S[value, key]``)::

    sa_t = a_t^T S_{t-1}                                  # [V]
    S_t  = diag(w_t) S_{t-1} + b_t sa_t^T + k_t v_t^T     # w_t = exp(log_w_t), the decay
    o_t  = S_t^T r_t                                      # uses the UPDATED state (no bonus u)

i.e. ``S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T``. RWKV-7 calls it with ``a = -kappa_hat``
and ``b = kappa_hat * a_icl`` (official kernel argument order ``RWKV7_OP(r, w, k, v, -kk, kk*a)``).
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import check_bthk, check_same_shape, check_state, check_v, compute_dtype, no_autocast


def check_wkv7(op: str, r, log_w, k, v, a, b, state) -> None:
    """The sequence tiers' argument check: ``r, log_w, k, a, b`` ``[B, T, H, K]`` of one shape, ``v``
    ``[B, T, H, V]``, ``state`` None or ``[B, H, K, V]``; ValueError naming the tensor otherwise."""
    for name, x in zip("r log_w k v a b".split(), (r, log_w, k, v, a, b)):
        check_bthk(op, name, x)
    check_same_shape(op, ("r", "log_w", "k", "a", "b"), (r, log_w, k, a, b))
    check_v(op, r, v)
    B, _, H, K = r.shape
    check_state(op, state, B, H, K, v.shape[-1])


@no_autocast
def wkv7_naive(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-7.

    Args:
        r, log_w, k, a, b: ``[B, T, H, K]``. ``log_w`` is the natural log of the per-channel decay
            (``<= 0``; RWKV-7 keeps it in ``(-exp(-0.5), 0)``).
        v: ``[B, T, H, V]``.
        state: optional initial state ``[B, H, K, V]`` (zeros if None).

    Returns:
        ``(o, state)``: ``o`` of shape ``[B, T, H, V]`` in ``r.dtype``; the final state
        ``[B, H, K, V]`` in the compute dtype (fp32, or fp64 for fp64 inputs).
    """
    check_wkv7("wkv7_naive", r, log_w, k, v, a, b, state)
    B, T, H, K = r.shape
    V = v.shape[-1]
    dt = compute_dtype(r, log_w, k, v, a, b)
    out_dtype = r.dtype
    r, log_w, k, v, a, b = (x.to(dt) for x in (r, log_w, k, v, a, b))
    S = r.new_zeros(B, H, K, V) if state is None else state.to(dt)
    w = torch.exp(log_w)
    outs = []
    # unbind, not x[:, t]: indexing in a loop makes autograd write a full-size gradient per step
    steps = zip(*(x.unbind(1) for x in (r, w, k, v, a, b)))
    for r_t, w_t, k_t, v_t, a_t, b_t in steps:
        sa = torch.einsum("bhk,bhkv->bhv", a_t, S)  # a^T S, from the OLD state
        S = S * w_t[..., None] + b_t[..., None] * sa[:, :, None, :] + k_t[..., None] * v_t[:, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", r_t, S))
    o = torch.stack(outs, dim=1) if outs else r.new_zeros(B, 0, H, V)
    return o.to(out_dtype), S
