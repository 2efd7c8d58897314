"""``rwkvkit forecast train|eval|predict``: long-term time-series forecasting (Rimer, Timer, DLinear).

The time-series package is imported when a forecast command runs, not when the parser is built, so
the other commands do not pay for it; the model names come from :mod:`rwkvkit.registry`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rwkvkit import registry
from rwkvkit.cli.vision import parse_overrides
from rwkvkit.errors import ConfigError


def _horizons(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--horizons takes comma-separated step counts, e.g. 96,192,336,720; got {text!r}"
        ) from None
    if not out or min(out) < 1:
        raise ConfigError(f"--horizons must be positive step counts, got {text!r}")
    return out


def _table(metrics: dict[int, dict[str, float]]) -> str:
    lines = ["horizon  windows      MSE      MAE   MSE(orig)  MAE(orig)"]
    for h, r in sorted(metrics.items()):
        nan = float("nan")
        lines.append(
            f"{h:7d}  {r['windows']:7d}  {r['mse']:7.4f}  {r['mae']:7.4f}  {r.get('mse_orig', nan):10.4f}"
            f"  {r.get('mae_orig', nan):9.4f}"
        )
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "forecast",
        help="train, evaluate and run time-series forecasters (Rimer, Timer, DLinear, seasonal naive)",
        description="Long-term forecasting of multivariate series with a date column, on the standard "
        "protocol (chronological split, train-only standardisation; ETTh1/ETTh2: 12/4/4 months).",
    )
    fsub = p.add_subparsers(dest="forecast_command", metavar="ACTION", required=True)

    t = fsub.add_parser(
        "train",
        help="train a forecaster; writes model.safetensors, model.json, history.csv, metrics.json to --out",
        description="Example: `rwkvkit forecast train --data ETTh1 --model rimer --lookback 336 --out "
        "runs/forecast/rimer`. Patch models (rimer, timer) learn next-patch prediction and forecast every "
        "horizon autoregressively; dlinear is trained for one --horizon.",
    )
    t.add_argument("--data", default="ETTh1", help="a CSV with a date column, or ETTh1 / ETTh2 (found in "
                   "$RWKVKIT_ETT_DIR or the project's shared/data/ett; default ETTh1)")  # fmt: skip
    t.add_argument("--model", default="rimer", choices=registry.names("timeseries"),
                   help="forecaster (default rimer)")  # fmt: skip
    t.add_argument("--lookback", type=int, default=96, help="input steps (default 96; 96/336/512 are the "
                   "literature's)")  # fmt: skip
    t.add_argument("--horizon", type=int, default=96, help="dlinear: the horizon it learns; patch models: "
                   "target steps per training window (default 96)")  # fmt: skip
    t.add_argument("--horizons", default="96,192,336,720", help="horizons scored on the test split after "
                   "training (default 96,192,336,720)")  # fmt: skip
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field (repeatable), e.g. --set n_layers=2 --set "
                   "d_model=64 --set patch_len=16")  # fmt: skip
    t.add_argument("--epochs", type=int, default=10, help="maximum passes (default 10)")
    t.add_argument("--batch-size", type=int, default=32, help="windows per step (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, AdamW, cosine (default 1e-3)")
    t.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices "
                   "(default 0.01)")  # fmt: skip
    t.add_argument("--windows-per-epoch", type=int, default=0, help="random training windows per epoch "
                   "(0 = all, default)")  # fmt: skip
    t.add_argument("--patience", type=int, default=3, help="early stopping: epochs without a better "
                   "validation MSE (default 3)")  # fmt: skip
    t.add_argument("--val-stride", type=int, default=1, help="score every N-th validation window (default 1)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    t.add_argument("--out", default="runs/forecast/run", help="output folder (default runs/forecast/run)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(func=run_train)

    e = fsub.add_parser("eval", help="MSE and MAE of a trained forecaster on the test split",
                        description="Scores every horizon on its own windows, on the standardised scale "
                        "and in the file's units.")  # fmt: skip
    e.add_argument("checkpoint", help="a folder written by `rwkvkit forecast train`")
    e.add_argument("--data", default=None, help="CSV or ETTh1/ETTh2 (default: the training data)")
    e.add_argument("--horizons", default="96,192,336,720", help="horizons to score (default 96,192,336,720)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default test)")
    e.set_defaults(func=run_eval)

    pr = fsub.add_parser("predict", help="write a forecast CSV and a PNG plot (history, forecast, actual)",
                         description="Forecasts --horizon steps after row --origin (default: the end of "
                         "the file, i.e. the future). Example: `rwkvkit forecast predict runs/forecast/rimer "
                         "--origin 12000 --horizon 192 --out forecast.csv`.")  # fmt: skip
    pr.add_argument("checkpoint", help="a folder written by `rwkvkit forecast train`")
    pr.add_argument("--data", default=None, help="CSV or ETTh1/ETTh2 (default: the training data)")
    pr.add_argument("--horizon", type=int, default=96, help="steps to forecast (default 96)")
    pr.add_argument("--origin", type=int, default=None, help="row of the first forecast step; negative "
                    "counts from the end (default: after the last row)")  # fmt: skip
    pr.add_argument("--column", default=None, help="variable to plot (default: the last one, OT for ETT)")
    pr.add_argument("--out", default="forecast.csv", help="forecast CSV (default forecast.csv)")
    pr.add_argument("--plot", default=None, help="plot PNG (default: the CSV path with .png)")
    pr.add_argument("--no-plot", action="store_true", help="write the CSV only")
    pr.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from rwkvkit.timeseries.train import ForecastTrainConfig, train  # see the module docstring

    if args.epochs < 0 or args.lr <= 0:
        raise ConfigError("--epochs must be >= 0 and --lr > 0")
    cfg = ForecastTrainConfig(
        data=args.data, model=args.model, lookback=args.lookback, horizon=args.horizon,
        eval_horizons=_horizons(args.horizons), overrides=parse_overrides(args.overrides), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        windows_per_epoch=args.windows_per_epoch, patience=args.patience, val_stride=args.val_stride,
        seed=args.seed, threads=args.threads, out_dir=args.out, progress=not args.no_progress,
    )  # fmt: skip
    result = train(cfg)
    print(_table(result["test"]))
    print(
        f"done: {cfg.model}, {result['params']:,} parameters, trained in {result['train_seconds']:.0f} s; "
        f"saved in {result['out_dir']}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from rwkvkit.timeseries.train import evaluate

    print(
        _table(evaluate(args.checkpoint, data=args.data, horizons=_horizons(args.horizons), split=args.split))
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from rwkvkit.timeseries.predict import predict

    png = None if args.no_plot else (args.plot or str(Path(args.out).with_suffix(".png")))
    r = predict(
        args.checkpoint, args.data, horizon=args.horizon, origin=args.origin, column=args.column,
        out_csv=args.out, out_png=png,
    )  # fmt: skip
    msg = f"wrote {r['csv']}" + (f" and {r['png']}" if r.get("png") else "")
    if "mse" in r:
        msg += (
            f"; on the {len(r['actual'])} known steps: MSE {r['mse']:.4f}, MAE {r['mae']:.4f} (standardised)"
        )
    print(msg)
    return 0
