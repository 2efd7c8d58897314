"""DLinear and seasonal-naive baselines (rwkvkit.timeseries.baselines)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.timeseries.baselines import (
    DLinear,
    DLinearConfig,
    SeasonalNaive,
    SeasonalNaiveConfig,
    decompose,
    moving_average,
)

# ---- data ----------------------------------------------------------------------------------------


def linear_trends(n: int, L: int, H: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` lines ``a t + b`` (random slope and offset), split into ``[n, L, 1]`` and ``[n, H, 1]``."""
    a = torch.randn(n, 1, 1, generator=gen)
    b = torch.randn(n, 1, 1, generator=gen)
    t = torch.arange(L + H, dtype=torch.float32)[None, :, None] / (L + H)
    s = 3 * a * t + b
    return s[:, :L], s[:, L:]


def sinusoids(n: int, L: int, H: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of two sinusoids (periods 8 and 12) with random amplitudes and phases."""
    t = torch.arange(L + H, dtype=torch.float32)[None, :, None]
    s = torch.zeros(n, L + H, 1)
    for period in (8.0, 12.0):
        amp = 0.5 + torch.rand(n, 1, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
        s = s + amp * torch.sin(2 * math.pi * t / period + phase)
    return s[:, :L], s[:, L:]


def train(model: DLinear, x: torch.Tensor, y: torch.Tensor, steps: int = 200, lr: float = 1e-2) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        opt.step()
    return loss.item()


# ---- moving average ------------------------------------------------------------------------------


def numpy_moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Direct computation: mean over t-h .. t+h with indices clamped to the series (replicate padding)."""
    B, L, M = x.shape
    h = (k - 1) // 2
    out = np.zeros_like(x, dtype=np.float64)
    for t in range(L):
        idx = np.clip(np.arange(t - h, t + h + 1), 0, L - 1)
        out[:, t] = x[:, idx].astype(np.float64).mean(axis=1)
    return out


@pytest.mark.parametrize("k", [1, 3, 5, 7, 25])
def test_moving_average_matches_numpy(k):
    x = torch.randn(2, 10, 3, dtype=torch.float64)  # L=10 < 25: padding dominates for k=25
    got = moving_average(x, k)
    assert got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), numpy_moving_average(x.numpy(), k), rtol=0, atol=1e-12)


