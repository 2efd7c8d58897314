"""rwkvkit.timeseries.data: the CSV loader, the Scaler, the ETT splits and windows, and the seed's
leaky next-step protocol. The acceptance test tags every row with its index and checks that the
chronological split never lets a val/test target into the training windows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkvkit.errors import InputError
from rwkvkit.timeseries.data import (
    ETT_HOURLY_BORDERS,
    ETT_MINUTE_BORDERS,
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

SHARED_DATA = Path(
    os.environ.get("RWKVKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
ETT_DIR = SHARED_DATA / "ett"
ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
N_ETT_ROWS = 17420
TRAIN_END, VAL_END, TEST_END = 8640, 11520, 14400


def _ett_file(name: str) -> Path:
    path = ETT_DIR / f"{name}.csv"
    if not path.is_file():
        pytest.skip(f"{path} is not there (set RWKVKIT_SHARED_DATA to the shared data folder)")
    return path


def _tagged_series(n_rows: int = N_ETT_ROWS, n_vars: int = 2, name: str = "ETTh1") -> Series:
    """Variable j of row r holds r + j * (r % 7): every value says which row it came from, and the
    variables differ even after standardisation."""
    rows = np.arange(n_rows, dtype=np.float64)[:, None]
    values = (rows + np.arange(n_vars) * (rows % 7)).astype(np.float32)
    return Series(
        dates=[str(r) for r in range(n_rows)],
        values=values,
        columns=[f"v{j}" for j in range(n_vars - 1)] + ["OT"],
        name=name,
    )


def _rows_of(scaler: Scaler, tensor: torch.Tensor, all_vars: bool = True) -> np.ndarray:
    """Map standardised tagged values back to their row indices through the scaler's inverse."""
    raw = scaler.inverse(tensor.numpy())
    rows = np.round(raw[..., 0])
    assert np.abs(raw[..., 0] - rows).max() < 0.05  # float32 standardisation keeps tags exact
    for j in range(1, raw.shape[-1] if all_vars else 1):  # every variable of a row is from that row
        assert np.abs(raw[..., j] - (rows + j * (rows % 7))).max() < 0.05 * (j + 1)
    return rows.astype(np.int64)


