"""Offline image data: IDX files, Fashion-MNIST, a classification set and a composed segmentation set.

Nothing here downloads anything (docs/data.md#offline-data):

- Fashion-MNIST (60000 train + 10000 test, 28x28 uint8, 10 classes, MIT) is read from the Debian
  package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``), from the
  folder named by the environment variable ``RWKVKIT_FASHION_MNIST``, or from a ``root`` you pass.
- When neither the package nor the variable gives the files, scikit-learn's bundled 8x8 digits
  (1797 images, upsampled to 28x28, split 1497 train / 300 test with a fixed permutation) stand in,
  with a logged warning; without scikit-learn a :class:`~rwkvkit.data.DataError` says how to install.
- :class:`SegmentationDataset` composes 2-4 items on a canvas; the mask of an item is ``pixel > 32``.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rwkvkit.data.binidx import DataError

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "RWKVKIT_FASHION_MNIST"

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASS_NAMES = tuple(str(i) for i in range(10))  # the scikit-learn fallback

# per-pixel statistics of the Fashion-MNIST training images, pixels scaled to [0, 1]
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

MASK_THRESHOLD = 32  # an item's mask: uint8 pixel > 32

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLITS = tuple(_FILES)

# IDX type codes (third byte of the magic number)
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# ----------------------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed, detected from the content) into a numpy array.

    The header is two zero bytes, a type byte (0x08 uint8, ...) and the number of dimensions, then
    one big-endian uint32 per dimension; so labels have magic 0x0801 and images 0x0803. uint8 data
    (every MNIST-style file) comes back as uint8; other types in native byte order. Raises
    :class:`DataError` naming the file when it is missing, not IDX, or shorter than its header says.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(
                f"{path}: corrupt or truncated gzip data ({e}); re-copy or re-install the file"
            ) from e
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (needs at least 4)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic 0x{raw[:4].hex()}; expected 0x0000TTNN with type TT in "
            f"{', '.join(f'0x{t:02x}' for t in _IDX_DTYPES)})"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, the {ndim} dimensions need {head})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = head + math.prod(shape) * dtype.itemsize
    if len(raw) < need:
        raise DataError(
            f"{path}: truncated IDX data: shape {shape} needs {need} bytes, the file has {len(raw)}; "
            "re-copy or re-install the file"
        )
    if len(raw) > need:
        raise DataError(
            f"{path}: {len(raw) - need} bytes after the IDX data of shape {shape}; not an IDX file"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=head).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``); for tests/tools."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(
            f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, int32, float32 or float64"
        )
    if array.ndim > 255:
        raise DataError(f"IDX stores at most 255 dimensions, got {array.ndim}")
    data = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data += np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


# ------------------------------------------------------------------------------------- Fashion-MNIST


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def fashion_mnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder Fashion-MNIST is read from: ``root``, else ``$RWKVKIT_FASHION_MNIST``, else the default."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_ROOT


def has_fashion_mnist(root: str | os.PathLike[str] | None = None) -> bool:
    """Whether all four Fashion-MNIST files are in :func:`fashion_mnist_root` (``root``)."""
    r = fashion_mnist_root(root)
    return all(_find(r, stem) for pair in _FILES.values() for stem in pair)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, split: str = "train", *, fallback: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` (``"train"`` or ``"test"``) as (images uint8 [N, 28, 28], labels int64 [N]).

    Files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``) are looked for in ``root``, else in
    ``$RWKVKIT_FASHION_MNIST``, else in ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``). A ``root`` you pass must hold them (DataError otherwise). When the
    variable or default folder lacks them and ``fallback`` is true, scikit-learn's digits
    (:func:`load_digits_28`, class names :data:`DIGIT_CLASS_NAMES`) are returned with a warning.
    Arrays are fresh copies (a cache keeps the decoded files).
    """
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    folder = fashion_mnist_root(root)
    img_path, lab_path = (_find(folder, stem) for stem in _FILES[split])
    if img_path is None or lab_path is None:
        missing = [s for s, p in zip(_FILES[split], (img_path, lab_path)) if p is None]
        if root is None and fallback:
            try:
                images, labels = load_digits_28(split)
            except DataError:
                pass
            else:
                log.warning(
                    "Fashion-MNIST not found in %s (missing %s); using scikit-learn's 8x8 digits upsampled "
                    "to 28x28 instead (%d %s images, classes 0-9). Install the real data with "
                    "`apt-get install dataset-fashion-mnist` or set $%s.",
                    folder, ", ".join(missing), len(images), split, ENV_VAR,
                )  # fmt: skip
                return images, labels
        raise DataError(
            f"Fashion-MNIST {split} files not found in {folder} (missing {', '.join(missing)}[.gz]); "
            "install them with `apt-get install dataset-fashion-mnist`, or pass root= / set "
            f"${ENV_VAR} to a folder holding them, or `pip install scikit-learn` to use its digits instead"
        )
    key = (str(img_path.resolve()), str(lab_path.resolve()))
    if key not in _cache:
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{lab_path}: expected {len(images)} labels, got shape {labels.shape}")
        _cache[key] = images, labels.astype(np.int64)
    images, labels = _cache[key]
    return images.copy(), labels.copy()


