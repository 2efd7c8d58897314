"""``rwkvkit vision train|eval|predict`` end to end on a tiny synthetic IDX dataset (no system data)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from rwkvkit.cli.main import main


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory) -> Path:
    """A Fashion-MNIST-shaped folder: 10 blob 'classes' whose position depends on the label (learnable)."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("t10k", 96)):
        labels = rng.integers(0, 10, n)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, c in enumerate(labels):
            y, x = 4 + 2 * (c // 5) * 5, 3 + 4 * (c % 5)
            images[i, y : y + 8, x : x + 6] = 200 + rng.integers(0, 55)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def test_classification_train_eval_predict(tmp_path, fake_fashion, capsys):
    out = tmp_path / "vrwkv"
    args = ["vision", "train", "--model", "vrwkv-t", "--set", "embed_dim=32", "--set", "depth=2",
            "--set", "patch_size=7", "--img-size", "28", "--epochs", "6", "--batch-size", "32",
            "--data", str(fake_fashion), "--out", str(out), "--no-progress", "--lr", "3e-3",
            "--warmup-epochs", "0", "--no-augment"]  # fmt: skip
    assert main(args) == 0
    assert "done: vrwkv-t" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["model"] == "vrwkv-t" and meta["task"] == "classify"
    assert (out / "model.safetensors").is_file() and (out / "metrics.csv").is_file()
    assert main(["vision", "eval", str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith("accuracy ")
    assert float(line.split()[1]) > 0.2  # 10 classes: chance is 0.1; the blobs are easy
    png = tmp_path / "pred.png"
    assert main(["vision", "predict", str(out), "--index", "3", "--out", str(png)]) == 0
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_segmentation_train_and_predict_image(tmp_path, fake_fashion, capsys):
    out = tmp_path / "sam"
    args = ["vision", "train", "--model", "sam-tiny", "--set", "n_blocks=1", "--img-size", "64",
            "--epochs", "1", "--batch-size", "8", "--seg-train", "16", "--seg-test", "8",
            "--data", str(fake_fashion), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert main(["vision", "eval", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("miou ") and "boundary_iou" in line
    png = tmp_path / "mask.png"
    assert main(["vision", "predict", str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    # a prompt outside the canvas is a one-line error
    assert main(["vision", "predict", str(out), "--point", "500,3", "--out", str(png)]) == 2
    assert "outside" in capsys.readouterr().err


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["vision", "train", "--model", "resnet-50", "--out", str(tmp_path)]) == 2
    assert "unknown vision model" in capsys.readouterr().err
    assert main(["vision", "train", "--model", "vrwkv-t", "--set", "nonsense", "--out", str(tmp_path)]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err
    assert main(["vision", "eval", str(tmp_path / "missing")]) == 2
    assert "not a model folder of `rwkvkit vision train`" in capsys.readouterr().err


def test_lr_schedule_and_param_groups():
    from rwkvkit.vision.train import build_model, lr_at, param_groups

    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.01)
    model = build_model(
        "vrwkv-t", embed_dim=32, depth=2, img_size=28, patch_size=7, num_classes=10, in_chans=1
    )
    decay, no_decay = param_groups(model, 0.05)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )
