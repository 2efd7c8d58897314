"""Forecast from a saved model: a CSV of the predicted rows and a plot of history, forecast and truth."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rwkvkit.errors import InputError
from rwkvkit.timeseries.train import load_checkpoint, load_series


def future_dates(dates: list[str], origin: int, horizon: int) -> list[str]:
    """Dates of rows ``origin .. origin + horizon - 1``: the file's own dates where it has them,
    then continued with the step between its last two dates (``t+1, t+2, ...`` when the dates are
    not ISO timestamps)."""
    known = list(dates[origin : origin + horizon])
    if len(known) == horizon:
        return known
    need = horizon - len(known)
    try:
        last, prev = datetime.fromisoformat(dates[-1]), datetime.fromisoformat(dates[-2])
    except (ValueError, IndexError):
        return known + [f"t+{i + 1}" for i in range(need)]
    step = last - prev
    fmt = "%Y-%m-%d %H:%M:%S" if " " in dates[-1] or "T" in dates[-1] else "%Y-%m-%d"
    return known + [(last + step * (i + 1)).strftime(fmt) for i in range(need)]


def predict(
    path: str | Path,
    data: str | None = None,
    *,
    horizon: int = 96,
    origin: int | None = None,
    column: str | None = None,
    out_csv: str | Path = "forecast.csv",
    out_png: str | Path | None = "forecast.png",
    history: int | None = None,
) -> dict[str, Any]:
    """Forecast ``horizon`` steps after row ``origin`` of ``data`` (default: the model's training CSV;
    ``origin`` defaults to the end of the file, i.e. the future).

    Writes ``out_csv`` (date plus one column per variable, in the file's units) and, unless
    ``out_png`` is None, a plot of ``column`` (default: the last variable, ``OT`` for ETT): the
    look-back the model read, the forecast and, where the file has them, the actual values.
    Returns ``{"dates", "forecast" [horizon, M] np.ndarray, "actual" (or None), "mse", "mae"}``
    (errors on the standardised scale, over the steps whose actual values are known).
    """
    model, meta = load_checkpoint(path)
    series = load_series(data or meta["train_config"]["data"], meta.get("date_column") or None)
    if list(series.columns) != list(meta["columns"]):
        raise InputError(f"the data's columns {series.columns} differ from the model's {meta['columns']}")
    if horizon < 1:
        raise InputError(f"horizon must be >= 1, got {horizon}")
    dlinear_h = getattr(model.config, "horizon", None)
    if dlinear_h is not None and horizon > dlinear_h:
        raise InputError(
            f"this DLinear model forecasts at most {dlinear_h} steps; pass --horizon {dlinear_h}"
        )
    scaler = meta["scaler_obj"]
    L, T = meta["lookback"], series.values.shape[0]
    origin = T if origin is None else int(origin)
    if origin < 0:
        origin += T
    if not L <= origin <= T:
        raise InputError(f"origin must lie in [{L}, {T}] (the model reads {L} rows before it), got {origin}")
    values = scaler.transform(series.values)
    x = torch.from_numpy(np.ascontiguousarray(values[origin - L : origin], dtype=np.float32)).unsqueeze(0)
    with torch.no_grad():
        pred_std = model.forecast(x, horizon)[0].float().numpy()
    pred = scaler.inverse(pred_std)
    known = min(horizon, T - origin)
    actual = series.values[origin : origin + known] if known > 0 else None
    dates = future_dates(series.dates or [str(i) for i in range(T)], origin, horizon)

    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", *series.columns])
        for d, row in zip(dates, pred, strict=True):
            w.writerow([d, *(f"{v:.6g}" for v in row)])
    result: dict[str, Any] = {"dates": dates, "forecast": pred, "actual": actual, "csv": str(out_csv)}
    if actual is not None:
        err = pred_std[:known] - values[origin : origin + known]
        result["mse"], result["mae"] = float(np.mean(err**2)), float(np.mean(np.abs(err)))
    if out_png is not None:
        col = series.column_index(column) if column is not None else len(series.columns) - 1
        hist = L if history is None else min(int(history), origin)
        result["png"] = str(
            plot_forecast(
                out_png,
                series,
                col,
                origin,
                hist,
                pred[:, col],
                None if actual is None else actual[:, col],
                title=f"{meta['model']} (look-back {L}) on {series.name or 'data'}",
            )
        )
    return result


def plot_forecast(
    path: str | Path,
    series,
    col: int,
    origin: int,
    history: int,
    forecast: np.ndarray,
    actual: np.ndarray | None,
    title: str = "",
) -> Path:
    """History (``history`` rows before ``origin``), forecast and actual values of one variable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t_hist = np.arange(origin - history, origin)
    t_fut = np.arange(origin, origin + len(forecast))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(
        t_hist, series.values[origin - history : origin, col], color="0.35", lw=1.0, label="history (input)"
    )
    if actual is not None:
        ax.plot(t_fut[: len(actual)], actual, color="tab:green", lw=1.0, label="actual")
    ax.plot(t_fut, forecast, color="tab:red", lw=1.4, label="forecast")
    ax.axvline(origin - 0.5, color="0.6", ls="--", lw=0.8)
    name = series.columns[col]
    ax.set_xlabel(
        f"row (forecast starts at {series.dates[origin] if origin < len(series.dates) else origin})"
    )
    ax.set_ylabel(name)
    ax.set_title(f"{title}: {name}, {len(forecast)} steps")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
