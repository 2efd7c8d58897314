"""RRWKV-style retrospection (reconstruction, ``layers/rrwkv.py``): the parallel form equals the
recurrent one over any split, the read follows its definition and is causal, zero retrospection is
RWKV-4 exactly, and the state grows by one medium per segment."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.layers.rrwkv import RRWKV4TimeMix, RRWKVState
from rwkvkit.layers.rwkv4 import RWKV4TimeMix
from rwkvkit.models.mixers import MixerLM, MixerLMConfig, state_bytes
from rwkvkit.models.rwkv.config import RWKVConfig

C, A = 8, 6  # dim_att != n_embd, so a mixed-up width fails


def make_layer(s: int, dtype=torch.float64, seed: int = 0) -> RRWKV4TimeMix:
    """Every parameter random (V_m and W_o included, so the retrospection is live)."""
    cfg = RWKVConfig(version="4", n_layer=1, n_embd=C, vocab_size=1, dim_att=A)
    layer = RRWKV4TimeMix(cfg, 0, medium_every=s).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) * 2 - 1)
        layer.time_mix_k.copy_(torch.rand(C, generator=g, dtype=dtype))  # lerp weights in [0, 1]
        layer.time_mix_v.copy_(torch.rand(C, generator=g, dtype=dtype))
        layer.time_mix_r.copy_(torch.rand(C, generator=g, dtype=dtype))
    return layer


def run_pieces(layer: RRWKV4TimeMix, x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, RRWKVState]:
    outs, state, t = [], None, 0
    for n in sizes:
        out, state = layer(x[:, t : t + n], state)
        outs.append(out)
        t += n
    assert t == x.shape[1]
    return torch.cat(outs, dim=1), state


def retrospection_naive(layer: RRWKV4TimeMix, x: torch.Tensor) -> torch.Tensor:
    """The read ``ret_t`` straight from the definition: a loop over t and over the segments j with
    ``(j + 1) s - 1 <= t``, each mean taken from x itself."""
    s = layer.medium_every
    B, T, _ = x.shape
    out = torch.zeros(B, T, A, dtype=x.dtype)
    for t in range(T):
        js = [j for j in range((t + 1) // s + 1) if (j + 1) * s - 1 <= t]
        if not js:
            continue
        m = torch.stack([layer.squeeze_medium(x[:, j * s : (j + 1) * s].mean(1)) for j in js], 1)  # [B, J, A]
        q = layer.medium_query(x[:, t])  # [B, A]
        a = torch.softmax((m @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(A), dim=-1)  # [B, J]
        out[:, t] = (a.unsqueeze(-1) * layer.medium_value(m)).sum(1)
    return out


@pytest.mark.parametrize(
    ("s", "sizes"),
    [
        (5, [1] * 37),
        (5, [3, 7, 1, 12, 14]),
        (5, [4, 1, 32]),
        (1, [2, 5, 30]),
        (16, [9, 1, 27]),
        (40, [20, 17]),
    ],
)
def test_parallel_equals_recurrent_in_any_pieces(s, sizes):
    layer = make_layer(s)
    x = torch.randn(2, 37, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full, st = layer(x)
    split, st2 = run_pieces(layer, x, sizes)
    # fp64: chunked vs one-token WKV-4 and a different summation order of the segment sums
    torch.testing.assert_close(split, full, rtol=1e-10, atol=1e-10)
    for name in ("shift", "wkv", "seg_sum", "mediums"):
        torch.testing.assert_close(getattr(st2, name), getattr(st, name), rtol=1e-10, atol=1e-10)
    assert st.seg_len == st2.seg_len == 37 % s
    assert st.mediums.shape == (2, 37 // s, A)


def test_read_matches_its_definition():
    s = 4
    layer = make_layer(s)
    x = torch.randn(2, 19, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with_read, _ = layer(x)
    with torch.no_grad():
        layer.medium_value.weight.zero_()
    without, _ = layer(x)
    # out = W_o (r * (wkv + ret)) is linear in ret: the difference is W_o (r * ret)
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    r = torch.sigmoid(layer.receptance(x * layer.time_mix_r + prev * (1 - layer.time_mix_r)))
    with torch.no_grad():
        layer.medium_value.weight.copy_(make_layer(s).medium_value.weight)
        ret = retrospection_naive(layer, x)
    torch.testing.assert_close(with_read - without, layer.output(r * ret), rtol=1e-10, atol=1e-10)  # fp64
    assert torch.equal(ret[:, : s - 1], torch.zeros_like(ret[:, : s - 1]))  # no complete segment yet


def test_causal():
    layer = make_layer(4, dtype=torch.float32)
    x = torch.randn(1, 30, C, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:, 13:] += 1.0  # change the future from token 13 on (inside segment 3 = tokens 12..15)
    a, b = layer(x)[0], layer(y)[0]
    assert torch.equal(a[:, :13], b[:, :13])  # fp32, identical arithmetic on the same prefix
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_zero_retrospection_is_rwkv4_exactly():
    layer = make_layer(3, dtype=torch.float32)
    with torch.no_grad():
        layer.medium_value.weight.zero_()
    cfg = RWKVConfig(version="4", n_layer=1, n_embd=C, vocab_size=1, dim_att=A)
    base = RWKV4TimeMix(cfg, 0)
    missing, unexpected = base.load_state_dict(layer.state_dict(), strict=False)
    assert not missing and all(k.startswith("medium") for k in unexpected)
    x = torch.randn(2, 20, C, generator=torch.Generator().manual_seed(4))
    st = layer.initial_state(2)
    ref, shift, wkv, _ = base(x, st.shift, st.wkv)
    out, st = layer(x)
    assert torch.equal(out, ref) and torch.equal(st.wkv, wkv) and torch.equal(st.shift, shift)


def test_fresh_rrwkv4_model_equals_rwkv4_model():
    kw = dict(vocab_size=16, d_model=16, mlp=True, medium_every=4)
    a = MixerLM(MixerLMConfig(layers=("rwkv4", "rwkv4"), **kw), seed=1)
    b = MixerLM(MixerLMConfig(layers=("rrwkv4", "rrwkv4"), **kw), seed=1)
    x = torch.randint(0, 16, (2, 21), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a(x), b(x))  # V_m = 0 and every shared parameter drawn identically


def test_gradients_reach_the_medium_parameters():
    layer = make_layer(4, dtype=torch.float32)
    x = torch.randn(2, 13, C, generator=torch.Generator().manual_seed(6))
    layer(x)[0].square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # a fresh layer (V_m = 0) learns V_m first; the rest of the medium path follows once V_m moves
    layer = make_layer(4, dtype=torch.float32)
    layer.reset_retrospection_(torch.Generator().manual_seed(0))
    layer(x)[0].square().sum().backward()
    assert layer.medium_value.weight.grad.abs().sum() > 0
    assert layer.medium.weight.grad.abs().sum() == 0


def test_errors():
    cfg = RWKVConfig(version="4", n_layer=1, n_embd=C, vocab_size=1, dim_att=A)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="medium_every"):
            RRWKV4TimeMix(cfg, 0, medium_every=bad)
    with pytest.raises(ConfigError, match="medium_every"):
        MixerLMConfig(vocab_size=8, layers=("rrwkv4",), medium_every=0)
    layer = make_layer(4, dtype=torch.float32)
    with pytest.raises(InputError, match=r"\[batch, time >= 1, 8\]"):
        layer(torch.randn(2, 5, C + 1))
    with pytest.raises(InputError, match=r"\[batch, time >= 1, 8\]"):
        layer(torch.randn(2, 0, C))
    _, st = layer(torch.randn(2, 5, C))
    with pytest.raises(InputError, match="state.shift"):
        layer(torch.randn(3, 5, C), st)
    _, st8 = make_layer(8, dtype=torch.float32)(torch.randn(2, 6, C))
    with pytest.raises(InputError, match="seg_len 6"):
        layer(torch.randn(2, 1, C), st8)


def test_state_grows_one_medium_per_segment():
    cfg = MixerLMConfig(vocab_size=8, d_model=64, layers=("rrwkv4", "rrwkv4"), medium_every=16)
    rwkv4 = state_bytes(cfg.replace(layers=("rwkv4", "rwkv4")), 1000)
    assert state_bytes(cfg, 15) == rwkv4 + 2 * (64 + 1) * 4  # + the segment sum and its length
    for T in (16, 100, 1024):
        assert state_bytes(cfg, T) - state_bytes(cfg, 0) == 2 * (T // 16) * 64 * 4  # fp32 mediums
    # the formula counts what the layer holds (one layer, batch 1, C = A = 64)
    layer = RRWKV4TimeMix(RWKVConfig(version="4", n_layer=1, n_embd=64, vocab_size=1), 0, medium_every=16)
    _, st = layer(torch.randn(1, 100, 64))
    assert st.num_values * 4 == state_bytes(cfg.replace(layers=("rrwkv4",)), 100)
