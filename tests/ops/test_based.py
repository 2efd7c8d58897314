"""BASED linear attention: feature map identity; chunk and step against the quadratic reference."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.ops.based import (
    based_chunk,
    based_naive,
    based_state_size,
    based_step,
    feature_size,
    taylor_feature_map,
)
from rwkvkit.utils.testing import assert_close

# Tolerances (relative RMS error against the naive reference, same dtype), from the brief.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])


def make_inputs(B, T, H, D, V, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g, dtype=dtype)
    k = torch.randn(B, T, H, D, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    xs = [q, k, v]
    if requires_grad:
        xs = [x.requires_grad_() for x in xs]
    return xs


def random_state(B, H, D, V, dtype, seed=5):
    """A state that some earlier tokens could have left: sums of phi(k) v^T and phi(k)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, 7, H, D, generator=g, dtype=dtype)
    v = torch.randn(B, 7, H, V, generator=g, dtype=dtype)
    fk = taylor_feature_map(k)
    return torch.einsum("bthf,bthv->bhfv", fk, v), fk.sum(1)


def test_feature_map_identity():
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 5, 16):
        q = torch.randn(3, 4, d, generator=g, dtype=torch.float64)
        k = torch.randn(3, 4, d, generator=g, dtype=torch.float64)
        fq, fk = taylor_feature_map(q), taylor_feature_map(k)
        assert fq.shape == (3, 4, 1 + d + d * d) == (3, 4, feature_size(d))
        s = (q * k).sum(-1)
        expected = 1 + s / math.sqrt(d) + s**2 / (2 * d)
        # fp64 identity phi(q).phi(k) = 1 + q.k/sqrt(d) + (q.k)^2/(2d): exact up to rounding, 1e-12
        assert_close(f"phi(q).phi(k), d={d}", expected, (fq * fk).sum(-1), 1e-12)
    x = torch.tensor([2.0, 3.0], dtype=torch.float64)
    layout = torch.tensor([1, 2 / 2**0.25, 3 / 2**0.25, 4 / 2, 6 / 2, 6 / 2, 9 / 2], dtype=torch.float64)
    assert_close("phi layout [1, x/d^1/4, vec(xx^T)/sqrt(2d)]", layout, taylor_feature_map(x), 1e-15)


def test_naive_matches_explicit_loop():
    """The quadratic reference against a per-position loop straight from the formula (fp64, 1e-12)."""
    q, k, v = make_inputs(1, 9, 2, 3, 4, torch.float64)
    o = based_naive(q, k, v, eps=1e-6)
    for t in range(9):
        s = (q[:, t : t + 1] * k[:, : t + 1]).sum(-1) / math.sqrt(3)  # [B, t + 1, H]
        a = 1 + s + s**2 / 2  # = 1 + q.k/sqrt(d) + (q.k)^2/(2d)
        o_t = (a.unsqueeze(-1) * v[:, : t + 1]).sum(1) / (a.sum(1).unsqueeze(-1) + 1e-6)
        assert_close(f"o[{t}]", o_t, o[:, t], 1e-12)


CASES = [
    # (B, T, H, D, V, chunk_size)
    (1, 1, 1, 4, 4, 16),
    (2, 13, 2, 4, 8, 1),
    (2, 37, 2, 8, 8, 16),
    (1, 70, 3, 4, 6, 16),
    (2, 100, 2, 16, 8, 64),
    (1, 129, 2, 8, 16, 64),
]


@DTYPES
@pytest.mark.parametrize("B,T,H,D,V,C", CASES)
def test_chunk_matches_naive(B, T, H, D, V, C, dtype):
    q, k, v = make_inputs(B, T, H, D, V, dtype)
    o_ref = based_naive(q, k, v)
    o, (kv, z) = based_chunk(q, k, v, chunk_size=C)
    assert o.dtype == dtype and kv.dtype == z.dtype == dtype
    assert kv.shape == (B, H, feature_size(D), V) and z.shape == (B, H, feature_size(D))
    assert_close("o", o_ref, o, TOL[dtype])  # fp64 1e-10, fp32 1e-5 relative RMS
    # the final state is the plain sum over all T tokens (padding masked out)
    fk = taylor_feature_map(k.double())
    assert_close("k_sum", fk.sum(1), z, TOL[dtype])
    assert_close("kv", torch.einsum("bthf,bthv->bhfv", fk, v.double()), kv, TOL[dtype])


@DTYPES
def test_step_loop_matches_naive_and_chunk(dtype):
    B, T, H, D, V = 2, 23, 2, 4, 8
    q, k, v = make_inputs(B, T, H, D, V, dtype)
    o_ref = based_naive(q, k, v)
    _, S_ref = based_chunk(q, k, v, chunk_size=16)
    state, outs = None, []
    for t in range(T):
        o, state = based_step(q[:, t], k[:, t], v[:, t], state)
        outs.append(o)
    assert_close("o", o_ref, torch.stack(outs, 1), TOL[dtype])  # fp64 1e-10, fp32 1e-5
    assert_close("kv", S_ref[0], state[0], TOL[dtype])
    assert_close("k_sum", S_ref[1], state[1], TOL[dtype])


