"""Rimer and Timer: the pipeline (RevIN, channel independence, patches), causality, and the
autoregressive rollout against a full recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix
from rwkvkit.timeseries.models import Rimer, RimerConfig, Timer, TimerConfig

SMALL = {"lookback": 32, "patch_len": 8, "d_model": 32, "n_layers": 2, "dropout": 0.0}


def _models(seed: int = 0):
    rimer = Rimer(RimerConfig(head_size=16, **SMALL), seed=seed)
    timer = Timer(TimerConfig(n_heads=2, **SMALL), seed=seed)
    for m in (rimer, timer):  # the official init zeroes the output projections: perturb every weight
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed + 7)
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return [rimer.eval(), timer.eval()]


def _series(B: int = 3, L: int = 32, M: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L, dtype=torch.float32)
    base = torch.sin(2 * math.pi * t / 12)[None, :, None] * torch.rand(B, 1, M, generator=g) * 3
    return base + torch.randn(B, L, M, generator=g) * 0.3 + torch.randn(B, 1, M, generator=g) * 5


def test_rimer_is_a_stack_of_real_rwkv7_blocks():
    m = Rimer(RimerConfig(**{**SMALL, "n_layers": 3}, head_size=16))
    assert len(m.blocks) == 3
    for b in m.blocks:
        assert isinstance(b.att, RWKV7TimeMix) and isinstance(b.ffn, RWKV7ChannelMix)
    # the official initialisation: output projections start at zero, decays spread per channel
    assert m.blocks[0].att.output.weight.abs().max() == 0
    assert m.blocks[1].att.w0.std() > 0.5


@pytest.mark.parametrize("which", [0, 1], ids=["rimer", "timer"])
def test_rollout_equals_full_recomputation(which):
    """Each generated patch equals what the backbone gives when the look-back and every earlier
    generated patch are fed at once (Rimer: the whole sequence through the chunked WKV; Timer: the
    sliding window it keeps)."""
    model = _models()[which]
    x = _series()
    steps = 5
    y = model.forecast(x, steps * 8)  # [B, 40, M]
    z, mean, std = model._normalize(x)
    seq = model._patches(z)
    ref = []
    with torch.no_grad():
        for _ in range(steps):
            ctx = seq if which == 0 else seq[:, -4:]  # Timer: the last N = 32 / 8 tokens
            nxt = model._forward_train(ctx)[:, -1:]
            ref.append(nxt)
            seq = torch.cat([seq, nxt], dim=1)
    ref = torch.cat(ref, 1).reshape(x.shape[0] * x.shape[2], -1) * std + mean
    ref = ref.reshape(x.shape[0], x.shape[2], -1).transpose(1, 2)
    # fp32: the step form and the chunked form of WKV-7 agree to ~1e-6 relative
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_rimer_state_carries_the_sequence():
    """Running the patches in two pieces and carrying the recurrent state equals one call."""
    model = _models()[0]
    p = torch.randn(4, 9, 8)
    full, _ = model.step(p)
    a, state = model.step(p[:, :5])
    b, _ = model.step(p[:, 5:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1], ids=["rimer", "timer"])
def test_causal_and_horizon_prefixes(which):
    model = _models()[which]
    x = _series()
    long = model.forecast(x, 30)
    short = model.forecast(x, 11)
    torch.testing.assert_close(long[:, :11], short, rtol=0, atol=1e-6)  # same computation, cut earlier
    p = torch.randn(2, 6, 8)
    q = p.clone()
    q[:, 4:] += 10.0  # a change in the future cannot move earlier outputs
    with torch.no_grad():
        a, b = model._forward_train(p), model._forward_train(q)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-5)
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("which", [0, 1], ids=["rimer", "timer"])
def test_revin_makes_forecasts_equivariant_to_scale_and_shift(which):
    model = _models()[which]
    x = _series()
    a, b = 3.5, -20.0
    torch.testing.assert_close(
        model.forecast(a * x + b, 24), a * model.forecast(x, 24) + b, rtol=1e-4, atol=1e-3
    )


def test_channel_independence():
    """Each variable's forecast depends on that variable only."""
    for model in _models():
        x = _series(M=3)
        x2 = x.clone()
        x2[..., 1] = torch.randn_like(x2[..., 1]) * 7
        a, b = model.forecast(x, 16), model.forecast(x2, 16)
        torch.testing.assert_close(a[..., [0, 2]], b[..., [0, 2]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls,cfg", [(Rimer, RimerConfig), (Timer, TimerConfig)], ids=["rimer", "timer"])
def test_loss_trains_on_a_periodic_series(cls, cfg):
    """Next-patch training on a clean periodic signal: the loss falls well below its start."""
    torch.manual_seed(0)
    model = cls(cfg(**SMALL, **({"head_size": 16} if cls is Rimer else {"n_heads": 2})))
    t = torch.arange(2000, dtype=torch.float32)
    s = (torch.sin(2 * math.pi * t / 16) + 0.5 * torch.sin(2 * math.pi * t / 5.3)).unsqueeze(-1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        starts = torch.randint(0, 2000 - 48, (16,), generator=g)
        win = s[starts[:, None] + torch.arange(48)]
        loss = model.loss(win[:, :32], win[:, 32:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5, losses[::10]


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="multiple of patch_len"):
        RimerConfig(lookback=100, patch_len=16)
    with pytest.raises(ConfigError, match="head_size"):
        RimerConfig(d_model=48, head_size=32)
    with pytest.raises(ConfigError, match="unknown RimerConfig fields"):
        RimerConfig.from_dict({"lookback": 96, "heads": 3})
    model = _models()[0]
    with pytest.raises(InputError, match="look-back of 32"):
        model.forecast(torch.zeros(1, 40, 2), 8)
    with pytest.raises(InputError, match="NaN"):
        model.forecast(torch.full((1, 32, 2), float("nan")), 8)
    with pytest.raises(InputError, match="horizon"):
        model.forecast(torch.zeros(1, 32, 2), 0)
    with pytest.raises(InputError, match="multiple of patch_len"):
        model.loss(torch.zeros(1, 32, 2), torch.zeros(1, 12, 2))
    with pytest.raises(InputError, match=r"\[batch, time, variables\]"):
        model.forecast(torch.zeros(32, 2), 8)


def test_loss_scores_the_horizon_patches_by_default():
    """loss_on="horizon" scores only the predictions of the patches after the look-back; "all" scores
    every position. Both equal a direct computation from the backbone's outputs."""
    torch.manual_seed(0)
    x, y = _series(L=32), _series(L=16, seed=1)
    for loss_on in ("horizon", "all"):
        model = Rimer(RimerConfig(head_size=16, **{**SMALL, "loss_on": loss_on}), seed=0)
        B, L, M = x.shape
        _, mean, std = model._normalize(x)
        seq = torch.cat([x, y], 1).transpose(1, 2).reshape(B * M, -1)
        pred = (
            model._forward_train(model._patches((seq - mean) / std)[:, :-1]) * std[..., None]
            + mean[..., None]
        )
        target = model._patches(seq)[:, 1:]
        first = 3 if loss_on == "horizon" else 0  # N = 32 / 8 = 4 look-back patches: outputs 3.. predict y
        expect = ((pred[:, first:] - target[:, first:]) ** 2).mean()
        torch.testing.assert_close(model.loss(x, y), expect, rtol=1e-5, atol=1e-6)


def test_forecast_ignores_dropout_mode():
    model = Rimer(RimerConfig(head_size=16, **{**SMALL, "dropout": 0.5}))
    x = _series()
    a = model.train().forecast(x, 16)
    assert model.training  # the mode is restored
    torch.testing.assert_close(a, model.eval().forecast(x, 16), rtol=0, atol=0)


def test_fused_rollout_equals_the_module_rollout():
    """Generated patches go through the fused C++ block when it is built; the module path (the
    reference) gives the same forecast."""
    from rwkvkit.inference import fused

    model = _models()[0]
    x = _series()
    fast = model.forecast(x, 48)
    model.fused_decode = False
    slow = model.forecast(x, 48)
    # fp32 both ways; the kernel sums in another order: ~1e-6 relative
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    if fused.available():
        assert model._packed() is None  # switched off
        model.fused_decode = True
        assert model._packed() is not None