def _write(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def etth1() -> Series:
    return load_csv(_ett_file("ETTh1"))


def test_load_real_etth1(etth1):
    assert etth1.values.shape == (N_ETT_ROWS, 7)
    assert etth1.values.dtype == np.float32
    assert etth1.columns == ETT_COLUMNS
    assert etth1.name == "ETTh1"
    assert len(etth1.dates) == N_ETT_ROWS
    assert etth1.dates[0] == "2016-07-01 00:00:00"
    assert etth1.dates[1] == "2016-07-01 01:00:00"
    np.testing.assert_allclose(etth1.values[0, [0, -1]], [5.827, 30.531], atol=1e-3)
    assert np.isfinite(etth1.values).all()
    assert etth1.column_index("OT") == 6 == etth1.column_index(-1) == etth1.column_index("ot")


def test_load_real_etth2_columns_selected():
    s = load_csv(_ett_file("ETTh2"), columns=["OT", "HUFL"])
    full = load_csv(_ett_file("ETTh2"))
    assert s.columns == ["OT", "HUFL"] and s.values.shape == (N_ETT_ROWS, 2)
    np.testing.assert_array_equal(s.values, full.values[:, [6, 0]])


def test_load_small_file(tmp_path):
    path = _write(tmp_path, "Date,a,b\nd0,1,2.5\n\nd1,-3,4e2\n")  # blank line skipped, date case-insensitive
    s = load_csv(path)
    assert s.dates == ["d0", "d1"] and s.columns == ["a", "b"] and s.name == "s"
    np.testing.assert_array_equal(s.values, np.array([[1, 2.5], [-3, 400]], np.float32))
    s2 = load_csv(_write(tmp_path, "a,b\n1,2\n", "nodate.csv"), date_column=None)
    assert s2.dates == [] and s2.columns == ["a", "b"] and s2.values.tolist() == [[1.0, 2.0]]


def test_loader_errors(tmp_path):
    with pytest.raises(InputError, match="cannot read CSV file .*missing.csv"):
        load_csv(tmp_path / "missing.csv")
    with pytest.raises(InputError, match=r"no date column 'date'.*\['time', 'a'\].*date_column=None"):
        load_csv(_write(tmp_path, "time,a\nt,1\n"))
    with pytest.raises(InputError, match=r"line 4 \(data row 2\), column 'MULL'.*'abc'"):
        load_csv(_write(tmp_path, "date,HUFL,MULL\nd,1,2\nd,3,4\nd,5,abc\n"))
    with pytest.raises(InputError, match=r"line 5 \(data row 1\), column 'a'.*'x'"):  # blank lines counted
        load_csv(_write(tmp_path, "date,a\n\nd,1\n\nd,x\n"))
    with pytest.raises(InputError, match=r"line 2 \(data row 0\), column 'b'.*''"):
        load_csv(_write(tmp_path, "date,a,b\nd,1,\n"))
    with pytest.raises(InputError, match=r"line 2.*column 'a'.*not a finite number"):
        load_csv(_write(tmp_path, "date,a\nd,nan\n"))
    with pytest.raises(InputError, match=r"unknown column 'XX'.*\['a', 'b'\]"):
        load_csv(_write(tmp_path, "date,a,b\nd,1,2\n"), columns=["a", "XX"])
    with pytest.raises(InputError, match="date column"):
        load_csv(_write(tmp_path, "date,a,b\nd,1,2\n"), columns=["date"])
    with pytest.raises(InputError, match="twice"):
        load_csv(_write(tmp_path, "date,a,b\nd,1,2\n"), columns=["a", "a"])
    with pytest.raises(InputError, match="3 cells, the header has 2"):
        load_csv(_write(tmp_path, "date,a\nd,1,2\n"))
    with pytest.raises(InputError, match="no data rows"):
        load_csv(_write(tmp_path, "date,a\n"))
    with pytest.raises(InputError, match="empty"):
        load_csv(_write(tmp_path, ""))
    with pytest.raises(InputError, match="no variable column"):
        load_csv(_write(tmp_path, "date\nd\n"))
    s = _tagged_series(10)
    with pytest.raises(InputError, match=r"unknown column 'nope'.*'OT'"):
        s.column_index("nope")
    with pytest.raises(InputError, match="out of range"):
        s.column_index(3)


# ------------------------------------------------------------------------------------------ scaler


def test_scaler_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(50, 4)) * [1, 10, 100, 0.01] + [0, 5, -3, 1000]).astype(np.float32)
    data[:, 2] = 7.0  # a constant variable: std clamped, maps to 0, not NaN
    sc = Scaler.fit(data)
    np.testing.assert_allclose(sc.mean, data.astype(np.float64).mean(0))
    np.testing.assert_allclose(sc.std[[0, 1, 3]], data.astype(np.float64).std(0)[[0, 1, 3]])
    assert sc.std[2] == Scaler.MIN_STD

    z = sc.transform(data)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == data.shape
    np.testing.assert_allclose(z[:, [0, 1, 3]].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(0), 1, atol=1e-5)
    assert (z[:, 2] == 0).all()
    back = sc.inverse(z)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_allclose(back, data, rtol=1e-5, atol=1e-4)

    t = torch.from_numpy(data).reshape(5, 10, 4)  # [..., M]
    zt = sc.transform(t)
    assert isinstance(zt, torch.Tensor) and zt.dtype == torch.float32 and zt.shape == (5, 10, 4)
    np.testing.assert_allclose(zt.reshape(50, 4).numpy(), z, atol=1e-5)
    bt = sc.inverse(zt)
    assert isinstance(bt, torch.Tensor) and bt.dtype == torch.float32
    torch.testing.assert_close(bt, t, rtol=1e-5, atol=1e-4)

    sc2 = Scaler.from_dict(json.loads(json.dumps(sc.to_dict())))
    np.testing.assert_array_equal(sc2.mean, sc.mean)
    np.testing.assert_array_equal(sc2.std, sc.std)
    with pytest.raises(InputError, match="last axis must be 4"):
        sc.transform(np.zeros((3, 5)))
    with pytest.raises(InputError, match="last axis must be 4"):
        sc.inverse(torch.zeros(3))
    with pytest.raises(InputError, match="'mean' and 'std'"):
        Scaler.from_dict({"mean": [0.0]})


