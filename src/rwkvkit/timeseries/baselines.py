"""Forecasting baselines: DLinear and the seasonal-naive (and persistence) forecasters.

Both follow the forecaster interface of :mod:`rwkvkit.timeseries` (see ``models.py``):

- ``forecast(x, horizon)``: ``x`` is a float tensor ``[B, L, M]`` (batch, lookback, variables), the result
  is ``[B, horizon, M]``;
- ``loss(x, y)``: the MSE of ``forecast(x, y.shape[1])`` against ``y [B, H, M]`` (a scalar tensor);
- ``config``: a frozen, keyword-only dataclass with ``to_dict()`` / ``from_dict()``;
- ``num_params()``.

Bad input (wrong rank, wrong lookback, a horizon a direct model was not trained for, non-finite values)
raises :class:`rwkvkit.errors.InputError`; bad options raise :class:`rwkvkit.errors.ConfigError`.

**DLinear** (Zeng, Chen, Zhang, Xu, "Are Transformers Effective for Time Series Forecasting?", AAAI 2023):
each input series is split by a moving average into a trend and a seasonal remainder, and one linear
layer along time (``L -> H``) is applied to each part; the forecast is their sum. The layers are shared by
all variables (channel independence) unless ``individual=True``.

**SeasonalNaive** repeats the last observed season: ``y[t] = x[L - period + (t mod period)]``. With
``period=1`` it is the *persistence* (last-value) forecaster:
``SeasonalNaive(SeasonalNaiveConfig(period=1))`` (there is no separate class).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.timeseries.models import config_from_dict

__all__ = [
    "DLinear",
    "DLinearConfig",
    "SeasonalNaive",
    "SeasonalNaiveConfig",
    "decompose",
    "moving_average",
]


# ---- shared helpers ------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(cls_name: str, name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{cls_name}.{name} must be an integer >= {minimum}, got {value!r}")


def _check_series(
    op: str,
    x: Any,
    *,
    lookback: int | None = None,
    min_lookback: int | None = None,
    n_vars: int = 0,
    what: str = "x",
) -> None:
    """Raise InputError unless ``x`` is a finite float tensor ``[B, L, M]`` of the required sizes."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{op}: {what} must be a torch.Tensor [B, L, M], got {type(x).__name__}")
    if x.dim() != 3:
        hint = " (add a batch dimension with x.unsqueeze(0), or a variable one with x.unsqueeze(-1))"
        raise InputError(f"{op}: {what} must have shape [B, L, M], got shape {tuple(x.shape)}{hint}")
    if not torch.is_floating_point(x):
        raise InputError(f"{op}: {what} must be a float tensor, got dtype {x.dtype} (convert with .float())")
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise InputError(f"{op}: {what} has an empty dimension, shape {tuple(x.shape)}")
    if lookback is not None and x.shape[1] != lookback:
        raise InputError(
            f"{op}: {what} has {x.shape[1]} time steps but the model was built for lookback={lookback}; "
            f"pass the last {lookback} steps (x[:, -{lookback}:]) "
            f"or build the model with lookback={x.shape[1]}"
        )
    if min_lookback is not None and x.shape[1] < min_lookback:
        raise InputError(
            f"{op}: {what} has {x.shape[1]} time steps, fewer than the period {min_lookback}; "
            f"pass at least {min_lookback} steps or use a shorter period"
        )
    if n_vars and x.shape[2] != n_vars:
        raise InputError(
            f"{op}: {what} has {x.shape[2]} variables but the model was built for n_vars={n_vars}; "
            "pass the same variables it was built for"
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(
            f"{op}: {what} has {bad} non-finite values (NaN or inf); fill or drop missing values first"
        )


def _check_horizon(op: str, horizon: Any, max_horizon: int | None = None) -> None:
    if not _is_int(horizon) or horizon < 1:
        raise InputError(f"{op}: horizon must be an integer >= 1, got {horizon!r}")
    if max_horizon is not None and horizon > max_horizon:
        raise InputError(
            f"{op}: horizon {horizon} is longer than the {max_horizon} steps this direct model was built "
            f"for; train a model with DLinearConfig(horizon={horizon}) (or longer) instead"
        )


def _check_target(op: str, x: torch.Tensor, y: Any) -> None:
    _check_series(op, y, what="y")
    if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2]:
        raise InputError(
            f"{op}: y {tuple(y.shape)} does not match x {tuple(x.shape)}; expected y of shape "
            f"[{x.shape[0]}, H, {x.shape[2]}] (same batch and variables as x)"
        )


