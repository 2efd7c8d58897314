"""MixerLM (the recall / state-tracking test bed): every mixer trains end to end, is causal, and its
state accounting follows the documented formulas."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import ConfigError
from rwkvkit.models.mixers import MIXERS, MixerLM, MixerLMConfig, state_bytes


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_mixer_is_causal_and_differentiable(mixer):
    model = MixerLM(MixerLMConfig(vocab_size=32, d_model=32, layers=("conv", mixer), window=4))
    x = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 32  # change the future
    a, b = model(x), model(y)
    assert a.shape == (2, 12, 32)
    # fp32; earlier positions must not move (chunked forms: identical arithmetic on the same prefix)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=1e-4, atol=1e-5)
    a.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_state_bytes_formulas():
    cfg = MixerLMConfig(vocab_size=8, d_model=64, layers=("attention",))
    assert state_bytes(cfg, 128) == 2 * 128 * 64 * 4  # the KV cache grows with the sequence
    cfg = cfg.replace(layers=("swa",), window=32)
    assert state_bytes(cfg, 128) == 2 * 32 * 64 * 4 and state_bytes(cfg, 16) == 2 * 16 * 64 * 4
    cfg = cfg.replace(layers=("based",), feature_dim=16, n_heads=1)
    assert state_bytes(cfg, 128) == (16 * 17 // 2 + 16 + 1) * (64 + 1) * 4  # 153 features x (V + 1)
    cfg = cfg.replace(layers=("rwkv7",), head_size=16)
    assert state_bytes(cfg, 128) == (4 * 16 * 16 + 64) * 4  # H N^2 + the token shift
    assert state_bytes(cfg.replace(layers=("rwkv4",)), 10**6) == 4 * 64 * 4  # constant in length


def test_bad_mixer_names():
    with pytest.raises(ConfigError, match="unknown mixers"):
        MixerLMConfig(vocab_size=8, layers=("conv", "mamba"))


def test_seeded_and_leaves_the_global_generator_alone():
    cfg = MixerLMConfig(vocab_size=16, d_model=16, layers=("conv", "based"), feature_dim=4)
    before = torch.random.get_rng_state()
    a, b = MixerLM(cfg, seed=3), MixerLM(cfg, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(MixerLM(cfg, seed=4).emb.weight, a.emb.weight)


def test_rotary_scores_depend_on_relative_position_only():
    from rwkvkit.models.mixers import rotary

    g = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64),
        torch.randn(1, 1, 1, 8, dtype=torch.float64, generator=g),
    )
    T = 12
    rq, rk = rotary(q.expand(1, 1, T, 8)), rotary(k.expand(1, 1, T, 8))
    scores = rq[0, 0] @ rk[0, 0].T  # [T, T]: query position i, key position j
    # fp64: the score of the same pair depends on i - j only (to rounding), and position 0 is unrotated
    torch.testing.assert_close(scores[5, 2], scores[9, 6], rtol=0, atol=1e-12)
    torch.testing.assert_close(scores[3, 3], (q * k).sum(), rtol=0, atol=1e-12)
    assert not torch.allclose(scores[5, 2], scores[5, 3])


def test_rope_attention_sees_order():
    # without positions one causal attention layer is blind to the order of the prefix; with RoPE not
    cfg = MixerLMConfig(vocab_size=16, d_model=32, layers=("attention",), n_heads=2)
    x = torch.tensor([[1, 2, 3, 4]])
    y = torch.tensor([[2, 1, 3, 4]])  # same prefix multiset at the last position
    plain = MixerLM(cfg)
    torch.testing.assert_close(plain(x)[:, -1], plain(y)[:, -1], rtol=1e-5, atol=1e-6)  # fp32
    rope = MixerLM(cfg.replace(rope=True))
    assert (rope(x)[:, -1] - rope(y)[:, -1]).abs().max() > 1e-3
