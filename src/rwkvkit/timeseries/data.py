"""Multivariate time series: a CSV loader, standardisation, chronological splits and windows.

Conventions (numpy + torch + the standard library only; no pandas, no scikit-learn):

- A :class:`Series` is ``values`` float32 ``[T, M]`` (T rows in file order, M variables), the variable
  names, and the date column kept as text. Rows are indexed 0..T-1 in file order.
- A :class:`Split` names the TARGET rows ``[start, end)`` of train, val or test.
- A forecasting window with start ``s`` has its input on rows ``[s, s + lookback)`` and its targets
  on rows ``[s + lookback, s + lookback + horizon)``. Every start is used (stride 1). All M variables
  are both input and output (the "M" setting of the literature).
- The standard protocol (``Dataset_ETT_hour`` of Informer, Autoformer, DLinear and PatchTST) for
  ETTh1/ETTh2: train rows ``[0, 8640)``, val ``[8640, 11520)``, test ``[11520, 14400)`` (12/4/4 months
  of 30 days x 24 hours). The inputs of val and test windows start ``lookback`` rows before the
  split, so the first targets are the split's first row and every target lies in its split; train
  windows lie entirely inside the train rows. Rows 14400..17419 of the 17420-row ETTh files are not
  used by this protocol. ETTm1/ETTm2 (15-minute data, not shipped) use the same borders x4; any
  other series gets the chronological 70/10/20 train/val/test split of Autoformer's ``Dataset_Custom``.
- The :class:`Scaler` (per-variable mean and population standard deviation) is fitted on the train
  rows only; models see standardised values and metrics are usually reported in that space.
- :func:`leaky_protocol` reproduces, for comparison only, the seed repository's evaluation: rows
  shuffled at random before the 70/20/10 split, next-step windows whose 32 targets include 31 input
  rows shifted by one. :func:`chronological_next_step` is its control with a chronological split.

Every error a caller can cause (a missing file, a bad cell, an unknown column, a series too short
for its split) raises :class:`~rwkvkit.errors.InputError` naming the problem and what to do.
"""

from __future__ import annotations

import csv
import math
import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rwkvkit.errors import InputError

# ------------------------------------------------------------------------------------------ the series


@dataclass(eq=False)
class Series:
    """One multivariate series read from a CSV: ``values`` float32 ``[T, M]`` in file order."""

    dates: list[str]  # the date column as text; [] when the file has none
    values: np.ndarray  # float32 [T, M]
    columns: list[str]  # the M variable names, in file order (the date column excluded)
    name: str = ""  # e.g. "ETTh1" (the file stem)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_vars(self) -> int:
        return int(self.values.shape[1])

    def column_index(self, name_or_index: str | int) -> int:
        """The index of a variable given by name (``"OT"``; case-insensitive if unambiguous) or by a
        possibly negative index (``-1`` is the last variable). Raises :class:`InputError` if unknown."""
        return _column_index(self.columns, name_or_index, what=self.name or "the series")


def _column_index(columns: Sequence[str], name_or_index: str | int, what: str) -> int:
    if isinstance(name_or_index, (bool, np.bool_)):
        raise InputError(f"column {name_or_index!r}: give a column name or an integer index")
    if isinstance(name_or_index, (int, np.integer)):
        i = int(name_or_index)
        if not -len(columns) <= i < len(columns):
            raise InputError(
                f"column index {i} is out of range for {what}, which has {len(columns)} variables "
                f"{list(columns)}; use an index in [{-len(columns)}, {len(columns)})"
            )
        return i % len(columns)
    if isinstance(name_or_index, str):
        if name_or_index in columns:
            return list(columns).index(name_or_index)
        folded = [i for i, c in enumerate(columns) if c.lower() == name_or_index.lower()]
        if len(folded) == 1:
            return folded[0]
        raise InputError(f"unknown column {name_or_index!r} in {what}; the variables are {list(columns)}")
    raise InputError(
        f"column {name_or_index!r} is a {type(name_or_index).__name__}; give a name or an integer index"
    )


