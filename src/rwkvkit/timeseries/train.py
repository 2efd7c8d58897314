"""Train, evaluate and run forecasters on the standard long-term forecasting protocol.

The protocol (Informer, Autoformer, DLinear, PatchTST): a chronological train / validation / test
split (for ETTh1/ETTh2 the first 12 / next 4 / next 4 months), every variable standardised with the
mean and std of the training rows only, windows of ``lookback`` steps in and ``horizon`` steps out
sliding by one step, all variables in and out, and MSE / MAE averaged over every window, step and
variable of the test split. Metrics are reported on the standardised scale (the literature's
numbers) and on the original scale (the units of the file).

- Patch forecasters (``rimer``, ``timer``) are trained once per look-back on next-patch prediction
  over ``lookback + train_horizon`` steps and serve every horizon by autoregression: evaluation rolls
  each test window out once to the longest horizon and scores every horizon on its own windows.
- ``dlinear`` is a direct model: one model per horizon (``horizon``).
- ``naive`` (seasonal naive, period 24 by default) has nothing to train.

Training keeps the weights of the epoch with the best validation MSE (early stopping, ``patience``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from rwkvkit import optim, registry
from rwkvkit.errors import CheckpointError, ConfigError, InputError
from rwkvkit.timeseries.baselines import DLinear
from rwkvkit.timeseries.data import Scaler, Series, chronological_windows, load_csv, prepare
from rwkvkit.timeseries.models import PatchForecaster
from rwkvkit.utils.model_folder import load_model_folder, save_model_folder

HORIZONS = (96, 192, 336, 720)
MODELS = tuple(registry.names("timeseries"))  # rimer, timer, dlinear, naive
_KNOWN_DATA = ("ETTh1", "ETTh2")


def resolve_data(data: str) -> Path:
    """A CSV path, or a known name (``ETTh1``, ``ETTh2``) looked up in ``$RWKVKIT_ETT_DIR`` and the
    project's ``shared/data/ett`` folder."""
    p = Path(data)
    if p.is_file():
        return p
    if data in _KNOWN_DATA:
        dirs = [os.environ.get("RWKVKIT_ETT_DIR", "")]
        here = Path(__file__).resolve()
        dirs += [str(parent / "shared" / "data" / "ett") for parent in here.parents]
        dirs += [str(Path.cwd().parent / "shared" / "data" / "ett")]
        for d in dirs:
            if d and (Path(d) / f"{data}.csv").is_file():
                return Path(d) / f"{data}.csv"
        raise InputError(
            f"cannot find {data}.csv: set RWKVKIT_ETT_DIR to the folder holding the ETT-small CSV files "
            "(zhouhaoyi/ETDataset) or pass the CSV path"
        )
    raise InputError(
        f"no such file {data!r}; pass a CSV with a date column, or one of {', '.join(_KNOWN_DATA)}"
    )


def load_series(data: str, date_column: str | None = "date") -> Series:
    """:func:`~rwkvkit.timeseries.data.load_csv` of a path or a known name (:func:`resolve_data`)."""
    return load_csv(resolve_data(data), date_column=date_column)


# ---- models ----------------------------------------------------------------------------------------


def build_model(kind: str, lookback: int, horizon: int, seed: int = 0, **overrides: Any) -> nn.Module:
    """A forecaster by name (:mod:`rwkvkit.registry`: ``rimer``, ``timer``, ``dlinear`` or
    ``naive``), with config overrides; see :mod:`rwkvkit.timeseries.families`."""
    fields = {"lookback": lookback, "horizon": horizon, **overrides}
    return registry.build_model(kind.lower(), domain="timeseries", seed=seed, **fields)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(kw_only=True)
class ForecastTrainConfig:
    """Options of :func:`train` (the CLI's ``rwkvkit forecast train``)."""

    data: str = "ETTh1"  # a CSV path or ETTh1 / ETTh2
    model: str = "rimer"  # rimer | timer | dlinear | naive
    lookback: int = 96
    horizon: int = 96  # dlinear: the horizon it is trained for; patch models: steps of target per window
    eval_horizons: tuple[int, ...] = HORIZONS
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields
    epochs: int = 10
    batch_size: int = 32  # windows per step (each window holds every variable)
    lr: float = 1e-3
    weight_decay: float = 0.01
    windows_per_epoch: int = 0  # 0: every training window each epoch; else a random sample of that many
    patience: int = 3  # epochs without a better validation MSE before stopping
    val_stride: int = 1  # use every val_stride-th validation window (speed)
    seed: int = 0
    threads: int = 0
    out_dir: str = "runs/forecast"
    progress: bool = True
    date_column: str = "date"

    def __post_init__(self) -> None:
        registry.family(self.model.lower(), "timeseries")  # a clear error for an unknown name
        for name in ("lookback", "horizon", "batch_size", "val_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0 or self.windows_per_epoch < 0 or self.patience < 1:
            raise ConfigError("epochs and windows_per_epoch must be >= 0 and patience >= 1")
        self.eval_horizons = tuple(int(h) for h in self.eval_horizons)
        if not self.eval_horizons or min(self.eval_horizons) < 1:
            raise ConfigError(f"eval_horizons must be positive, got {self.eval_horizons}")


# ---- evaluation ------------------------------------------------------------------------------------


@torch.no_grad()
def forecast_windows(
    model: nn.Module, values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int, batch: int = 256
) -> np.ndarray:
    """Forecasts ``[len(starts), horizon, M]`` of the windows whose inputs start at ``starts``."""
    model.eval()
    v = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    out = []
    for i in range(0, len(starts), batch):
        idx = torch.from_numpy(starts[i : i + batch]).long()
        x = v[idx.unsqueeze(1) + torch.arange(lookback)]
        out.append(model.forecast(x, horizon).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, horizon, values.shape[1]), np.float32)


