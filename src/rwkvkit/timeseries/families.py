"""Builders of the forecaster families named in :mod:`rwkvkit.registry`.

Every builder takes the same keywords, ``lookback``, ``horizon``, ``seed`` and config fields, so one
call builds any forecaster; each uses what its model has (a ``fields`` entry wins over the keyword
of the same name):

* ``rimer``, ``timer``: ``lookback`` and ``seed`` (their initialisation); any horizon is forecast
  autoregressively, so ``horizon`` is not part of the model;
* ``dlinear``: ``lookback`` and ``horizon`` (one linear map per horizon);
* ``naive``: only its config fields (``period``).
"""

from __future__ import annotations

from typing import Any

from rwkvkit.timeseries.baselines import DLinear, DLinearConfig, SeasonalNaive, SeasonalNaiveConfig
from rwkvkit.timeseries.models import Rimer, RimerConfig, Timer, TimerConfig


def rimer(*, lookback: int | None = None, horizon: int | None = None, seed: int = 0, **fields: Any) -> Rimer:
    return Rimer(RimerConfig.from_dict(_with(fields, lookback=lookback)), seed=seed)


def timer(*, lookback: int | None = None, horizon: int | None = None, seed: int = 0, **fields: Any) -> Timer:
    return Timer(TimerConfig.from_dict(_with(fields, lookback=lookback)), seed=seed)


def dlinear(
    *, lookback: int | None = None, horizon: int | None = None, seed: int = 0, **fields: Any
) -> DLinear:
    return DLinear(DLinearConfig.from_dict(_with(fields, lookback=lookback, horizon=horizon)))


def naive(
    *, lookback: int | None = None, horizon: int | None = None, seed: int = 0, **fields: Any
) -> SeasonalNaive:
    return SeasonalNaive(SeasonalNaiveConfig.from_dict(fields))


def _with(fields: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """``fields`` with the given defaults (None: not given) under them."""
    return {**{k: v for k, v in defaults.items() if v is not None}, **fields}