def test_moving_average_edges_by_hand():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)[None, :, None]
    got = moving_average(x, 5)[0, :, 0].tolist()
    # front pad [1, 1], end pad [16, 16]
    want = [
        (1 + 1 + 1 + 2 + 4) / 5,
        (1 + 1 + 2 + 4 + 8) / 5,
        (1 + 2 + 4 + 8 + 16) / 5,
        (2 + 4 + 8 + 16 + 16) / 5,
        (4 + 8 + 16 + 16 + 16) / 5,
    ]
    assert got == pytest.approx(want, abs=1e-12)
    seasonal, trend = decompose(x, 5)
    torch.testing.assert_close(seasonal + trend, x)
    torch.testing.assert_close(trend[0, :, 0], torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("k", [0, 2, 24, -3])
def test_moving_average_rejects_bad_kernel(k):
    with pytest.raises(ConfigError, match="kernel_size"):
        moving_average(torch.randn(1, 8, 1), k)


# ---- DLinear -------------------------------------------------------------------------------------


def test_dlinear_shapes_params_and_init_forecasts_window_mean():
    cfg = DLinearConfig(lookback=16, horizon=4, kernel_size=5)
    m = DLinear(cfg)
    assert m.num_params() == 2 * (4 * 16 + 4)
    x = torch.randn(3, 16, 2)
    out = m.forecast(x)
    assert out.shape == (3, 4, 2)
    # weights 1/L and zero biases: seasonal + trend = x, so the untrained forecast is the window mean
    torch.testing.assert_close(out, x.mean(dim=1, keepdim=True).expand(-1, 4, -1), atol=1e-6, rtol=0)
    # channel independence: the same map for every variable, variables do not mix
    x2 = x.clone()
    x2[:, :, 1] += 5.0
    torch.testing.assert_close(m.forecast(x2)[:, :, 0], out[:, :, 0])


def test_dlinear_fits_linear_trend():
    gen = torch.Generator().manual_seed(1)
    L, H = 48, 12
    x, y = linear_trends(64, L, H, gen)
    xt, yt = linear_trends(64, L, H, gen)
    m = DLinear(DLinearConfig(lookback=L, horizon=H, kernel_size=9))
    before = m.loss(xt, yt).item()
    train(m, x, y)
    after = m.loss(xt, yt).item()
    assert before > 0.3  # the window mean is a poor forecast of a line
    assert after < 1e-4, (before, after)  # linear extrapolation is exactly representable


def test_dlinear_fits_sum_of_sinusoids():
    gen = torch.Generator().manual_seed(2)
    L, H = 48, 12
    x, y = sinusoids(64, L, H, gen)
    xt, yt = sinusoids(64, L, H, gen)
    m = DLinear(DLinearConfig(lookback=L, horizon=H, kernel_size=9))
    before = m.loss(xt, yt).item()
    train(m, x, y)
    after = m.loss(xt, yt).item()
    assert before > 0.3
    assert after < 1e-3, (before, after)  # sinusoids of fixed periods obey a linear recurrence


def test_dlinear_individual_has_per_variable_weights():
    gen = torch.Generator().manual_seed(3)
    L, H = 48, 12
    x0, y0 = linear_trends(64, L, H, gen)
    x1, y1 = sinusoids(64, L, H, gen)
    x, y = torch.cat([x0, x1], dim=2), torch.cat([y0, y1], dim=2)
    cfg = DLinearConfig(lookback=L, horizon=H, kernel_size=9, individual=True, n_vars=2)
    m = DLinear(cfg)
    assert m.weight_seasonal.shape == (2, H, L) and m.weight_trend.shape == (2, H, L)
    assert m.bias_seasonal.shape == (2, H)
    assert m.num_params() == 2 * DLinear(cfg.replace(individual=False, n_vars=0)).num_params()
    torch.testing.assert_close(m.weight_seasonal[0], m.weight_seasonal[1])  # same init
    assert train(m, x, y) < 1e-3
    for w in (m.weight_seasonal, m.weight_trend):
        assert (w[0] - w[1]).abs().max().item() > 1e-2
    # variable 1's forecast uses only variable 1's input and its own weights
    x2 = x.clone()
    x2[:, :, 0] = torch.randn(64, L)
    torch.testing.assert_close(m.forecast(x2)[:, :, 1], m.forecast(x)[:, :, 1])
    single = DLinear(cfg.replace(individual=False, n_vars=0))
    with torch.no_grad():
        single.weight_seasonal.copy_(m.weight_seasonal[1:])
        single.weight_trend.copy_(m.weight_trend[1:])
        single.bias_seasonal.copy_(m.bias_seasonal[1:])
        single.bias_trend.copy_(m.bias_trend[1:])
    torch.testing.assert_close(single.forecast(x[:, :, 1:]), m.forecast(x)[:, :, 1:])


def test_dlinear_forecast_slicing_and_loss():
    m = DLinear(DLinearConfig(lookback=20, horizon=6, kernel_size=7))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(2, 20, 3)
    full = m.forecast(x)
    assert full.shape == (2, 6, 3)
    torch.testing.assert_close(m.forecast(x, 6), full)
    for h in (1, 3, 5):
        torch.testing.assert_close(m.forecast(x, h), full[:, :h])
    y = torch.randn(2, 3, 3)
    torch.testing.assert_close(m.loss(x, y), ((full[:, :3] - y) ** 2).mean())
    assert m.loss(x, y).requires_grad


def test_dlinear_input_errors():
    m = DLinear(DLinearConfig(lookback=12, horizon=4, kernel_size=3))
    x = torch.randn(2, 12, 1)
    with pytest.raises(InputError, match=r"horizon 5 .*horizon=5"):
        m.forecast(x, 5)
    with pytest.raises(InputError, match="horizon"):
        m.forecast(x, 0)
    with pytest.raises(InputError, match="horizon"):
        m.loss(x, torch.randn(2, 5, 1))
    with pytest.raises(InputError, match="lookback=12"):
        m.forecast(torch.randn(2, 11, 1))
    with pytest.raises(InputError, match=r"\[B, L, M\]"):
        m.forecast(torch.randn(12, 1))
    bad = x.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        m.forecast(bad)
    with pytest.raises(InputError, match="non-finite"):
        m.loss(x, torch.full((2, 4, 1), float("inf")))
    with pytest.raises(InputError, match="float"):
        m.forecast(torch.ones(2, 12, 1, dtype=torch.long))
    with pytest.raises(InputError, match="does not match"):
        m.loss(x, torch.randn(2, 4, 2))
    ind = DLinear(DLinearConfig(lookback=12, horizon=4, kernel_size=3, individual=True, n_vars=2))
    with pytest.raises(InputError, match="n_vars=2"):
        ind.forecast(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lookback=10, horizon=2, kernel_size=4), "odd"),
        (dict(lookback=10, horizon=2, kernel_size=0), "kernel_size"),
        (dict(lookback=0, horizon=2), "lookback"),
        (dict(lookback=10, horizon=0), "horizon"),
        (dict(lookback=10, horizon=2, individual=True), "n_vars"),
        (dict(lookback=10, horizon=2, n_vars=-1), "n_vars"),
        (dict(lookback=10.0, horizon=2), "lookback"),
    ],
)
def test_dlinear_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DLinearConfig(**kwargs)