def load_csv(
    path: str | os.PathLike[str],
    date_column: str | None = "date",
    columns: Sequence[str] | None = None,
) -> Series:
    """Read a CSV with a header row into a :class:`Series`.

    ``date_column`` is found by name (case-insensitive) and kept as text; it must exist unless it is
    ``None`` (then every column is a variable). Every other cell must parse as a finite number.
    ``columns`` selects and orders the variables (default: all, in file order). Blank lines are
    skipped. Raises :class:`InputError` for a missing or empty file, a missing date column, an
    unknown or repeated column, a row with the wrong number of cells, or a bad cell (the message
    names the line and the column).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            records = [(reader.line_num, r) for r in reader]  # (file line where the record ends, cells)
    except OSError as e:
        raise InputError(f"cannot read CSV file {path}: {e.strerror or e}; check the path") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path} is not a readable UTF-8 CSV file ({e})") from e
    records = [(line, r) for line, r in records if any(c.strip() for c in r)]  # skip blank lines
    if not records:
        raise InputError(f"{path} is empty; a CSV with a header row and at least one data row is needed")
    header = [h.strip() for h in records[0][1]]
    data = records[1:]

    date_idx: int | None = None
    if date_column is not None:
        matches = [i for i, h in enumerate(header) if h.lower() == date_column.lower()]
        if not matches:
            raise InputError(
                f"{path}: no date column {date_column!r} in the header; the columns are {header}. "
                "Pass date_column= with the right name, or date_column=None if the file has none"
            )
        date_idx = matches[0]
    var_idx = [i for i in range(len(header)) if i != date_idx]
    var_names = [header[i] for i in var_idx]
    if not var_names:
        raise InputError(f"{path}: the header {header} has no variable column besides the date")
    seen: set[str] = set()
    for n in var_names:
        if n in seen:
            raise InputError(f"{path}: the header names column {n!r} twice; give each column a unique name")
        seen.add(n)

    if columns is not None:
        if isinstance(columns, str):
            columns = [columns]
        if len(columns) == 0:
            raise InputError("columns= is empty; name at least one variable or leave it as None")
        picked: list[int] = []
        for c in columns:
            if not isinstance(c, str):
                raise InputError(f"columns= takes column names, got {c!r}; the variables are {var_names}")
            if date_idx is not None and c.lower() == header[date_idx].lower():
                raise InputError(f"columns= names the date column {c!r}; it is text, not a variable")
            try:
                j = _column_index(var_names, c, what=str(path))
            except InputError as e:
                raise InputError(f"columns=: {e}") from None
            if j in picked:
                raise InputError(f"columns= names {var_names[j]!r} twice; name each variable once")
            picked.append(j)
        var_idx = [var_idx[j] for j in picked]
        var_names = [var_names[j] for j in picked]

    if not data:
        raise InputError(f"{path} has a header but no data rows")
    width = len(header)
    values = np.empty((len(data), len(var_idx)), dtype=np.float64)
    dates: list[str] = []
    for r, (line, cells) in enumerate(data):
        if len(cells) != width:
            raise InputError(
                f"{path}, line {line} (data row {r}): {len(cells)} cells, the header has {width}; "
                "fix or remove that line"
            )
        if date_idx is not None:
            dates.append(cells[date_idx].strip())
        for k, i in enumerate(var_idx):
            cell = cells[i]
            try:
                v = float(cell)
            except ValueError:
                v = None
            if v is None or not math.isfinite(v):
                raise InputError(
                    f"{path}, line {line} (data row {r}), column {header[i]!r}: {cell!r} is not a "
                    "finite number; fill in or remove the missing or bad value"
                )
            values[r, k] = v
    return Series(dates=dates, values=values.astype(np.float32), columns=var_names, name=path.stem)


# ------------------------------------------------------------------------------------- standardising


def _as_float64_matrix(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


class Scaler:
    """Per-variable standardisation ``(x - mean) / std`` over the last axis (``[..., M]``).

    ``mean`` and ``std`` are float64 ``[M]``; ``std`` is the population standard deviation (ddof=0,
    as scikit-learn's ``StandardScaler``), clamped to at least ``1e-8`` so a constant variable maps
    to 0 instead of dividing by zero.
    """

    MIN_STD = 1e-8

    def __init__(self, mean: Any, std: Any) -> None:
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        std = np.asarray(std, dtype=np.float64).reshape(-1)
        if mean.shape != std.shape or mean.size == 0:
            raise InputError(
                f"Scaler needs mean and std of the same non-zero length, got {mean.size} and {std.size}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise InputError("Scaler mean/std contain NaN or infinity; fit it on finite values")
        self.mean = mean
        self.std = np.maximum(std, self.MIN_STD)

    @property
    def n_vars(self) -> int:
        return int(self.mean.size)

    @classmethod
    def fit(cls, values: Any) -> Scaler:
        """Fit on ``values`` ``[N, M]`` (or ``[..., M]``; all leading axes are pooled)."""
        arr = _as_float64_matrix(values)
        if arr.ndim < 1 or arr.shape[-1] == 0:
            raise InputError(f"Scaler.fit needs values of shape [N, M], got {arr.shape}")
        arr = arr.reshape(-1, arr.shape[-1])
        if arr.shape[0] == 0:
            raise InputError("Scaler.fit got no rows; fit it on at least one row")
        if not np.isfinite(arr).all():
            raise InputError("Scaler.fit got NaN or infinite values; clean the data first")
        return cls(arr.mean(axis=0), arr.std(axis=0))

    def _check(self, values: Any) -> None:
        shape = tuple(values.shape)
        if len(shape) == 0 or shape[-1] != self.n_vars:
            raise InputError(
                f"the Scaler was fitted on {self.n_vars} variables, got values of shape {list(shape)}; "
                f"the last axis must be {self.n_vars}"
            )

    def transform(self, values: Any) -> Any:
        """Standardise ``[..., M]`` values: numpy in, float32 numpy out; a torch tensor in, a tensor
        out (same device; float32 unless the input is another floating type). Computed in float64."""
        if isinstance(values, torch.Tensor):
            self._check(values)
            dtype = values.dtype if values.is_floating_point() else torch.float32
            mean = torch.as_tensor(self.mean, dtype=torch.float64, device=values.device)
            std = torch.as_tensor(self.std, dtype=torch.float64, device=values.device)
            return values.to(torch.float64, copy=True).sub_(mean).div_(std).to(dtype)
        arr = np.asarray(values, dtype=np.float64)
        self._check(arr)
        return ((arr - self.mean) / self.std).astype(np.float32)

    def inverse(self, values: Any) -> Any:
        """Undo :meth:`transform` on ``[..., M]`` values; returns the input's type (numpy or torch),
        keeping a floating dtype (else float64 numpy / float32 torch). Computed in float64."""
        if isinstance(values, torch.Tensor):
            self._check(values)
            dtype = values.dtype if values.is_floating_point() else torch.float32
            mean = torch.as_tensor(self.mean, dtype=torch.float64, device=values.device)
            std = torch.as_tensor(self.std, dtype=torch.float64, device=values.device)
            return values.to(torch.float64, copy=True).mul_(std).add_(mean).to(dtype)
        arr = np.asarray(values)
        self._check(arr)
        dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
        return (arr.astype(np.float64) * self.std + self.mean).astype(dtype)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-able form: ``{"mean": [...], "std": [...]}``."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scaler:
        if not isinstance(d, Mapping) or "mean" not in d or "std" not in d:
            raise InputError("a Scaler dict needs the keys 'mean' and 'std' (as written by Scaler.to_dict)")
        return cls(d["mean"], d["std"])

    def __repr__(self) -> str:
        return f"Scaler(n_vars={self.n_vars})"


# ------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """The target rows ``[start, end)`` of one split (``name`` is "train", "val" or "test")."""

    name: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise InputError(f"split {self.name!r}: rows [{self.start}, {self.end}) is empty or negative")

    def __len__(self) -> int:
        return self.end - self.start


def _borders(scale: int) -> Mapping[str, Split]:
    month = 30 * 24 * scale
    return types.MappingProxyType(
        {
            "train": Split("train", 0, 12 * month),
            "val": Split("val", 12 * month, 16 * month),
            "test": Split("test", 16 * month, 20 * month),
        }
    )


ETT_HOURLY_BORDERS: Mapping[str, Split] = _borders(
    1
)  # train [0, 8640), val [8640, 11520), test [11520, 14400)
ETT_MINUTE_BORDERS: Mapping[str, Split] = _borders(4)  # ETTm1/ETTm2 (15-minute rows): the same x4
ETT_MINUTE = ETT_MINUTE_BORDERS

SPLIT_KINDS = ("auto", "ett_hour", "ett_minute", "custom")
CUSTOM_FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test of Autoformer's Dataset_Custom


def standard_split(series_name_or_n_rows: Series | str | int, kind: str = "auto") -> dict[str, Split]:
    """The literature's train/val/test target rows for a series.

    Give a :class:`Series` (its name picks the borders, its length is checked), a name, or a row
    count. ``kind``: ``"auto"`` (a name starting ``ETTh`` -> :data:`ETT_HOURLY_BORDERS`, ``ETTm`` ->
    :data:`ETT_MINUTE_BORDERS`, anything else -> ``"custom"``), ``"ett_hour"``, ``"ett_minute"``, or
    ``"custom"``: chronological 70/10/20 of the rows (train ``int(0.7 n)``, test ``int(0.2 n)``, val
    the rest). Raises :class:`InputError` when the series is shorter than the borders need.
    """
    arg = series_name_or_n_rows
    if isinstance(arg, Series):
        name, n_rows = arg.name, len(arg)
    elif isinstance(arg, str):
        name, n_rows = arg, None
    elif isinstance(arg, (int, np.integer)) and not isinstance(arg, bool):
        name, n_rows = "", int(arg)
    else:
        raise InputError(f"standard_split needs a Series, a series name or a row count, got {arg!r}")
    if kind not in SPLIT_KINDS:
        raise InputError(f"unknown split kind {kind!r}; use one of {', '.join(SPLIT_KINDS)}")
    if kind == "auto":
        low = name.lower()
        kind = "ett_hour" if low.startswith("etth") else "ett_minute" if low.startswith("ettm") else "custom"

    if kind in ("ett_hour", "ett_minute"):
        borders = ETT_HOURLY_BORDERS if kind == "ett_hour" else ETT_MINUTE_BORDERS
        need = borders["test"].end
        if n_rows is not None and n_rows < need:
            raise InputError(
                f"series {name or '(unnamed)'} has {n_rows} rows; the {kind} split needs at least {need} "
                "(its test rows end there); use kind='custom' for a shorter series"
            )
        return dict(borders)

    if n_rows is None:
        raise InputError(
            f"the custom 70/10/20 split of {name!r} needs the number of rows; pass the Series or its length"
        )
    n_train = int(n_rows * CUSTOM_FRACTIONS[0])
    n_test = int(n_rows * CUSTOM_FRACTIONS[2])
    n_val = n_rows - n_train - n_test
    if min(n_train, n_val, n_test) < 1:
        raise InputError(
            f"a series of {n_rows} rows is too short for a 70/10/20 train/val/test split; "
            "every split needs at least one row"
        )
    return {
        "train": Split("train", 0, n_train),
        "val": Split("val", n_train, n_train + n_val),
        "test": Split("test", n_train + n_val, n_rows),
    }


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def chronological_windows(
    n_rows: int, split: Split, lookback: int, horizon: int, stride: int = 1
) -> np.ndarray:
    """Window start rows (int64, ascending) whose targets ``[s + lookback, s + lookback + horizon)``
    all lie in ``split``.

    The input of a val/test window may reach back before ``split.start`` (by up to ``lookback``
    rows, never before row 0), so ``s`` runs over ``[split.start - lookback, split.end - lookback -
    horizon]``. For the split named ``"train"`` the input must lie inside the split too
    (``s >= split.start``). Raises :class:`InputError` when no window fits.
    """
    lookback = _positive_int(lookback, "lookback")
    horizon = _positive_int(horizon, "horizon")
    stride = _positive_int(stride, "stride")
    if split.end > n_rows:
        raise InputError(
            f"split {split.name!r} ends at row {split.end} but the series has only {n_rows} rows; "
            "use a split that fits the series"
        )
    lo = split.start if split.name == "train" else max(split.start - lookback, 0)
    hi = split.end - lookback - horizon  # last start, inclusive
    if hi < lo:
        reach = "inside" if split.name == "train" else "targets inside"
        raise InputError(
            f"no {split.name} window fits: lookback={lookback} + horizon={horizon} rows with the "
            f"{reach} the {split.name} split of {len(split)} rows [{split.start}, {split.end}) "
            f"(first usable input row {lo}); use a shorter lookback or horizon"
        )
    return np.arange(lo, hi + 1, stride, dtype=np.int64)


# ------------------------------------------------------------------------------------------ datasets


def _as_float32_tensor(values: Any, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        t = values.detach().to("cpu", torch.float32).contiguous()
    else:
        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if t.ndim != 2:
        raise InputError(f"{what} needs values of shape [rows, variables], got {list(t.shape)}")
    return t


def _as_index(indices: Any, n: int) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    idx = idx.reshape(-1).long()
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"batch indices must lie in [{-n}, {n}), got [{int(idx.min())}, {int(idx.max())}]")
    return idx % n if n else idx


class WindowDataset(Dataset):
    """Forecasting windows over standardised values ``[T, M]``.

    Item ``i`` is ``(x, y)``: ``x`` = rows ``[s, s + lookback)`` ``[lookback, M]`` and ``y`` = rows
    ``[s + lookback, s + lookback + horizon)`` ``[horizon, M]`` (float32 tensors) with
    ``s = starts[i]``. :meth:`batch` gathers many windows at once without a DataLoader.
    """

    def __init__(self, values_std: Any, starts: Any, lookback: int, horizon: int) -> None:
        self.values = _as_float32_tensor(values_std, "WindowDataset")
        self.lookback = _positive_int(lookback, "lookback")
        self.horizon = _positive_int(horizon, "horizon")
        self.starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        last = self.values.shape[0] - self.lookback - self.horizon
        if self.starts.size and (self.starts.min() < 0 or self.starts.max() > last):
            raise InputError(
                f"window starts must lie in [0, {last}] for {self.values.shape[0]} rows with "
                f"lookback={self.lookback}, horizon={self.horizon}; got [{self.starts.min()}, "
                f"{self.starts.max()}]"
            )
        self._starts_t = torch.from_numpy(self.starts)
        self._offsets = torch.arange(self.lookback + self.horizon)

    @property
    def n_vars(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return int(self.starts.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        s = int(self.starts[i])
        w = self.values[s : s + self.lookback + self.horizon].clone()
        return w[: self.lookback], w[self.lookback :]

    def batch(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [B, lookback, M], y [B, horizon, M])`` for the windows at ``indices``."""
        idx = _as_index(indices, len(self))
        rows = self._starts_t[idx][:, None] + self._offsets  # [B, L + H]
        w = self.values[rows]
        return w[:, : self.lookback], w[:, self.lookback :]


def prepare(series: Series, lookback: int, horizon: int, split_kind: str = "auto") -> dict[str, Any]:
    """The standard forecasting protocol for ``series``.

    Splits by :func:`standard_split`, fits the :class:`Scaler` on the train rows
    ``[train.start, train.end)`` only, standardises the whole series and builds one
    :class:`WindowDataset` per split with :func:`chronological_windows` (stride 1). Returns
    ``{"scaler", "values" (float32 [T, M] standardised), "splits", "train", "val", "test"}``.
    """
    splits = standard_split(series, split_kind)
    train = splits["train"]
    scaler = Scaler.fit(series.values[train.start : train.end])
    values = scaler.transform(series.values)
    out: dict[str, Any] = {"scaler": scaler, "values": values, "splits": splits}
    for name, split in splits.items():
        starts = chronological_windows(len(series), split, lookback, horizon)
        out[name] = WindowDataset(values, starts, lookback, horizon)
    return out


# ---------------------------------------------------------------- the seed's next-step protocol


def shuffled_row_split(
    n_rows: int, fractions: Sequence[float] = (0.7, 0.2, 0.1), seed: int = 42
) -> dict[str, np.ndarray]:
    """Assign rows to train/val/test at random (the seed repository's leaky split).

    ``np.random.default_rng(seed).permutation(n_rows)``: train is its first ``floor(0.7 n)``
    entries, val the next ``floor(0.2 n)``, test the rest. Each split keeps the SHUFFLED order.
    """
    n_rows = _positive_int(n_rows, "n_rows")
    sizes = _fraction_sizes(n_rows, fractions)
    perm = np.random.default_rng(seed).permutation(n_rows).astype(np.int64)
    a, b = sizes[0], sizes[0] + sizes[1]
    return {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}


def _fraction_sizes(n_rows: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise InputError(
            f"fractions must be three positive numbers summing to 1 (train, val, test), got {fr}"
        )
    n_train = math.floor(n_rows * fr[0] + 1e-9)
    n_val = math.floor(n_rows * fr[1] + 1e-9)
    n_test = n_rows - n_train - n_val
    if min(n_train, n_val, n_test) < 1:
        raise InputError(f"{n_rows} rows are too few to split {fr}; every split needs at least one row")
    return n_train, n_val, n_test


class NextStepDataset(Dataset):
    """Next-step windows over the rows of one split, in the given order (the seed's ``PowerDataset``).

    Item ``i`` (``0 <= i < R - window``): ``x`` = rows ``[i, i + window)``, all variables
    ``[window, M]``; ``y`` = rows ``[i + 1, i + window + 1)`` of the ``target`` variable ``[window]``.
    So 31 of 32 targets are also inputs, shifted by one row.
    """

    def __init__(self, values_std: Any, window: int = 32, target: int = -1) -> None:
        self.values = _as_float32_tensor(values_std, "NextStepDataset")
        self.window = _positive_int(window, "window")
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            raise InputError(f"NextStepDataset target must be an integer column index, got {target!r}")
        self.target = _column_index([str(i) for i in range(self.values.shape[1])], target, "the values")
        if self.values.shape[0] <= self.window:
            raise InputError(
                f"{self.values.shape[0]} rows give no next-step window of {self.window} rows; "
                f"need more than {self.window} rows or a smaller window"
            )
        self._offsets = torch.arange(self.window + 1)

    @property
    def n_vars(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return int(self.values.shape[0]) - self.window

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        i %= n
        w = self.values[i : i + self.window + 1]
        return w[:-1].clone(), w[1:, self.target].clone()

    def batch(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [B, window, M], y [B, window])`` for the windows at ``indices``."""
        idx = _as_index(indices, len(self))
        w = self.values[idx[:, None] + self._offsets]  # [B, window + 1, M]
        return w[:, :-1], w[:, 1:, self.target]


def _next_step(
    series: Series, rows: dict[str, np.ndarray], window: int, target: str | int, n: int
) -> dict[str, Any]:
    t = series.column_index(target)
    values = series.values[:n]
    scaler = Scaler.fit(values[rows["train"]])
    std = scaler.transform(values)
    out: dict[str, Any] = {"scaler": scaler, "rows": rows}
    for name, r in rows.items():
        out[name] = NextStepDataset(std[r], window=window, target=t)
    return out


def leaky_protocol(
    series: Series, window: int = 32, target: str | int = "OT", seed: int = 42, max_rows: int = 26000
) -> dict[str, Any]:
    """The seed repository's evaluation, for comparison: the first ``max_rows`` rows, shuffled by
    :func:`shuffled_row_split` (70/20/10), a :class:`Scaler` fitted on the train rows, one
    :class:`NextStepDataset` per split over its rows in shuffled order. Returns
    ``{"scaler", "train", "val", "test", "rows": {split: row indices}}``."""
    n = min(len(series), _positive_int(max_rows, "max_rows"))
    return _next_step(series, shuffled_row_split(n, seed=seed), window, target, n)


def chronological_next_step(
    series: Series, window: int = 32, target: str | int = "OT", max_rows: int = 26000
) -> dict[str, Any]:
    """The control for :func:`leaky_protocol`: the same next-step windows and scaler, but the first
    ``max_rows`` rows split chronologically 70/20/10 (row order kept). Same return keys."""
    n = min(len(series), _positive_int(max_rows, "max_rows"))
    a, b, _ = _fraction_sizes(n, (0.7, 0.2, 0.1))
    rows = {
        "train": np.arange(0, a, dtype=np.int64),
        "val": np.arange(a, a + b, dtype=np.int64),
        "test": np.arange(a + b, n, dtype=np.int64),
    }
    return _next_step(series, rows, window, target, n)


__all__ = [
    "CUSTOM_FRACTIONS",
    "ETT_HOURLY_BORDERS",
    "ETT_MINUTE",
    "ETT_MINUTE_BORDERS",
    "NextStepDataset",
    "Scaler",
    "Series",
    "Split",
    "WindowDataset",
    "chronological_next_step",
    "chronological_windows",
    "leaky_protocol",
    "load_csv",
    "prepare",
    "shuffled_row_split",
    "standard_split",
]