@pytest.mark.parametrize("cut", [1, 16, 23, 49])
def test_chunk_continued_from_state_equals_one_call(cut):
    q, k, v = make_inputs(2, 50, 2, 4, 8, torch.float64)
    S0 = random_state(2, 2, 4, 8, torch.float64)
    o_all, S_all = based_chunk(q, k, v, S0, chunk_size=16)
    o1, S1 = based_chunk(q[:, :cut], k[:, :cut], v[:, :cut], S0, chunk_size=16)
    o2, S2 = based_chunk(q[:, cut:], k[:, cut:], v[:, cut:], S1, chunk_size=16)
    # fp64, same formulas summed in another order: 1e-12 relative RMS
    assert_close("o", o_all, torch.cat([o1, o2], 1), 1e-12)
    assert_close("kv", S_all[0], S2[0], 1e-12)
    assert_close("k_sum", S_all[1], S2[1], 1e-12)


def test_state_means_earlier_tokens():
    """A state built by a prefix acts exactly like that prefix in the naive reference (fp64, 1e-10)."""
    q, k, v = make_inputs(1, 30, 2, 4, 8, torch.float64)
    o_ref = based_naive(q, k, v)
    _, S = based_step(q[:, 0], k[:, 0], v[:, 0])
    _, S = based_chunk(q[:, 1:10], k[:, 1:10], v[:, 1:10], S, chunk_size=4)
    o, _ = based_chunk(q[:, 10:], k[:, 10:], v[:, 10:], S, chunk_size=8)
    assert_close("o", o_ref[:, 10:], o, 1e-10)
    o1, _ = based_step(q[:, 10], k[:, 10], v[:, 10], S)
    assert_close("step o", o_ref[:, 10], o1, 1e-10)


# T >= 2: with one token o = v A / (A + eps), and dq is eps-sized rounding noise
@pytest.mark.parametrize("T,C", [(2, 16), (19, 1), (45, 16), (70, 64)])
def test_chunk_gradients_match_naive(T, C):
    xs = make_inputs(2, T, 2, 4, 6, torch.float64, requires_grad=True)
    do = torch.randn(2, T, 2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g_ref = torch.autograd.grad((based_naive(*xs) * do).sum(), xs)
    g = torch.autograd.grad((based_chunk(*xs, chunk_size=C)[0] * do).sum(), xs)
    for name, gr, gc in zip("qkv", g_ref, g):
        assert_close(f"d{name}", gr, gc, 1e-10)  # fp64: 1e-10 relative RMS


def test_chunk_gradcheck_with_state():
    """Finite differences through every input, the initial state included (torch gradcheck, fp64)."""
    q, k, v = make_inputs(1, 5, 1, 2, 2, torch.float64, requires_grad=True)
    kv, z = (x.detach().requires_grad_() for x in random_state(1, 1, 2, 2, torch.float64))

    def f(q, k, v, kv, z):
        o, (kv1, z1) = based_chunk(q, k, v, (kv, z), chunk_size=2)
        return o, kv1, z1

    assert torch.autograd.gradcheck(f, (q, k, v, kv, z), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_bf16_inputs_accumulate_in_fp32():
    q, k, v = make_inputs(1, 40, 2, 8, 8, torch.float32)
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    o_ref = based_naive(qb.float(), kb.float(), vb.float())
    o, (kv, z) = based_chunk(qb, kb, vb)
    assert o.dtype == torch.bfloat16 and kv.dtype == z.dtype == torch.float32
    assert_close("o", o_ref, o.float(), 1e-2)  # bf16 rounding of the output only (~4e-3)
    o1, S1 = based_step(qb[:, 0], kb[:, 0], vb[:, 0])
    assert o1.dtype == torch.bfloat16 and S1[0].dtype == torch.float32


def test_empty_sequence_keeps_state():
    q, k, v = make_inputs(2, 0, 2, 4, 8, torch.float32)
    S0 = random_state(2, 2, 4, 8, torch.float32)
    o, S = based_chunk(q, k, v, S0)
    assert o.shape == (2, 0, 2, 8)
    assert torch.equal(S[0], S0[0]) and torch.equal(S[1], S0[1])


def test_state_size():
    # BASED's accounting (symmetric features): d(d+1)/2 + d + 1 = 153 features for d = 16
    assert based_state_size(16, 64, 16) == 16 * 65 * 153
    assert based_state_size(16, 64, 16, symmetric=False) == 16 * 65 * 273
    # the stored state of the ops is the non-symmetric count
    _, (kv, z) = based_chunk(*make_inputs(3, 5, 2, 4, 6, torch.float32))
    assert (kv[0].numel() + z[0].numel()) == based_state_size(4, 6, 2, symmetric=False)
    with pytest.raises(ValueError, match="D must be a positive integer"):
        based_state_size(0, 64, 16)


def test_bad_inputs_raise_clear_errors():
    q, k, v = make_inputs(1, 5, 2, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="`k` has shape"):
        based_chunk(q, k[..., :2], v)
    with pytest.raises(ValueError, match="must have 4 dims"):
        based_naive(q[0], k, v)
    with pytest.raises(ValueError, match="`v` has shape .* leading dims"):
        based_chunk(q, k, v[:, :3])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        based_chunk(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        based_naive(q, k, v, eps=-1.0)
    kv, z = random_state(1, 2, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="state `kv` has shape"):
        based_chunk(q, k, v, (kv[..., :3], z))
    with pytest.raises(ValueError, match="state `k_sum` has shape"):
        based_step(q[:, 0], k[:, 0], v[:, 0], (kv, z[..., :3]))
    with pytest.raises(ValueError, match="must be a pair"):
        based_chunk(q, k, v, kv)
    with pytest.raises(ValueError, match="must have 3 dims"):
        based_step(q, k, v)
