"""The run-folder helpers every trainer shares (rwkvkit.utils.runlog) and the autocast rule."""

from __future__ import annotations

import csv

import pytest
import torch

from rwkvkit.errors import ConfigError
from rwkvkit.utils.precision import autocast
from rwkvkit.utils.runlog import NO_VALIDATION, format_row, write_csv


def test_write_csv_marks_missing_validation(tmp_path):
    rows = [
        {"step": 1, "train_loss": 2.5},
        {"step": 2, "train_loss": 2.25, "val_loss": None, "val_bpb": None},
        {"step": 3, "train_loss": 2.0, "val_loss": 1.75},
    ]
    write_csv(tmp_path / "loss.csv", rows, ["step", "train_loss", "val_loss", "val_bpb"])
    with open(tmp_path / "loss.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["val_loss"] for r in got] == ["", NO_VALIDATION, "1.75"]  # absent, ran on no data, a value
    assert [r["val_bpb"] for r in got] == ["", NO_VALIDATION, ""]
    assert [r["train_loss"] for r in got] == ["2.5", "2.25", "2.0"]


def test_format_row():
    assert (
        format_row({"epoch": 2, "train_loss": 0.123456, "name": "x"}) == "epoch 2  train_loss 0.1235  name x"
    )


def test_autocast_follows_the_precision():
    with autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ConfigError, match="precision must be bf16 or fp32"):
        autocast("fp16", "cpu")
