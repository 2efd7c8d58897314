"""IDX files, Fashion-MNIST loading (real files and the scikit-learn fallback), the two datasets."""

from __future__ import annotations

import gzip
import logging
import sys
import types

import numpy as np
import pytest
import torch

from rwkvkit.data import DataError
from rwkvkit.vision import data as vd
from rwkvkit.vision.data import (
    CLASS_NAMES,
    ClassificationDataset,
    SegmentationDataset,
    has_fashion_mnist,
    load_fashion_mnist,
    read_idx,
    write_idx,
)


def _items(n=12, side=28, seed=0):
    """Fake uint8 items: a bright filled rectangle of random size on black, labels 0-9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, side, side), np.uint8)
    for i in range(n):
        h, w = rng.integers(6, side, size=2)
        y, x = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
        images[i, y : y + h, x : x + w] = rng.integers(40, 256)
        images[i, 0, 0] = 20  # faint pixel, under the mask threshold
    return images, np.arange(n, dtype=np.int64) % 10


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = write_idx(tmp_path / name, a)
    raw = p.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:8] == (5).to_bytes(4, "big")
    b = read_idx(p)
    assert b.dtype == np.uint8 and np.array_equal(a, b)
    labels = np.arange(9, dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / ("l" + name), labels)), labels)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(read_idx(write_idx(tmp_path / ("f" + name), f)), f)


def test_idx_errors(tmp_path):
    p = write_idx(tmp_path / "a.idx", np.zeros((4, 5), np.uint8))
    raw = p.read_bytes()
    (tmp_path / "trunc.idx").write_bytes(raw[:-3])
    with pytest.raises(DataError, match="truncated IDX data"):
        read_idx(tmp_path / "trunc.idx")
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "trunc.gz")
    (tmp_path / "bad.idx").write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "head.idx").write_bytes(raw[:6])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(tmp_path / "head.idx")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing.idx")


@pytest.mark.skipif(
    not has_fashion_mnist(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_present():
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = load_fashion_mnist(split=split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert y.min() == 0 and y.max() == 9 and np.bincount(y).tolist() == [n // 10] * 10
    assert len(CLASS_NAMES) == 10
    ds = ClassificationDataset("test", resize=32, augment=True)
    img, label = ds[0]
    assert img.shape == (1, 32, 32) and img.dtype == torch.float32 and 0 <= label < 10


def test_missing_root_errors(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)  # an explicit root never falls back
    with pytest.raises(DataError, match="unknown split"):
        load_fashion_mnist(tmp_path, split="val")


def test_env_var_root(tmp_path, monkeypatch):
    images, labels = _items(6)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels.astype(np.uint8))
    monkeypatch.setenv("RWKVKIT_FASHION_MNIST", str(tmp_path))
    x, y = load_fashion_mnist(split="test")
    assert np.array_equal(x, images) and np.array_equal(y, labels) and y.dtype == np.int64


def _fake_sklearn(monkeypatch):
    """A stand-in sklearn.datasets.load_digits (scikit-learn itself is optional)."""
    rng = np.random.default_rng(0)
    bunch = types.SimpleNamespace(
        images=rng.integers(0, 17, (400, 8, 8)).astype(np.float64), target=np.arange(400) % 10
    )
    sk, skd = types.ModuleType("sklearn"), types.ModuleType("sklearn.datasets")
    skd.load_digits = lambda: bunch
    sk.datasets = skd
    monkeypatch.setitem(sys.modules, "sklearn", sk)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", skd)


def test_fallback_to_digits(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(vd, "DEFAULT_ROOT", tmp_path / "nothing")
    monkeypatch.delenv("RWKVKIT_FASHION_MNIST", raising=False)
    _fake_sklearn(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="rwkvkit.vision.data"):
        x, y = load_fashion_mnist(split="train")
    assert "digits" in caplog.text and "dataset-fashion-mnist" in caplog.text
    xt, yt = load_fashion_mnist(split="test")
    assert x.shape == (100, 28, 28) and xt.shape == (300, 28, 28) and x.dtype == np.uint8
    assert y.dtype == np.int64 and 0 <= y.min() and y.max() <= 9
    assert x.max() > 200  # scaled from 0-16 to 0-255
    x2, _ = load_fashion_mnist(split="train")
    assert np.array_equal(x, x2)  # deterministic split
    # no scikit-learn either: a DataError that says how to install
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        load_fashion_mnist(split="train")


def test_classification_dataset_given_data():
    images, labels = _items(4)
    ds = ClassificationDataset(data=(images, labels))
    x, y = ds[1]
    ref = (torch.from_numpy(images[1]).float() / 255 - vd.FASHION_MNIST_MEAN) / vd.FASHION_MNIST_STD
    assert x.shape == (1, 28, 28) and y == labels[1] and torch.allclose(x[0], ref)
    aug = ClassificationDataset(data=(images, labels), augment=True, resize=32)
    xa, _ = aug[1]
    assert xa.shape == (1, 32, 32)
    with pytest.raises(DataError, match="uint8"):
        ClassificationDataset(data=(images.astype(np.float32), labels))


def test_segmentation_determinism_and_consistency():
    data = _items(12)
    ds = SegmentationDataset("train", n=20, seed=3, data=data)
    again = SegmentationDataset("train", n=20, seed=3, data=data)
    other = SegmentationDataset("train", n=20, seed=4, data=data)
    differs = False
    for i in range(len(ds)):
        img, pt, mask, cls = ds[i]
        img2, pt2, mask2, cls2 = again[i]
        assert torch.equal(img, img2) and torch.equal(pt, pt2) and torch.equal(mask, mask2) and cls == cls2
        differs |= not torch.equal(img, other[i][0])
        assert img.shape == mask.shape == (1, 64, 64) and pt.dtype == torch.int64 and pt.shape == (2,)
        assert mask[0, pt[0], pt[1]] == 1  # the prompt lies inside the target mask
        ex = ds.compose(i)
        k = len(ex["masks"])
        assert 2 <= k <= 4 and ex["classes"][ex["target"]] == cls
        assert ex["masks"].sum(0).max() <= 1  # items never overlap
        raw = ex["image"]
        assert np.array_equal(ex["masks"].any(0), raw > 32)  # masks are exactly pixel > 32
        assert np.array_equal(ex["label_map"] > 0, raw > 32)
        b = ex["boxes"]
        for a in range(k):
            for c in range(a + 1, k):
                assert b[a, 2] <= b[c, 0] or b[c, 2] <= b[a, 0] or b[a, 3] <= b[c, 1] or b[c, 3] <= b[a, 1]
    assert differs


def test_segmentation_random_placement():
    data = _items(12)
    ds = SegmentationDataset("test", n=6, canvas=96, items=(2, 4), placement="random", seed=1, data=data)
    for i in range(len(ds)):
        ex = ds.compose(i)
        assert ex["masks"].sum(0).max() <= 1
        assert ex["masks"][ex["target"]][ex["point"]]
    with pytest.raises(DataError, match="canvas"):
        SegmentationDataset(n=1, canvas=40, data=data)
    with pytest.raises(IndexError):
        ds.compose(6)