# ---------------------------------------------------------------------------------- splits, windows


def test_standard_splits():
    assert standard_split("ETTh1") == {
        "train": Split("train", 0, 8640),
        "val": Split("val", 8640, 11520),
        "test": Split("test", 11520, 14400),
    }
    assert standard_split(_tagged_series(N_ETT_ROWS, 1, "ETTh2")) == dict(ETT_HOURLY_BORDERS)
    assert standard_split("ETTm1") == dict(ETT_MINUTE_BORDERS)
    assert ETT_MINUTE_BORDERS["test"] == Split("test", 46080, 57600)
    custom = standard_split(1000)  # Autoformer's Dataset_Custom: 70 / 10 / 20
    assert custom == {
        "train": Split("train", 0, 700),
        "val": Split("val", 700, 800),
        "test": Split("test", 800, 1000),
    }
    assert standard_split(_tagged_series(1000, 1, "weather")) == custom
    assert standard_split(_tagged_series(N_ETT_ROWS, 1, "ETTh1"), kind="custom")["test"].end == N_ETT_ROWS
    with pytest.raises(InputError, match="14000 rows.*at least 14400"):
        standard_split(_tagged_series(14000, 1, "ETTh1"))
    with pytest.raises(InputError, match="unknown split kind"):
        standard_split("ETTh1", kind="random")
    with pytest.raises(InputError, match="too short"):
        standard_split(4)


def test_chronological_windows_match_the_literature():
    b = ETT_HOURLY_BORDERS
    train = chronological_windows(N_ETT_ROWS, b["train"], 96, 96)
    val = chronological_windows(N_ETT_ROWS, b["val"], 96, 96)
    test = chronological_windows(N_ETT_ROWS, b["test"], 96, 96)
    assert (len(train), len(val), len(test)) == (8449, 2785, 2785)  # Dataset_ETT_hour, seq 96 pred 96
    assert train.dtype == np.int64 and (np.diff(train) == 1).all()
    assert (train[0], train[-1]) == (0, TRAIN_END - 192)
    assert (val[0], val[-1]) == (TRAIN_END - 96, VAL_END - 192)
    assert (test[0], test[-1]) == (VAL_END - 96, TEST_END - 192)
    assert len(chronological_windows(N_ETT_ROWS, b["val"], 96, 96, stride=10)) == 279
    with pytest.raises(InputError, match=r"lookback=512 \+ horizon=720.*train split of 1000 rows"):
        chronological_windows(5000, Split("train", 0, 1000), 512, 720)
    with pytest.raises(InputError, match="only 14000 rows"):
        chronological_windows(14000, b["test"], 96, 96)
    with pytest.raises(InputError, match="horizon must be a positive integer"):
        chronological_windows(N_ETT_ROWS, b["val"], 96, 0)


def test_window_dataset_items_and_batches():
    s = _tagged_series(300, 2, "tiny")
    ds = WindowDataset(s.values, [0, 5, 200], lookback=10, horizon=4)
    assert len(ds) == 3 and ds.n_vars == 2
    x, y = ds[1]
    assert x.shape == (10, 2) and y.shape == (4, 2) and x.dtype == torch.float32
    assert x[:, 0].tolist() == list(range(5, 15)) and y[:, 0].tolist() == list(range(15, 19))
    xb, yb = ds.batch([2, 1])
    assert xb.shape == (2, 10, 2) and yb.shape == (2, 4, 2)
    torch.testing.assert_close(xb[1], x)
    torch.testing.assert_close(yb[1], y)
    assert ds[-1][0][0, 0] == 200
    x[:] = -1  # items are copies: the dataset is not changed
    assert ds[1][0][0, 0] == 5
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(InputError, match=r"window starts must lie in \[0, 286\]"):
        WindowDataset(s.values, [287], lookback=10, horizon=4)


# ------------------------------------------------------------------------------ acceptance: no leak