def _targets(values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    return values[starts[:, None] + lookback + np.arange(horizon)]


def evaluate_model(
    model: nn.Module,
    values: np.ndarray,
    split,
    lookback: int,
    horizons: tuple[int, ...],
    scaler=None,
    stride: int = 1,
    batch: int = 256,
) -> dict[int, dict[str, float]]:
    """MSE / MAE per horizon on one split (standardised values; original scale too with ``scaler``).

    Every horizon is scored on all of its own windows. The windows of a shorter horizon include
    those of a longer one, so the forecasts are made once, to the longest horizon asked, on the
    windows of the shortest; an autoregressive forecast's first steps do not depend on how far it
    runs, so this equals forecasting each horizon separately. Direct models (DLinear) are run per
    horizon.
    """
    n = values.shape[0]
    direct = isinstance(model, DLinear)
    results: dict[int, dict[str, float]] = {}
    hs = sorted(set(horizons))
    shared = None
    if not direct:
        starts_all = chronological_windows(n, split, lookback, hs[0], stride)
        shared = (starts_all, forecast_windows(model, values, starts_all, lookback, hs[-1], batch))
    for h in hs:
        starts = chronological_windows(n, split, lookback, h, stride)
        if direct:
            pred = forecast_windows(model, values, starts, lookback, h, batch)
        else:
            starts_all, pred_all = shared
            pos = np.searchsorted(starts_all, starts)
            pred = pred_all[pos, :h]
        true = _targets(values, starts, lookback, h)
        err = pred - true
        row = {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err))), "windows": int(len(starts))}
        if scaler is not None:
            err_o = scaler.inverse(pred) - scaler.inverse(true)
            row["mse_orig"] = float(np.mean(err_o**2))
            row["mae_orig"] = float(np.mean(np.abs(err_o)))
        results[h] = row
    return results


