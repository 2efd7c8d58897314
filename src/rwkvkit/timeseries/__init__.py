"""Time-series forecasting: Rimer (RWKV-7 blocks), Timer (attention), DLinear and seasonal naive, the
standard long-term forecasting protocol, and the seed repository's leaky protocol for comparison.

    from rwkvkit.timeseries import Rimer, RimerConfig, load_csv, prepare
    data = prepare(load_csv("ETTh1.csv"), lookback=336, horizon=96)   # chronological split, train-only scaler
    model = Rimer(RimerConfig(lookback=336))
    x, y = data["train"].batch(range(32))
    model.loss(x, y).backward()
    forecast = model.forecast(x, horizon=720)                          # [32, 720, 7], autoregressive

Command line: ``rwkvkit forecast train|eval|predict`` (see :mod:`rwkvkit.timeseries.train`).
"""

from rwkvkit.timeseries.baselines import DLinear, DLinearConfig, SeasonalNaive, SeasonalNaiveConfig
from rwkvkit.timeseries.data import (
    NextStepDataset,
    Scaler,
    Series,
    Split,
    WindowDataset,
    chronological_next_step,
    chronological_windows,
    leaky_protocol,
    load_csv,
    prepare,
    shuffled_row_split,
    standard_split,
)
from rwkvkit.timeseries.models import RevIN, Rimer, RimerConfig, Timer, TimerConfig
from rwkvkit.timeseries.predict import predict
from rwkvkit.timeseries.train import (
    ForecastTrainConfig,
    build_model,
    evaluate,
    evaluate_model,
    load_checkpoint,
    train,
)

__all__ = [
    "DLinear", "DLinearConfig", "ForecastTrainConfig", "NextStepDataset", "RevIN", "Rimer", "RimerConfig",
    "Scaler", "SeasonalNaive", "SeasonalNaiveConfig", "Series", "Split", "Timer", "TimerConfig",
    "WindowDataset", "build_model", "chronological_next_step", "chronological_windows", "evaluate",
    "evaluate_model", "leaky_protocol", "load_checkpoint", "load_csv", "predict", "prepare", "train",
    "shuffled_row_split", "standard_split",
]  # fmt: skip