def _window_rows(scaler: Scaler, ds: WindowDataset, n_rows: int, chunk: int = 4096):
    """Masks over the rows of the series: (rows in some input, rows in some target) of ``ds``,
    recovered from the tagged values, checking that each window's inputs are consecutive rows and
    its targets the rows right after them."""
    in_x, in_y = np.zeros(n_rows, bool), np.zeros(n_rows, bool)
    for i in range(0, len(ds), chunk):
        x, y = ds.batch(np.arange(i, min(i + chunk, len(ds))))
        xr, yr = _rows_of(scaler, x, all_vars=i == 0), _rows_of(scaler, y, all_vars=i == 0)
        starts = ds.starts[i : i + chunk, None]
        assert (xr == starts + np.arange(ds.lookback)).all()
        assert (yr == starts + ds.lookback + np.arange(ds.horizon)).all()
        in_x[xr.ravel()] = True
        in_y[yr.ravel()] = True
    return in_x, in_y


def _assert_no_leak(prepared: dict, n_rows: int) -> None:
    sc = prepared["scaler"]
    train_x, train_y = _window_rows(sc, prepared["train"], n_rows)
    assert np.flatnonzero(train_x).max() < TRAIN_END and np.flatnonzero(train_y).max() < TRAIN_END
    in_train = train_x | train_y
    for name, (lo, hi) in {"val": (TRAIN_END, VAL_END), "test": (VAL_END, TEST_END)}.items():
        targets = np.flatnonzero(_window_rows(sc, prepared[name], n_rows)[1])
        assert lo <= targets.min() and targets.max() < hi, name  # every target lies in its split
        assert not in_train[targets].any(), f"{name} target rows appear in train windows"


@pytest.mark.parametrize("lookback", [96, 336, 512])
def test_chronological_split_never_lets_a_target_into_training_inputs(lookback):
    """ACCEPTANCE: the chronological split never lets a target value into the training inputs."""
    series = _tagged_series()
    for horizon in (96, 192, 336, 720):
        p = prepare(series, lookback, horizon)
        assert p["splits"] == dict(ETT_HOURLY_BORDERS)
        assert len(p["train"]) == TRAIN_END - lookback - horizon + 1
        assert len(p["val"]) == len(p["test"]) == (VAL_END - TRAIN_END) - horizon + 1
        assert p["values"].shape == series.values.shape and p["values"].dtype == np.float32
        _assert_no_leak(p, len(series))
        # the first val/test windows predict the split's first row, the last ones its last row
        assert p["val"][0][1][0, 0] == p["values"][TRAIN_END, 0]
        assert p["test"][len(p["test"]) - 1][1][-1, 0] == p["values"][TEST_END - 1, 0]


def test_leak_check_can_fail():
    """The checker above catches a train window whose targets run into the val rows."""
    p = prepare(_tagged_series(), 96, 96)
    leaky = chronological_windows(N_ETT_ROWS, Split("train", 0, TRAIN_END + 50), 96, 96)
    p["train"] = WindowDataset(p["values"], leaky, 96, 96)
    with pytest.raises(AssertionError):
        _assert_no_leak(p, N_ETT_ROWS)


def test_scaler_is_fitted_on_train_rows_only():
    series = _tagged_series()
    p = prepare(series, 96, 96)
    train = series.values[:TRAIN_END].astype(np.float64)
    np.testing.assert_allclose(p["scaler"].mean, train.mean(0))
    np.testing.assert_allclose(p["scaler"].std, train.std(0))
    np.testing.assert_allclose(p["scaler"].mean[0], (TRAIN_END - 1) / 2)
    for row in (TRAIN_END, 12000, TEST_END - 1, N_ETT_ROWS - 1):  # val, test and unused rows
        bumped = series.values.copy()
        bumped[row] = 1e6
        q = prepare(Series(series.dates, bumped, series.columns, series.name), 96, 96)
        np.testing.assert_array_equal(q["scaler"].mean, p["scaler"].mean)
        np.testing.assert_array_equal(q["scaler"].std, p["scaler"].std)
    bumped = series.values.copy()
    bumped[TRAIN_END - 1] = 1e6  # the last train row does move it
    q = prepare(Series(series.dates, bumped, series.columns, series.name), 96, 96)
    assert not np.array_equal(q["scaler"].mean, p["scaler"].mean)


def test_prepare_real_etth1(etth1):
    p = prepare(etth1, 336, 96)
    assert (len(p["train"]), len(p["val"]), len(p["test"])) == (8209, 2785, 2785)
    x, y = p["test"].batch(torch.tensor([0, 10]))
    assert x.shape == (2, 336, 7) and y.shape == (2, 96, 7)
    z = p["values"][:TRAIN_END].astype(np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)


