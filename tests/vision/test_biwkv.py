"""Bi-WKV: the linear-time scans against the O(T^2) reference (outputs and every gradient); Q-Shift."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.ops import biwkv, biwkv_naive, qshift
from rwkvkit.utils.testing import assert_close

# Relative RMS error of the linear form against the naive one in the same dtype (the bar).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
NAMES = ("w", "u", "k", "v")


def make_inputs(B, T, C, dtype, k_scale=5.0, w_scale=1.0, seed=0, requires_grad=False):
    """w spans the init range [-5, 3] (times w_scale, whose sign flips it), u ~ N(0, 3), |k| <= 20."""
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-5, 3, C, dtype=torch.float64)[torch.randperm(C, generator=g)] * w_scale
    u = 3 * torch.randn(C, generator=g, dtype=torch.float64)
    k = (k_scale * torch.randn(B, T, C, generator=g, dtype=torch.float64)).clamp(-20, 20)
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    xs = [x.to(dtype) for x in (w, u, k, v)]
    return [x.requires_grad_() for x in xs] if requires_grad else xs


CASES = [
    # (B, T, C, k_scale, w_scale, chunk_size)
    (2, 1, 8, 5.0, 1.0, 64),
    (2, 2, 8, 5.0, -1.0, 64),
    (2, 7, 8, 20.0, 1.0, 3),
    (1, 64, 8, 20.0, -10.0, 64),
    (2, 64, 8, 5.0, 10.0, 16),
    (1, 200, 8, 20.0, 1.0, 64),  # 4 chunks, the last one padded
    (2, 200, 4, 8.0, -10.0, 7),
]


@pytest.mark.parametrize("causal", [False, True], ids=["bi", "causal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,T,C,ks,ws,L", CASES)
def test_linear_matches_naive_forward_and_grads(B, T, C, ks, ws, L, dtype, causal):
    xs = make_inputs(B, T, C, dtype, ks, ws, requires_grad=True)
    do = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1), dtype=dtype)

    def run(fn, **kw):
        o = fn(*xs, causal=causal, **kw)
        return o.detach(), torch.autograd.grad((o * do).sum(), xs)

    o_ref, g_ref = run(biwkv_naive)
    o, grads = run(biwkv, chunk_size=L)
    tol = TOL[dtype]  # fp64 <= 1e-10, fp32 <= 1e-5 relative RMS (measured: ~1e-14 / ~4e-6 worst, dw)
    assert_close("wkv", o_ref, o, tol)
    for name, gr, gl in zip(NAMES, g_ref, grads):
        assert_close(f"d{name}", gr, gl, tol)


def test_naive_matches_definition_loop():
    """The naive tier against the formula written out term by term (fp64, tiny sizes)."""
    w, u, k, v = make_inputs(1, 5, 3, torch.float64, seed=3)
    T = 5
    for causal in (False, True):
        ref = torch.empty(1, T, 3, dtype=torch.float64)
        for t in range(T):
            num = den = 0.0
            for i in range(T if not causal else t + 1):
                e = u / T + k[0, i] if i == t else -(abs(t - i) - 1) * w / T + k[0, i]
                num, den = num + e.exp() * v[0, i], den + e.exp()
            ref[0, t] = num / den
        assert_close("naive", ref, biwkv_naive(w, u, k, v, causal=causal), 1e-12)


def test_long_fp32_stays_finite_and_accurate():
    """T = 4096 (a 1024 px image at patch 16) in fp32 against the fp64 linear form (itself == naive)."""
    for w_scale in (1.0, -10.0):
        w, u, k, v = make_inputs(1, 4096, 8, torch.float64, k_scale=8.0, w_scale=w_scale, seed=2)
        ref = biwkv(w, u, k, v)
        out = biwkv(*(x.float() for x in (w, u, k, v)))
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert_close("T=4096 fp32 vs fp64", ref, out, 1e-4)  # measured ~8e-7


def test_chunk_size_does_not_change_result():
    w, u, k, v = make_inputs(2, 50, 4, torch.float64, k_scale=20.0)
    ref = biwkv(w, u, k, v, chunk_size=64)
    for L in (1, 2, 13, 50, 1000):
        assert_close(f"chunk {L}", ref, biwkv(w, u, k, v, chunk_size=L), 1e-12)


def test_extreme_k_no_overflow():
    """|k| = 80 would overflow a plain exp in fp32; the shifted forms stay finite and agree."""
    w, u, k, v = make_inputs(1, 30, 4, torch.float32)
    k = k.sign() * 80.0
    out, ref = biwkv(w, u, k, v), biwkv_naive(w, u, k, v)
    assert torch.isfinite(out).all()
    assert_close("k=+-80", ref, out, 1e-5)


def test_dtype_and_empty():
    w, u, k, v = make_inputs(1, 6, 4, torch.float32)
    assert biwkv(w, u, k.bfloat16(), v.bfloat16()).dtype == torch.bfloat16
    assert biwkv(w, u, k[:, :0], v[:, :0]).shape == (1, 0, 4)


def test_bad_inputs_raise():
    w, u, k, v = make_inputs(2, 6, 4, torch.float32)
    for fn in (biwkv, biwkv_naive):
        with pytest.raises(ValueError, match=r"`k` must have 3 dims"):
            fn(w, u, k[0], v[0])
        with pytest.raises(ValueError, match=r"`v` has shape"):
            fn(w, u, k, v[:, :3])
        with pytest.raises(ValueError, match=r"`w` must have shape \[C\]"):
            fn(w[:3], u, k, v)
        with pytest.raises(ValueError, match=r"`u` must have shape \[C\]"):
            fn(w, u[None], k, v)
        with pytest.raises(ValueError, match="floating-point"):
            fn(w, u, k.long(), v.long())
    with pytest.raises(ValueError, match="chunk_size"):
        biwkv(w, u, k, v, chunk_size=0)


# ---- Q-Shift -----------------------------------------------------------------------------------------


def test_qshift_hand_made_grid():
    """3 x 4 grid, 8 channels: pixel (y, x) holds 10 y + x in every channel; check each quarter by hand."""
    H, W, C = 3, 4, 8
    ys, xs_ = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    val = (10 * ys + xs_).float()  # [H, W]
    x = val.reshape(1, H * W, 1).expand(1, H * W, C).clone()
    x[..., 1::2] += 100  # odd channels differ, so channel identity is checked too
    out = qshift(x, (H, W)).reshape(H, W, C)
    xg = x.reshape(H, W, C)
    for y in range(H):
        for xx in range(W):
            exp = torch.zeros(C)
            exp[0:2] = xg[y, xx - 1, 0:2] if xx >= 1 else 0  # from the left
            exp[2:4] = xg[y, xx + 1, 2:4] if xx + 1 < W else 0  # from the right
            exp[4:6] = xg[y - 1, xx, 4:6] if y >= 1 else 0  # from above
            exp[6:8] = xg[y + 1, xx, 6:8] if y + 1 < H else 0  # from below
            assert torch.equal(out[y, xx], exp), (y, xx, out[y, xx], exp)
    # explicit corners: top-left has no left / above neighbour, bottom-right no right / below
    assert out[0, 0, 0].item() == 0 and out[0, 0, 4].item() == 0
    assert out[0, 0, 2].item() == 1 and out[0, 0, 6].item() == 10
    assert out[2, 3, 2].item() == 0 and out[2, 3, 6].item() == 0
    assert out[2, 3, 0].item() == 22 and out[2, 3, 4].item() == 13


def test_qshift_shift_gamma_and_rest():
    H, W, C = 4, 5, 10  # g = int(10 / 8) = 1 with gamma 1/8: channels 4.. are untouched
    x = torch.randn(2, H * W, C)
    out = qshift(x, (H, W), shift=2, gamma=1 / 8).reshape(2, H, W, C)
    xg = x.reshape(2, H, W, C)
    assert torch.equal(out[..., 4:], xg[..., 4:])
    assert torch.equal(out[:, :, 2:, 0], xg[:, :, :-2, 0]) and (out[:, :, :2, 0] == 0).all()
    assert torch.equal(out[:, :, :-2, 1], xg[:, :, 2:, 1]) and (out[:, :, -2:, 1] == 0).all()
    assert torch.equal(out[:, 2:, :, 2], xg[:, :-2, :, 2]) and (out[:, :2, :, 2] == 0).all()
    assert torch.equal(out[:, :-2, :, 3], xg[:, 2:, :, 3]) and (out[:, -2:, :, 3] == 0).all()
    assert qshift(x, (H, W), shift=0) is x


def test_qshift_bad_inputs():
    x = torch.randn(1, 12, 8)
    with pytest.raises(ValueError, match="hw"):
        qshift(x, (3, 5))
    with pytest.raises(ValueError, match="3 dims"):
        qshift(x[0], (3, 4))
    with pytest.raises(ValueError, match="gamma"):
        qshift(x, (3, 4), gamma=0.3)
    with pytest.raises(ValueError, match="shift"):
        qshift(x, (3, 4), shift=-1)