def test_dlinear_config_round_trip():
    cfg = DLinearConfig(lookback=96, horizon=24, kernel_size=13, individual=True, n_vars=7)
    d = cfg.to_dict()
    assert d == dict(lookback=96, horizon=24, kernel_size=13, individual=True, n_vars=7)
    assert DLinearConfig.from_dict(d) == cfg
    assert DLinear(DLinearConfig.from_dict(d)).config == cfg
    with pytest.raises(ConfigError, match="bogus"):
        DLinearConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.horizon = 3
    with pytest.raises(TypeError):
        DLinearConfig(96, 24)  # keyword-only


# ---- seasonal naive ------------------------------------------------------------------------------


def test_seasonal_naive_exact_on_periodic_series():
    period, L, H = 24, 96, 60
    season = torch.randn(3, period, 2, dtype=torch.float64)  # one random season per sample, tiled
    s = season.repeat(1, (L + H) // period + 1, 1)[:, : L + H]
    x, y = s[:, :L], s[:, L:]
    m = SeasonalNaive(SeasonalNaiveConfig(period=period))
    assert m.num_params() == 0
    assert torch.equal(m.forecast(x, H), y)
    loss = m.loss(x, y)
    assert loss.item() == 0.0 and not loss.requires_grad
    assert m.forecast(x).shape == (3, period, 2)  # default horizon: one period


def test_seasonal_naive_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[None, :, None]
    m = SeasonalNaive(SeasonalNaiveConfig(period=2))
    assert m.forecast(x, 5)[0, :, 0].tolist() == [4.0, 5.0, 4.0, 5.0, 4.0]
    m3 = SeasonalNaive(SeasonalNaiveConfig(period=3))
    assert m3.forecast(x, 4)[0, :, 0].tolist() == [3.0, 4.0, 5.0, 3.0]
    y = torch.tensor([4.0, 6.0, 5.0])[None, :, None]  # forecast [4, 5, 4]: errors 0, 1, 1
    assert m.loss(x, y).item() == pytest.approx(2 / 3)


def test_persistence_is_period_one():
    x = torch.tensor([[[1.0, -1.0], [2.0, -2.0], [7.0, 9.0]]])
    m = SeasonalNaive(SeasonalNaiveConfig(period=1))
    out = m.forecast(x, 4)
    assert out.shape == (1, 4, 2)
    assert out[0].tolist() == [[7.0, 9.0]] * 4


def test_seasonal_naive_errors_and_config():
    m = SeasonalNaive(SeasonalNaiveConfig(period=24))
    with pytest.raises(InputError, match="period 24"):
        m.forecast(torch.randn(1, 23, 1), 5)
    with pytest.raises(InputError, match="non-finite"):
        m.forecast(torch.tensor([[[float("nan")]] * 24]), 5)
    with pytest.raises(InputError, match="horizon"):
        m.forecast(torch.randn(1, 24, 1), 0)
    with pytest.raises(InputError, match=r"\[B, L, M\]"):
        m.forecast(torch.randn(24), 3)
    with pytest.raises(ConfigError, match="period"):
        SeasonalNaiveConfig(period=0)
    assert SeasonalNaive().config.period == 24
    cfg = SeasonalNaiveConfig(period=168)
    assert SeasonalNaiveConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="lookback"):
        SeasonalNaiveConfig.from_dict({"period": 24, "lookback": 96})
