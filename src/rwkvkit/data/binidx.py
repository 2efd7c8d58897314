"""The binidx token format of the official RWKV trainer (RWKV-LM's Megatron-style ``MMapIndexedDataset``).

A dataset with prefix ``P`` is two files:

``P.bin``
    all token ids, back to back, in one integer dtype (little-endian, no header). The official
    trainer reads it as one flat stream (``get(idx=0, offset=i, length=ctx_len + 1)`` crosses
    document boundaries), so it is byte for byte the flat token array rwkvkit writes for its own
    ``bin`` format.

``P.idx`` (all integers little-endian)::

    offset          size         field
    0               9            magic b"MMIDIDX\\x00\\x00"
    9               8  uint64    version, always 1
    17              1  uint8     dtype code of P.bin (see DTYPE_CODES; 8 = uint16)
    18              8  uint64    n: number of items (sequences)
    26              8  uint64    m: number of entries of the document index
    34              4n int32     sizes: tokens per item
    34 + 4n         8n int64     pointers: byte offset of each item in P.bin
    34 + 12n        8m int64     document index: first item of each document, then n (so m = docs + 1)

The official ``make_data.py`` writes one item per document (the document's tokens followed by the
end-of-document token 0) and dtype uint16 (code 8), so ``doc_idx = [0, 1, ..., n]``; rwkvkit does the
same. The format has no uint32 code: vocabularies over 65536 ids are written as int32 (code 4), the
same bytes for ids below 2**31.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from rwkvkit.errors import RWKVKitError

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
# dtype code -> numpy dtype, as in RWKV-LM's src/binidx.py and Megatron's DType enum. Codes 6 and 7
# are floating-point types (their meaning differs between the two), never token ids, so they are refused.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}
_FIXED = len(HEADER) + 8 + 1 + 8 + 8  # 34 bytes before the arrays


class DataError(RWKVKitError):
    """A token file, index or corpus is missing, corrupt, empty, or does not fit the request."""


def index_path(prefix: str | os.PathLike[str]) -> Path:
    """``prefix + ".idx"`` (the prefix may itself contain dots, so no ``with_suffix``)."""
    return Path(os.fspath(prefix) + ".idx")


def data_path(prefix: str | os.PathLike[str]) -> Path:
    """``prefix + ".bin"``."""
    return Path(os.fspath(prefix) + ".bin")


def binidx_prefix(path: str | os.PathLike[str]) -> Path | None:
    """The binidx prefix ``path`` names (the prefix itself, or its ``.bin``/``.idx`` file), or None."""
    p = Path(path)
    for prefix in (p, p.with_suffix("") if p.suffix in (".bin", ".idx") else None):
        if prefix is not None and index_path(prefix).is_file():
            return prefix
    return None


def binidx_dtype(dtype: np.dtype | str | type) -> np.dtype:
    """``dtype`` as a numpy dtype the format can store (uint32 becomes int32: the format has no uint32)."""
    dt = np.dtype(dtype)
    if dt == np.uint32:
        dt = np.dtype(np.int32)
    if dt not in _CODE_OF:
        raise DataError(
            f"binidx cannot store dtype {dt}: use one of {', '.join(str(d) for d in _CODE_OF)} "
            "(uint16 for vocabularies up to 65536 ids, int32 above)"
        )
    return dt


@dataclass(frozen=True)
class BinIdx:
    """A binidx dataset opened read-only.

    ``tokens``: np.memmap [N] of the whole ``.bin`` (dtype ``dtype``; an empty array for an empty file).
    ``sizes``: int32 [n] tokens per item; ``pointers``: int64 [n] byte offsets; ``doc_idx``: int64 [m].
    """

    prefix: Path
    tokens: np.ndarray
    sizes: np.ndarray
    pointers: np.ndarray
    doc_idx: np.ndarray
    dtype: np.dtype

    def item_offsets(self) -> np.ndarray:
        """int64 [n + 1]: token offset where each item starts, then the total token count."""
        return np.append(self.pointers // self.dtype.itemsize, len(self.tokens)).astype(np.int64)

    def doc_offsets(self) -> np.ndarray:
        """int64 [docs + 1]: token offset where each document starts, then the end of the last one.

        Document ``d`` is ``tokens[off[d]:off[d + 1]]`` (its items, which the writer keeps contiguous).
        """
        return self.item_offsets()[self.doc_idx]

    def documents(self) -> Iterable[np.ndarray]:
        """Each document's tokens (views into the memmap), in file order."""
        off = self.doc_offsets()
        for a, b in zip(off[:-1], off[1:]):
            yield self.tokens[a:b]


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    """Read-only memmap of a whole file; np.memmap cannot map an empty file, so that is an empty array."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def read_binidx(prefix: str | os.PathLike[str]) -> BinIdx:
    """Open ``prefix.bin`` / ``prefix.idx`` (also accepts the path of either file).

    Checks the header, version, dtype code, the index length and that every item lies inside the
    ``.bin``; raises DataError (naming the file and the problem) otherwise.
    """
    found = binidx_prefix(prefix)
    if found is None:
        raise DataError(
            f"no binidx dataset at {prefix}: expected {index_path(prefix)} and {data_path(prefix)}"
        )
    ipath, dpath = index_path(found), data_path(found)
    if not dpath.is_file():
        raise DataError(f"binidx index {ipath} has no data file {dpath}")
    raw = ipath.read_bytes()
    if len(raw) < _FIXED or raw[: len(HEADER)] != HEADER:
        raise DataError(
            f"{ipath} is not a binidx index (it must start with {HEADER!r}); "
            "pass the prefix of a .bin/.idx pair written by RWKV-LM's make_data.py or rwkvkit"
        )
    version, code, n, m = struct.unpack_from("<QBQQ", raw, len(HEADER))
    if version != VERSION:
        raise DataError(f"{ipath}: binidx version {version} is not supported (only version {VERSION})")
    if code not in DTYPE_CODES:
        raise DataError(
            f"{ipath}: dtype code {code} is not an integer token type "
            f"(known codes: {', '.join(f'{c}={d}' for c, d in DTYPE_CODES.items())})"
        )
    dtype = DTYPE_CODES[code]
    expect = _FIXED + 4 * n + 8 * n + 8 * m
    if len(raw) != expect:
        raise DataError(
            f"{ipath} is truncated or corrupt: {n} items and {m} document entries need {expect} bytes, "
            f"the file has {len(raw)}"
        )
    sizes = np.frombuffer(raw, dtype="<i4", count=n, offset=_FIXED)
    pointers = np.frombuffer(raw, dtype="<i8", count=n, offset=_FIXED + 4 * n)
    doc_idx = np.frombuffer(raw, dtype="<i8", count=m, offset=_FIXED + 12 * n)
    nbytes = dpath.stat().st_size
    if nbytes % dtype.itemsize:
        raise DataError(
            f"{dpath}: size {nbytes} is not a multiple of the {dtype} item size ({dtype.itemsize})"
        )
    if n and (
        sizes.min() < 0
        or pointers.min() < 0
        or (pointers % dtype.itemsize).any()
        or (pointers + sizes.astype(np.int64) * dtype.itemsize).max() > nbytes
    ):
        raise DataError(
            f"{ipath}: item sizes/pointers point outside {dpath} ({nbytes} bytes): corrupt or mismatched"
        )
    if m and (doc_idx.min() < 0 or doc_idx.max() > n or (np.diff(doc_idx) < 0).any()):
        raise DataError(f"{ipath}: the document index is not an increasing list of item numbers 0..{n}")
    return BinIdx(
        prefix=found,
        tokens=_memmap(dpath, dtype.newbyteorder("<")),
        sizes=sizes,
        pointers=pointers,
        doc_idx=doc_idx,
        dtype=dtype,
    )


class BinIdxWriter:
    """Streams documents into ``prefix.bin`` and writes ``prefix.idx`` on close (one item per document).

    ::

        with BinIdxWriter("out/train", np.uint16) as w:
            w.add_document(np.array([5, 6, 0]))   # tokens [k] (separator included, if any)
    """

    def __init__(self, prefix: str | os.PathLike[str], dtype: np.dtype | str | type = np.uint16) -> None:
        self.prefix = Path(prefix)
        self.dtype = binidx_dtype(dtype)
        self._info = np.iinfo(self.dtype)
        self._file = open(data_path(self.prefix), "wb")  # noqa: SIM115 (closed in close())
        self._sizes: list[int] = []

    def add_document(self, tokens: np.ndarray | Iterable[int]) -> None:
        """Append one document (1-D integer ids, each in the dtype's range)."""
        a = np.asarray(tokens if isinstance(tokens, np.ndarray) else list(tokens))
        if a.ndim != 1:
            raise DataError(f"a document must be a 1-D array of token ids, got shape {a.shape}")
        if a.size and (a.min() < self._info.min or a.max() > self._info.max):
            raise DataError(f"token ids {int(a.min())}..{int(a.max())} do not fit binidx dtype {self.dtype}")
        if a.size > np.iinfo(np.int32).max:
            raise DataError(f"a document of {a.size} tokens is too long for binidx (int32 sizes)")
        self._file.write(a.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._sizes.append(int(a.size))

    def close(self) -> None:
        """Finish the ``.bin`` and write the ``.idx``."""
        if self._file.closed:
            return
        self._file.close()
        write_index(self.prefix, self._sizes, self.dtype)

    def abort(self) -> None:
        """Close the ``.bin`` without writing an index (the caller removes the partial file)."""
        self._file.close()

    def __enter__(self) -> BinIdxWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # leave no index for a half-written dataset
            self.abort()


def write_index(prefix: str | os.PathLike[str], sizes: Iterable[int], dtype: np.dtype | str | type) -> Path:
    """Write ``prefix.idx`` for items of ``sizes`` tokens stored contiguously, one item per document."""
    dt = binidx_dtype(dtype)
    sizes_a = np.asarray(list(sizes) if not isinstance(sizes, np.ndarray) else sizes, dtype=np.int64)
    if sizes_a.size and (sizes_a.min() < 0 or sizes_a.max() > np.iinfo(np.int32).max):
        raise DataError("binidx item sizes must be in 0..2**31-1")
    n = sizes_a.size
    pointers = (np.cumsum(sizes_a) - sizes_a) * dt.itemsize  # exclusive prefix sum, in bytes
    doc_idx = np.arange(n + 1, dtype=np.int64)
    path = index_path(prefix)
    with open(path, "wb") as f:
        f.write(HEADER)
        f.write(struct.pack("<QBQQ", VERSION, _CODE_OF[dt], n, n + 1))
        f.write(sizes_a.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(doc_idx.astype("<i8").tobytes())
    return path


def write_binidx(
    prefix: str | os.PathLike[str],
    documents: Iterable[np.ndarray | Iterable[int]],
    dtype: np.dtype | str | type = np.uint16,
) -> Path:
    """Write ``documents`` (each a 1-D sequence of ids, end-of-document token included if wanted) as
    ``prefix.bin`` + ``prefix.idx``, one item per document. Pass ``TokenFile.documents()`` to convert
    an rwkvkit token file. Returns the prefix."""
    with BinIdxWriter(prefix, dtype) as w:
        for doc in documents:
            w.add_document(doc)
    return Path(prefix)


__all__ = [
    "DTYPE_CODES",
    "HEADER",
    "BinIdx",
    "BinIdxWriter",
    "DataError",
    "binidx_dtype",
    "binidx_prefix",
    "data_path",
    "index_path",
    "read_binidx",
    "write_binidx",
    "write_index",
]