# ---- training ------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    batch_fn,
    n_items: int,
    val_fn,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    items_per_epoch: int = 0,
    patience: int = 3,
    seed: int = 0,
    progress: bool = True,
    loss_fn=None,
    desc: str = "",
) -> list[dict[str, Any]]:
    """A plain training loop: AdamW (weight decay on matrices), a linear warm-up over the first tenth
    of the steps (at most 100) then cosine decay to 0 (:func:`rwkvkit.optim.lr_schedule`),
    early stopping on ``val_fn()`` (lower is better), the best weights restored at the end.
    ``batch_fn(indices) -> (x, y)``; the loss is ``model.loss(x, y)`` unless ``loss_fn(model, x, y)``
    is given. Returns one row per epoch."""
    if count_params(model) == 0 or epochs == 0:
        return []
    if n_items < 1:
        raise InputError("no training windows: the series is too short for this look-back and horizon")
    per_epoch = min(n_items, items_per_epoch) if items_per_epoch else n_items
    steps_per_epoch = math.ceil(per_epoch / batch_size)
    total = steps_per_epoch * epochs
    opt = optim.build_optimizer(
        model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), decayed=lambda _, p: p.dim() >= 2
    )  # weight decay on every matrix
    warmup = min(100, total // 10)
    rng = np.random.default_rng(seed)
    best, best_state, bad, step = math.inf, None, 0, 0
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(n_items)[:per_epoch]
        running, seen = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{desc}epoch {epoch + 1}/{epochs}",
            disable=not progress,
            leave=False,
        )
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            x, y = batch_fn(idx)
            rate = optim.lr_schedule(step, lr=lr, lr_final=0.0, warmup_steps=warmup, total_steps=total,
                                     warmup_init=0.0, warmup_counts_step=True)  # fmt: skip
            optim.set_lr(opt, rate)
            loss = loss_fn(model, x, y) if loss_fn is not None else model.loss(x, y)
            if not torch.isfinite(loss):
                raise InputError(f"the training loss became {loss.item()} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        val = float(val_fn())
        history.append(
            {"epoch": epoch + 1, "train_loss": running / max(1, seen), "val_mse": val,
             "seconds": time.perf_counter() - t0}
        )  # fmt: skip
        if progress:
            print(
                f"{desc}epoch {epoch + 1}: train loss {running / max(1, seen):.4f}, val MSE {val:.4f}",
                flush=True,
            )
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def train_horizon_of(model: nn.Module, cfg: ForecastTrainConfig) -> int:
    """Target steps per training window: the horizon, rounded up to whole patches for patch models."""
    if isinstance(model, PatchForecaster):
        P = model.config.patch_len
        return math.ceil(cfg.horizon / P) * P
    return cfg.horizon


def train(cfg: ForecastTrainConfig) -> dict[str, Any]:
    """Train one forecaster, save it to ``cfg.out_dir`` and score it on the test split.

    Writes ``model.safetensors`` and ``model.json`` (config, scaler, columns), ``history.csv`` and
    ``metrics.json``; returns ``{"test": {horizon: metrics}, "val": ..., "params", "train_seconds",
    "history", "out_dir"}``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    series = load_series(cfg.data, cfg.date_column or None)
    model = build_model(cfg.model, cfg.lookback, cfg.horizon, cfg.seed, **cfg.overrides)
    h_train = train_horizon_of(model, cfg)
    prep = prepare(series, cfg.lookback, h_train)
    values, splits = prep["values"], prep["splits"]
    train_set = prep["train"]
    n = values.shape[0]
    val_starts = chronological_windows(n, splits["val"], cfg.lookback, cfg.horizon, cfg.val_stride)

    def val_mse() -> float:
        pred = forecast_windows(model, values, val_starts, cfg.lookback, cfg.horizon)
        return float(np.mean((pred - _targets(values, val_starts, cfg.lookback, cfg.horizon)) ** 2))

    t0 = time.perf_counter()
    history = fit(
        model, train_set.batch, len(train_set), val_mse, epochs=cfg.epochs, batch_size=cfg.batch_size,
        lr=cfg.lr, weight_decay=cfg.weight_decay, items_per_epoch=cfg.windows_per_epoch,
        patience=cfg.patience, seed=cfg.seed, progress=cfg.progress,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t0
    horizons = (
        cfg.eval_horizons
        if not isinstance(model, DLinear)
        else tuple(h for h in cfg.eval_horizons if h <= cfg.horizon)
    )
    test = evaluate_model(model, values, splits["test"], cfg.lookback, horizons, prep["scaler"])
    out = save_checkpoint(cfg.out_dir, model, cfg, series, prep["scaler"])
    best_val = min((r["val_mse"] for r in history), default=None)
    result = {
        "test": test, "params": count_params(model), "train_seconds": train_seconds, "history": history,
        "out_dir": str(out), "val_mse": val_mse() if best_val is None else best_val,
    }  # fmt: skip
    (out / "metrics.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2)
    )
    if history:
        keys = list(history[0])
        lines = [",".join(keys)] + [",".join(f"{r[k]:.6g}" for k in keys) for r in history]
        (out / "history.csv").write_text("\n".join(lines) + "\n")
    return result


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(
    out_dir: str | Path, model: nn.Module, cfg: ForecastTrainConfig, series: Series, scaler
) -> Path:
    meta = {
        "format": "rwkvkit-forecaster",
        "model": cfg.model.lower(),
        "config": model.config.to_dict(),
        "lookback": cfg.lookback,
        "horizon": cfg.horizon,
        "columns": list(series.columns),
        "date_column": cfg.date_column,
        "data": series.name,
        "scaler": scaler.to_dict(),
        "train_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
    }
    return save_model_folder(out_dir, model, meta)


def _build_from_meta(meta: dict[str, Any]) -> nn.Module:
    if meta.get("format") != "rwkvkit-forecaster":
        raise CheckpointError("this model.json was not written by `rwkvkit forecast train`")
    return registry.build_model(meta["model"], domain="timeseries", **meta["config"])


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, its model.json)`` from a folder written by :func:`train`; the meta's
    ``"scaler_obj"`` is the :class:`~rwkvkit.timeseries.data.Scaler` the model's inputs need."""
    model, meta = load_model_folder(path, _build_from_meta, "rwkvkit forecast train")
    meta["scaler_obj"] = Scaler.from_dict(meta["scaler"])
    return model, meta


def evaluate(
    path: str | Path, data: str | None = None, horizons: tuple[int, ...] = HORIZONS, split: str = "test"
) -> dict[int, dict[str, float]]:
    """Score a saved forecaster on the ``split`` of its data (or of ``data``, same columns)."""
    model, meta = load_checkpoint(path)
    series = load_series(data or meta["train_config"]["data"], meta.get("date_column") or None)
    if list(series.columns) != list(meta["columns"]):
        raise InputError(f"the data's columns {series.columns} differ from the model's {meta['columns']}")
    L = meta["lookback"]
    prep = prepare(series, L, max(horizons))
    if split not in prep["splits"]:
        raise InputError(f"unknown split {split!r}; choose train, val or test")
    if isinstance(model, DLinear):
        horizons = tuple(h for h in horizons if h <= model.config.horizon) or (model.config.horizon,)
    return evaluate_model(model, prep["values"], prep["splits"][split], L, horizons, prep["scaler"])