def load_digits_28(split: str = "train", size: int = 28, n_test: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, bilinearly upsampled to ``size`` x ``size`` uint8 (0-255).

    The split is a fixed permutation (seed 0) of the 1797 images: the last ``n_test`` are the test set.
    Raises DataError when scikit-learn is not installed.
    """
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            "scikit-learn is not installed, so its digits cannot stand in for Fashion-MNIST; "
            "`pip install scikit-learn`, or `apt-get install dataset-fashion-mnist`"
        ) from e
    d = load_digits()
    x = torch.as_tensor(np.asarray(d.images, dtype=np.float32) * (255.0 / 16.0)).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = x.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = np.asarray(d.target, dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    idx = order[:-n_test] if split == "train" else order[-n_test:]
    return images[idx], labels[idx]


def _check_data(data, where: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (np.asarray(a) for a in data)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{where}: labels must have shape ({len(images)},), got {labels.shape}")
    if len(images) == 0:
        raise DataError(f"{where}: no images")
    return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------------- classification


class ClassificationDataset(Dataset):
    """Fashion-MNIST (or given arrays) as ``(image float [1, H, W], label int)`` examples.

    Images are scaled to [0, 1] and normalised with :data:`FASHION_MNIST_MEAN` / ``_STD``.
    ``augment``: random crop with 2-pixel zero padding and a random horizontal flip (torch's global
    RNG, so seed it / the DataLoader workers). ``resize``: output side (e.g. 32 for patch size 4),
    bilinear. ``data``: ``(images uint8 [N, H, W], labels [N])`` instead of loading ``split``.
    ``limit``: keep only the first ``limit`` examples.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        root: str | os.PathLike[str] | None = None,
        augment: bool = False,
        resize: int | None = None,
        data: tuple[np.ndarray, np.ndarray] | None = None,
        limit: int | None = None,
        pad: int = 2,
    ) -> None:
        if data is not None:
            images, labels = _check_data(data, "ClassificationDataset")
        else:
            images, labels = load_fashion_mnist(root, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        if resize is not None and resize < 1:
            raise DataError(f"resize must be a positive side length, got {resize}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))
        self.augment, self.resize, self.pad = augment, resize, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255.0).unsqueeze(0)  # [1, H, W]
        if self.augment:
            h, w = x.shape[-2:]
            p = self.pad
            if p > 0:
                x = F.pad(x, (p, p, p, p))
                dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
                x = x[:, dy : dy + h, dx : dx + w]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x[None], size=(self.resize, self.resize), mode="bilinear", align_corners=False)[
                0
            ]
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        return x.contiguous(), int(self.labels[i])


# ------------------------------------------------------------------------------------- segmentation