# ------------------------------------------------------------------- the seed's leaky protocol


def test_shuffled_row_split():
    rows = shuffled_row_split(1000)
    assert [len(rows[k]) for k in ("train", "val", "test")] == [700, 200, 100]
    allr = np.concatenate([rows["train"], rows["val"], rows["test"]])
    np.testing.assert_array_equal(np.sort(allr), np.arange(1000))
    np.testing.assert_array_equal(allr, np.random.default_rng(42).permutation(1000))
    assert not np.array_equal(shuffled_row_split(1000, seed=1)["train"], rows["train"])
    with pytest.raises(InputError, match="summing to 1"):
        shuffled_row_split(1000, fractions=(0.5, 0.2, 0.1))


def test_leaky_protocol_reproduces_the_seed_leak():
    series = _tagged_series(30000, 3, "ELC")
    p = leaky_protocol(series)
    rows = p["rows"]
    assert [len(rows[k]) for k in ("train", "val", "test")] == [18200, 5200, 2600]  # of min(n, 26000)
    assert np.concatenate(list(rows.values())).max() < 26000
    for k in ("train", "val", "test"):
        assert (np.diff(rows[k]) < 0).any(), f"{k} rows are not shuffled"
    np.testing.assert_allclose(p["scaler"].mean, series.values[rows["train"]].astype(np.float64).mean(0))

    ds = p["train"]
    assert isinstance(ds, NextStepDataset) and len(ds) == 18200 - 32 and ds.target == 2
    x, y = ds.batch(np.arange(len(ds)))
    assert x.shape == (len(ds), 32, 3) and y.shape == (len(ds), 32)
    torch.testing.assert_close(y[:, :31], x[:, 1:, 2], rtol=0, atol=0)  # 31 of 32 targets are inputs
    assert (y[:, 31] != x[:, 31, 2]).all()
    xi, yi = ds[5]
    torch.testing.assert_close(xi, x[5])
    torch.testing.assert_close(yi, y[5])
    # a window's rows are consecutive in the SHUFFLED order, so they jump around in time
    np.testing.assert_array_equal(_rows_of(p["scaler"], x[0]), rows["train"][:32])


def test_leaky_protocol_on_real_etth1(etth1):
    p = leaky_protocol(etth1)
    n = N_ETT_ROWS
    assert [len(p["rows"][k]) for k in ("train", "val", "test")] == [int(0.7 * n), int(0.2 * n), 1742]
    x, y = p["test"].batch([0, 1, 2])
    torch.testing.assert_close(y[:, :31], x[:, 1:, 6], rtol=0, atol=0)


def test_chronological_next_step_is_ordered():
    series = _tagged_series(2000, 2, "ELC")
    p = chronological_next_step(series)
    rows = p["rows"]
    assert [len(rows[k]) for k in ("train", "val", "test")] == [1400, 400, 200]
    np.testing.assert_array_equal(np.concatenate([rows["train"], rows["val"], rows["test"]]), np.arange(2000))
    np.testing.assert_allclose(p["scaler"].mean, series.values[:1400].astype(np.float64).mean(0))
    for k in ("train", "val", "test"):
        x, y = p[k].batch(np.arange(len(p[k])))
        xr = _rows_of(p["scaler"], x)
        np.testing.assert_array_equal(xr, rows[k][0] + np.arange(len(p[k]))[:, None] + np.arange(32))
        torch.testing.assert_close(y[:, :31], x[:, 1:, 1], rtol=0, atol=0)


def test_next_step_dataset_errors():
    with pytest.raises(InputError, match="no next-step window of 32"):
        NextStepDataset(np.zeros((32, 3)), window=32)
    with pytest.raises(InputError, match="out of range"):
        NextStepDataset(np.zeros((40, 3)), target=3)
    with pytest.raises(InputError, match="integer column index"):
        NextStepDataset(np.zeros((40, 3)), target="OT")
    ds = NextStepDataset(np.zeros((40, 3)), window=32)
    assert len(ds) == 8
    with pytest.raises(IndexError):
        ds[8]
