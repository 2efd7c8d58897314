"""Training, evaluation and prediction of forecasters, through the library and the CLI, on a small
synthetic CSV (chronological 70/10/20 split of a custom file)."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

from rwkvkit.cli.main import main
from rwkvkit.timeseries.baselines import SeasonalNaive
from rwkvkit.timeseries.data import chronological_windows, standard_split
from rwkvkit.timeseries.models import Rimer, RimerConfig
from rwkvkit.timeseries.predict import future_dates, predict
from rwkvkit.timeseries.train import (
    ForecastTrainConfig,
    evaluate,
    evaluate_model,
    forecast_windows,
    load_checkpoint,
    train,
)

TINY = {"d_model": 16, "n_layers": 1, "patch_len": 8, "head_size": 16}


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    """1000 hourly rows of three variables (daily cycle, trend, noise); OT last."""
    path = tmp_path_factory.mktemp("ts") / "toy.csv"
    rng = np.random.default_rng(0)
    t = np.arange(1000)
    start = datetime(2020, 1, 1)
    cols = {
        "a": 10 + 3 * np.sin(2 * math.pi * t / 24) + rng.normal(0, 0.3, t.size),
        "b": 0.01 * t + np.cos(2 * math.pi * t / 12) + rng.normal(0, 0.2, t.size),
        "OT": 30 + 5 * np.sin(2 * math.pi * (t + 3) / 24) + rng.normal(0, 0.5, t.size),
    }
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", *cols])
        for i in t:
            w.writerow(
                [
                    (start + timedelta(hours=int(i))).strftime("%Y-%m-%d %H:%M:%S"),
                    *(c[i] for c in cols.values()),
                ]
            )
    return path


@pytest.fixture(scope="module")
def trained(csv_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "rimer"
    cfg = ForecastTrainConfig(
        data=str(csv_path), model="rimer", lookback=32, horizon=16, eval_horizons=(16, 48), overrides=TINY,
        epochs=2, windows_per_epoch=64, batch_size=16, out_dir=str(out), progress=False,
    )  # fmt: skip
    return out, train(cfg)


def test_train_writes_a_loadable_checkpoint_and_scores_every_horizon(trained, csv_path):
    out, result = trained
    for name in ("model.safetensors", "model.json", "metrics.json", "history.csv"):
        assert (out / name).is_file()
    meta = json.loads((out / "model.json").read_text())
    assert meta["model"] == "rimer" and meta["columns"] == ["a", "b", "OT"]
    test = result["test"]
    splits = standard_split(1000)
    assert test[16]["windows"] == len(chronological_windows(1000, splits["test"], 32, 16))
    assert test[48]["windows"] == len(chronological_windows(1000, splits["test"], 32, 48))
    assert all(np.isfinite(r["mse"]) and r["mse_orig"] > r["mse"] for r in test.values())  # OT's std is > 1
    # eval from the saved folder reproduces the metrics the training run reported
    again = evaluate(out, horizons=(16, 48))
    for h in (16, 48):
        assert again[h]["mse"] == pytest.approx(test[h]["mse"], rel=1e-5)
    model, meta = load_checkpoint(out)
    assert isinstance(model, Rimer) and not model.training


def test_training_beats_the_untrained_model(csv_path, tmp_path):
    common = dict(data=str(csv_path), model="rimer", lookback=32, horizon=16, eval_horizons=(16,),
                  overrides=TINY, batch_size=16, progress=False, lr=3e-3)  # fmt: skip
    before = train(ForecastTrainConfig(**common, epochs=0, out_dir=str(tmp_path / "a")))["test"][16]["mse"]
    after = train(ForecastTrainConfig(**common, epochs=4, out_dir=str(tmp_path / "b")))["test"][16]["mse"]
    assert after < 0.8 * before, (before, after)


def test_shared_rollout_equals_per_horizon_forecasts(csv_path):
    """evaluate_model forecasts once to the longest horizon; the score of each horizon must equal
    forecasting that horizon alone on its own windows."""
    from rwkvkit.timeseries.data import load_csv, prepare

    prep = prepare(load_csv(csv_path), 32, 16)
    model = Rimer(RimerConfig(lookback=32, **TINY, dropout=0.0)).eval()
    split = prep["splits"]["test"]
    got = evaluate_model(model, prep["values"], split, 32, (16, 40))
    for h in (16, 40):
        starts = chronological_windows(1000, split, 32, h)
        pred = forecast_windows(model, prep["values"], starts, 32, h)
        true = prep["values"][starts[:, None] + 32 + np.arange(h)]
        assert got[h]["mse"] == pytest.approx(float(np.mean((pred - true) ** 2)), rel=1e-5)


def test_seasonal_naive_scores_match_a_direct_computation(csv_path):
    from rwkvkit.timeseries.data import load_csv, prepare

    prep = prepare(load_csv(csv_path), 48, 24)
    v, split = prep["values"], prep["splits"]["test"]
    got = evaluate_model(SeasonalNaive(), v, split, 48, (24,))[24]
    starts = chronological_windows(1000, split, 48, 24)
    pred = v[starts[:, None] + 24 + np.arange(24)]  # the last day of each window
    true = v[starts[:, None] + 48 + np.arange(24)]
    assert got["mse"] == pytest.approx(float(np.mean((pred - true) ** 2)), rel=1e-6)


def test_predict_writes_csv_and_plot(trained, tmp_path):
    out, _ = trained
    r = predict(out, horizon=20, origin=900, out_csv=tmp_path / "f.csv", out_png=tmp_path / "f.png")
    rows = list(csv.reader(open(tmp_path / "f.csv")))
    assert rows[0] == ["date", "a", "b", "OT"] and len(rows) == 21
    assert rows[1][0] == "2020-02-07 12:00:00"  # row 900 of the file
    assert (tmp_path / "f.png").stat().st_size > 5000
    assert r["actual"].shape == (20, 3) and np.isfinite(r["mse"])
    # beyond the end of the file: dates continue hourly, no actual values
    r = predict(out, horizon=10, out_csv=tmp_path / "g.csv", out_png=None)
    assert r["actual"] is None and r["dates"][0] == "2020-02-11 16:00:00"
    # the forecast equals the model's own forecast of the same window, in the file's units
    model, meta = load_checkpoint(out)
    from rwkvkit.timeseries.data import load_csv

    s = load_csv(meta["train_config"]["data"])
    x = torch.from_numpy(meta["scaler_obj"].transform(s.values[-32:])).unsqueeze(0)
    expect = meta["scaler_obj"].inverse(model.forecast(x, 10)[0].numpy())
    np.testing.assert_allclose(r["forecast"], expect, rtol=1e-5, atol=1e-4)


def test_future_dates():
    dates = ["2020-01-01 00:00:00", "2020-01-01 01:00:00", "2020-01-01 02:00:00"]
    assert future_dates(dates, 1, 4) == dates[1:] + ["2020-01-01 03:00:00", "2020-01-01 04:00:00"]
    assert future_dates(["a", "b"], 2, 2) == ["t+1", "t+2"]


def test_cli_train_eval_predict(csv_path, tmp_path, capsys):
    out = tmp_path / "dl"
    args = ["--model", "dlinear", "--lookback", "48", "--horizon", "24", "--horizons", "24", "--epochs", "1"]
    rc = main(["forecast", "train", "--data", str(csv_path), *args, "--out", str(out), "--no-progress"])
    assert rc == 0 and "done: dlinear" in capsys.readouterr().out
    assert main(["forecast", "eval", str(out), "--horizons", "24"]) == 0
    assert "     24" in capsys.readouterr().out
    rc = main(
        [
            "forecast",
            "predict",
            str(out),
            "--horizon",
            "24",
            "--origin",
            "-100",
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert rc == 0 and (tmp_path / "p.png").is_file() and "MSE" in capsys.readouterr().out
    # user errors: one line, exit status 2
    assert main(["forecast", "predict", str(out), "--horizon", "48", "--out", str(tmp_path / "q.csv")]) == 2
    assert "at most 24 steps" in capsys.readouterr().err
    assert (
        main(["forecast", "train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x")]) == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert main(["forecast", "eval", str(tmp_path)]) == 2
    assert "not a model folder of `rwkvkit forecast train`" in capsys.readouterr().err
    bad = ["forecast", "train", "--data", str(csv_path), "--lookback", "30", "--out", str(tmp_path / "y")]
    assert main(bad) == 2
    assert "multiple of patch_len" in capsys.readouterr().err


def test_broken_or_foreign_model_folders_are_refused(trained, tmp_path):
    import shutil

    from rwkvkit.errors import CheckpointError

    out, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(bad)
    meta = json.loads((out / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not written by `rwkvkit forecast train`"):
        load_checkpoint(bad)
    (bad / "model.json").write_text(json.dumps({**meta, "config": {**meta["config"], "d_model": 32}}))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(bad)