class SegmentationDataset(Dataset):
    """Deterministic point-prompted segmentation: 2-4 items composed on a canvas.

    Example ``i``: ``items[0]``..``items[1]`` images of ``split`` (drawn with an RNG seeded by
    ``(seed, i)``) are pasted without overlap, either into distinct cells of a grid
    (``placement="cells"``, a random offset inside each cell) or at random positions whose boxes
    do not intersect (``placement="random"``). Each item's mask is ``pixel > 32``; one item with a
    non-empty mask is the target and the prompt is a random pixel of its mask.

    ``__getitem__`` returns ``(image float [1, canvas, canvas], point int64 [2] as (y, x),
    mask float [1, canvas, canvas], label int)``; the image is scaled to [0, 1] and, with
    ``normalize``, standardised by the Fashion-MNIST mean/std. :meth:`compose` gives everything
    (all masks, classes, boxes, a label map). Same data, ``(split, seed, index)`` -> same example.
    """

    def __init__(
        self,
        split: str = "train",
        n: int = 1000,
        *,
        canvas: int = 64,
        items: tuple[int, int] = (2, 4),
        seed: int = 0,
        placement: str = "cells",
        root: str | os.PathLike[str] | None = None,
        data: tuple[np.ndarray, np.ndarray] | None = None,
        normalize: bool = True,
    ) -> None:
        if data is not None:
            images, labels = _check_data(data, "SegmentationDataset")
        else:
            images, labels = load_fashion_mnist(root, split)
        lo, hi = items
        if not 1 <= lo <= hi:
            raise DataError(f"items must be (min, max) with 1 <= min <= max, got {items}")
        if n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        if placement not in ("cells", "random"):
            raise DataError(f"unknown placement {placement!r}; use 'cells' or 'random'")
        h, w = images.shape[1:]
        self.grid = math.ceil(math.sqrt(hi))
        if placement == "cells" and canvas // self.grid < max(h, w):
            raise DataError(
                f"a {canvas}x{canvas} canvas cut into {self.grid}x{self.grid} cells has cells of "
                f"{canvas // self.grid} px, smaller than the {h}x{w} items; "
                f"use canvas >= {self.grid * max(h, w)}"
            )
        if placement == "random" and hi * h * w > canvas * canvas // 2:
            raise DataError(
                f"{hi} items of {h}x{w} will not reliably fit apart on a {canvas}x{canvas} canvas; "
                "use a larger canvas or placement='cells'"
            )
        if len(images) < hi:
            raise DataError(f"SegmentationDataset needs at least {hi} source images, got {len(images)}")
        self.images, self.labels = images, labels
        self.split, self.n, self.canvas, self.items = split, n, canvas, (lo, hi)
        self.seed, self.placement, self.normalize = seed, placement, normalize

    def __len__(self) -> int:
        return self.n

    def _positions(self, rng: np.random.Generator, k: int) -> list[tuple[int, int]]:
        h, w = self.images.shape[1:]
        c = self.canvas
        if self.placement == "cells":
            cell = c // self.grid
            cells = rng.choice(self.grid * self.grid, size=k, replace=False)
            out = []
            for j in cells:
                gy, gx = divmod(int(j), self.grid)
                oy, ox = rng.integers(0, cell - h + 1), rng.integers(0, cell - w + 1)
                out.append((gy * cell + int(oy), gx * cell + int(ox)))
            return out
        for _ in range(1000):  # rejection sampling of non-intersecting boxes
            out: list[tuple[int, int]] = []
            for _ in range(k):
                for _ in range(100):
                    y, x = int(rng.integers(0, c - h + 1)), int(rng.integers(0, c - w + 1))
                    if all(abs(y - y2) >= h or abs(x - x2) >= w for y2, x2 in out):
                        out.append((y, x))
                        break
            if len(out) == k:
                return out
        raise DataError(f"could not place {k} items of {h}x{w} apart on a {c}x{c} canvas; enlarge the canvas")

    def compose(self, index: int) -> dict:
        """Example ``index`` in full: ``image`` uint8 [C, C], ``masks`` bool [k, C, C], ``classes`` [k],
        ``boxes`` [k, 4] as (y0, x0, y1, x1), ``source`` indices [k], ``label_map`` int64 [C, C]
        (class + 1 per item pixel, 0 background), ``target`` (which item), ``point`` (y, x)."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} examples")
        rng = np.random.default_rng([self.seed, index])
        lo, hi = self.items
        k = int(rng.integers(lo, hi + 1))
        src = rng.choice(len(self.images), size=k, replace=False)
        h, w = self.images.shape[1:]
        c = self.canvas
        image = np.zeros((c, c), np.uint8)
        masks = np.zeros((k, c, c), bool)
        label_map = np.zeros((c, c), np.int64)
        boxes = np.zeros((k, 4), np.int64)
        for j, (s, (y, x)) in enumerate(zip(src, self._positions(rng, k))):
            item = self.images[s]
            image[y : y + h, x : x + w] = item
            masks[j, y : y + h, x : x + w] = item > MASK_THRESHOLD
            label_map[masks[j]] = self.labels[s] + 1
            boxes[j] = (y, x, y + h, x + w)
        nonempty = np.flatnonzero(masks.reshape(k, -1).any(1))
        if len(nonempty) == 0:
            raise DataError(f"example {index}: every item has an empty mask (pixel > {MASK_THRESHOLD})")
        target = int(nonempty[rng.integers(len(nonempty))])
        ys, xs = np.nonzero(masks[target])
        p = int(rng.integers(len(ys)))
        return {
            "image": image,
            "masks": masks,
            "classes": self.labels[src].copy(),
            "boxes": boxes,
            "source": src,
            "label_map": label_map,
            "target": target,
            "point": (int(ys[p]), int(xs[p])),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        ex = self.compose(index)
        x = torch.from_numpy(ex["image"]).float().div_(255.0).unsqueeze(0)
        if self.normalize:
            x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        mask = torch.from_numpy(ex["masks"][ex["target"]]).float().unsqueeze(0)
        point = torch.tensor(ex["point"], dtype=torch.int64)
        return x, point, mask, int(ex["classes"][ex["target"]])