# ---- series decomposition ------------------------------------------------------------------------


def moving_average(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Centred moving average of ``x [B, L, M]`` along time, same length ``L``.

    As the DLinear / Autoformer code: the series is padded by repeating its first value
    ``(kernel_size - 1) // 2`` times at the front and its last value as many times at the end, then
    averaged over windows of ``kernel_size`` with stride 1. ``kernel_size`` must be odd (an even one would
    shorten the series by one step). ``kernel_size=1`` returns ``x``.
    """
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    if kernel_size == 1:
        return x
    half = (kernel_size - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, half, -1), x, x[:, -1:].expand(-1, half, -1)], dim=1)
    # avg_pool1d pools the last dimension: [B, M, L + 2 half] -> [B, M, L]
    trend = F.avg_pool1d(padded.transpose(1, 2), kernel_size=kernel_size, stride=1)
    return trend.transpose(1, 2)


def decompose(x: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(seasonal, trend)`` of ``x [B, L, M]``: ``trend = moving_average(x)``, ``seasonal = x - trend``."""
    trend = moving_average(x, kernel_size)
    return x - trend, trend


# ---- DLinear -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DLinearConfig:
    """Sizes and options of a :class:`DLinear` forecaster."""

    lookback: int  # L: input steps
    horizon: int  # H: steps predicted (a direct model: forecast() serves any horizon <= H)
    kernel_size: int = 25  # moving-average window of the decomposition (odd; the paper's 25)
    individual: bool = False  # one pair of linear layers per variable instead of one shared pair
    n_vars: int = 0  # M; required (>= 1) with individual=True; 0 = any number of variables

    def __post_init__(self) -> None:
        _check_int("DLinearConfig", "lookback", self.lookback, 1)
        _check_int("DLinearConfig", "horizon", self.horizon, 1)
        _check_int("DLinearConfig", "kernel_size", self.kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ConfigError(
                f"DLinearConfig.kernel_size must be odd (the centred moving average keeps the length only "
                f"for odd windows), got {self.kernel_size}; "
                f"use {self.kernel_size + 1} or {self.kernel_size - 1}"
            )
        if not isinstance(self.individual, bool):
            raise ConfigError(f"DLinearConfig.individual must be True or False, got {self.individual!r}")
        _check_int("DLinearConfig", "n_vars", self.n_vars, 0)
        if self.individual and self.n_vars < 1:
            raise ConfigError("DLinearConfig.individual=True needs the number of variables: set n_vars >= 1")

    def replace(self, **changes) -> DLinearConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DLinearConfig:
        return config_from_dict(cls, d)


class DLinear(nn.Module):
    """DLinear: moving-average decomposition, then one linear map along time per component.

    ``forecast(x)[b, :, m] = W_s[v] @ seasonal[b, :, m] + b_s[v] + W_t[v] @ trend[b, :, m] + b_t[v]``
    with ``v = m`` when ``individual`` else ``v = 0`` (the same maps for every variable).

    Parameters: ``weight_seasonal`` / ``weight_trend`` ``[V, H, L]`` and ``bias_seasonal`` /
    ``bias_trend`` ``[V, H]``, ``V = n_vars`` if ``individual`` else 1.

    Initialisation: both weight matrices are ``1 / L`` everywhere, as in the paper's code. The biases are
    **zero** here, whereas the paper's code keeps ``nn.Linear``'s default uniform bias; with zero biases an
    untrained DLinear forecasts the mean of the input window at every step (seasonal + trend = x), a
    deterministic and sensible starting point.
    """

    def __init__(self, config: DLinearConfig):
        super().__init__()
        if not isinstance(config, DLinearConfig):
            raise ConfigError(f"DLinear expects a DLinearConfig, got {type(config).__name__}")
        self.config = config
        L, H = config.lookback, config.horizon
        V = config.n_vars if config.individual else 1
        self.weight_seasonal = nn.Parameter(torch.full((V, H, L), 1.0 / L))
        self.weight_trend = nn.Parameter(torch.full((V, H, L), 1.0 / L))
        self.bias_seasonal = nn.Parameter(torch.zeros(V, H))
        self.bias_trend = nn.Parameter(torch.zeros(V, H))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seasonal, trend)`` of ``x [B, L, M]`` with this model's ``kernel_size``."""
        return decompose(x, self.config.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The full-horizon forecast ``[B, config.horizon, M]`` (no input checks; use :meth:`forecast`)."""
        x = x.to(self.weight_trend.dtype)
        seasonal, trend = self.decompose(x)
        # [B, L, M] x [V, H, L] -> [B, H, M]; V is 1 (broadcast over m) or M (one map per m)
        if self.config.individual:
            out = torch.einsum("blm,mhl->bhm", seasonal, self.weight_seasonal)
            out = out + torch.einsum("blm,mhl->bhm", trend, self.weight_trend)
            return out + (self.bias_seasonal + self.bias_trend).t()
        out = torch.einsum("blm,hl->bhm", seasonal, self.weight_seasonal[0])
        out = out + torch.einsum("blm,hl->bhm", trend, self.weight_trend[0])
        return out + (self.bias_seasonal[0] + self.bias_trend[0])[:, None]

    def forecast(self, x: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
        """``[B, horizon, M]``: the first ``horizon`` steps (default ``config.horizon``) of the forecast."""
        cfg = self.config
        horizon = cfg.horizon if horizon is None else horizon
        _check_horizon("DLinear.forecast", horizon, cfg.horizon)
        _check_series("DLinear.forecast", x, lookback=cfg.lookback, n_vars=cfg.n_vars)
        out = self(x)
        return out if horizon == cfg.horizon else out[:, :horizon]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE of ``forecast(x, H)`` against ``y [B, H, M]`` (``H <= config.horizon``)."""
        _check_series("DLinear.loss", x, lookback=self.config.lookback, n_vars=self.config.n_vars)
        _check_target("DLinear.loss", x, y)
        pred = self.forecast(x, y.shape[1])
        return F.mse_loss(pred, y.to(pred.dtype))


# ---- seasonal naive / persistence ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SeasonalNaiveConfig:
    """The season length of a :class:`SeasonalNaive` forecaster (``period=1``: persistence)."""

    period: int = 24  # 24 for hourly data with a daily cycle

    def __post_init__(self) -> None:
        _check_int("SeasonalNaiveConfig", "period", self.period, 1)

    def replace(self, **changes) -> SeasonalNaiveConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SeasonalNaiveConfig:
        return config_from_dict(cls, d)


class SeasonalNaive(nn.Module):
    """Repeat the last observed season: ``y[t] = x[L - period + (t mod period)]`` for ``t = 0 .. H-1``.

    No parameters (``num_params() == 0``) and nothing to train; any lookback ``L >= period`` and any
    horizon work. ``SeasonalNaive(SeasonalNaiveConfig(period=1))`` is the persistence forecaster
    (every step repeats the last observed value). :meth:`loss` returns the MSE, which carries no gradient.
    """

    def __init__(self, config: SeasonalNaiveConfig | None = None):
        super().__init__()
        config = SeasonalNaiveConfig() if config is None else config
        if not isinstance(config, SeasonalNaiveConfig):
            raise ConfigError(f"SeasonalNaive expects a SeasonalNaiveConfig, got {type(config).__name__}")
        self.config = config

    def num_params(self) -> int:
        return 0

    def forward(self, x: torch.Tensor, horizon: int) -> torch.Tensor:
        """The forecast ``[B, horizon, M]`` (no input checks; use :meth:`forecast`)."""
        p, L = self.config.period, x.shape[1]
        idx = L - p + torch.arange(horizon, device=x.device) % p
        return x.index_select(1, idx)

    def forecast(self, x: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
        """``[B, horizon, M]``; ``horizon`` defaults to one period."""
        horizon = self.config.period if horizon is None else horizon
        _check_horizon("SeasonalNaive.forecast", horizon)
        _check_series("SeasonalNaive.forecast", x, min_lookback=self.config.period)
        return self(x, horizon)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE of ``forecast(x, H)`` against ``y [B, H, M]`` (no gradient: there is nothing to train)."""
        _check_series("SeasonalNaive.loss", x, min_lookback=self.config.period)
        _check_target("SeasonalNaive.loss", x, y)
        pred = self.forecast(x, y.shape[1])
        return F.mse_loss(pred, y.to(pred.dtype))
