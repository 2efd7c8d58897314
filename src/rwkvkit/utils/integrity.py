"""Detecting corrupt files: checksums in rwkvkit's safetensors files, CRC32 of ``torch.save`` zips.

Every safetensors file rwkvkit writes (models, HF directories, states, vision and forecast model
folders) carries one metadata entry, ``rwkvkit_checksums``::

    {"algorithm": "xxh3_128",
     "tensors": {name: hex digest of (name, dtype, shape, raw bytes)},
     "metadata": hex digest of every other metadata entry}

Reading such a file recomputes every digest and refuses the file on any difference, naming the
tensors that changed. A digest covers the dtype and shape besides the bytes, so an edited header
(a shape, a config value) is caught as well as flipped bits in the data.

Why xxh3-128 and not sha256: the checksum is stored inside the file it protects, so it can only
detect accidents (a bad disk, an interrupted copy), never tampering: whoever edits the file can
rewrite the checksum too. For accidents a 128-bit non-cryptographic hash is as good, and it runs
at about memory speed (7 GB/s on one core, 12 GB/s on two, against 1.1 GB/s for sha256 on the
development machine; ``benchmarks/verify.py`` measures them), so verification is on by default.

``torch.save`` writes a zip archive whose local headers carry each record's CRC32, which
``torch.load`` never checks. :func:`check_zip_crc` does, record by record, over a memory map of
the file (so nothing is loaded twice), with ISA-L's CRC32 (``isal``, about 9 GB/s against zlib's
2.7 on the development machine) in parallel threads; legacy (pre-1.6) pickle files have no
checksum to check.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from rwkvkit.errors import CheckpointError, RWKVKitError

try:  # Intel ISA-L's CRC32 (carry-less multiplication): about 3x zlib's speed
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - a platform without isal wheels
    from zlib import crc32 as _crc32

META_KEY = "rwkvkit_checksums"
ALGORITHM = "xxh3_128"


@dataclass(frozen=True)
class Verified:
    """What a verification checked: ``method`` over ``items`` tensors or records, ``nbytes`` bytes."""

    path: Path
    method: str  # "xxh3_128" | "crc32" | "" (nothing to check)
    items: int
    nbytes: int
    seconds: float

    def describe(self) -> str:
        if not self.method:
            return f"{self.path.name}: no checksums recorded, so its bytes cannot be verified"
        what = "tensors" if self.method == ALGORITHM else "zip records"
        name = "xxh3-128" if self.method == ALGORITHM else "CRC32"
        return (
            f"{self.path.name}: OK, {name} of {self.items} {what} ({self.nbytes / 2**20:.1f} MiB) "
            f"match, checked in {self.seconds:.3f} s"
        )


# ---- safetensors: digests in the metadata -----------------------------------------------------------


def _tensor_digest(name: str, t: torch.Tensor) -> str:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    h = xxhash.xxh3_128()
    h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Every tensor's digest, in parallel threads (xxhash releases the GIL: about 2x on 2 cores)."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(tensors, pool.map(_tensor_digest, tensors, tensors.values())))


def _metadata_digest(meta: Mapping[str, str]) -> str:
    rest = {k: v for k, v in meta.items() if k != META_KEY}
    return xxhash.xxh3_128(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def checksums(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus the ``rwkvkit_checksums`` entry for ``tensors`` and the rest of ``metadata``."""
    record = {
        "algorithm": ALGORITHM,
        "tensors": _digests(tensors),
        "metadata": _metadata_digest(metadata),
    }
    return {**metadata, META_KEY: json.dumps(record, sort_keys=True)}


def verify_tensors(
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    path: Path,
    error: type[RWKVKitError] = CheckpointError,
) -> Verified:
    """Check ``tensors`` (as read from ``path``) against the checksums in its ``metadata``.

    Returns what was checked (``method`` is empty for a file without checksums); raises ``error``
    naming the tensors whose bytes, dtype or shape differ from what was written.
    """
    t0 = time.perf_counter()
    if META_KEY not in metadata:
        return Verified(path, "", 0, 0, 0.0)
    check_record(
        metadata[META_KEY], _digests(tensors), _metadata_digest(metadata), path,
        "the metadata (config)", "copy or download it again", error,
    )  # fmt: skip
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return Verified(path, ALGORITHM, len(tensors), nbytes, time.perf_counter() - t0)


def check_record(
    record_text: str,
    found: Mapping[str, str],
    metadata_digest: str,
    path: Path,
    metadata_name: str,
    remedy: str,
    error: type[RWKVKitError] = CheckpointError,
) -> None:
    """Compare a checksum record (JSON: ``algorithm``, ``tensors`` digests, ``metadata`` digest, as
    written beside a file's tensors) with the digests ``found`` now; raise ``error`` naming every
    tensor (and the metadata, called ``metadata_name``) that differs, ending with ``remedy``."""
    try:
        record = json.loads(record_text or "")
        algorithm, digests, meta_digest = record["algorithm"], record["tensors"], record["metadata"]
        if not isinstance(digests, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise error(f"{path}: its checksum record is damaged; the file is corrupt, {remedy}") from None
    if algorithm != ALGORITHM:
        raise error(f"{path}: checksums of an unknown algorithm {algorithm!r}; upgrade rwkvkit")
    bad = sorted(k for k in found if digests.get(k) != found[k])
    bad += sorted(f"{k} (missing)" for k in digests if k not in found)
    if meta_digest != metadata_digest:
        bad.append(metadata_name)
    if bad:
        listed = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        verb = "does" if len(bad) == 1 else "do"
        raise error(
            f"{path} is corrupt: {listed} {verb} not match the checksums recorded when it was written "
            f"(damaged on disk or in a copy); {remedy}"
        )


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str]
) -> None:
    """``safetensors.torch.save_file`` with the checksum entry added to ``metadata`` (not atomic:
    callers write to a temporary path and rename)."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=checksums(tensors, metadata))


# ---- zip archives (torch.save): CRC32 per record ----------------------------------------------------

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"


def is_zip(path: str | Path) -> bool:
    """``zipfile.is_zipfile`` that answers False for every damaged archive (it raises BadZipFile
    for some, e.g. a central directory that claims to span several disks)."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return False


def check_zip_crc(path: str | Path, error: type[RWKVKitError] = CheckpointError) -> Verified:
    """Verify the CRC32 of every record of a ``torch.save`` zip against its central directory.

    Raises ``error`` for a record whose bytes changed, for a record whose place in the file is
    impossible (a header pointing past the end), and for a directory that cannot be read.
    """
    path = Path(path)
    t0 = time.perf_counter()
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception as e:  # noqa: BLE001 - zipfile raises many kinds on damaged directories
        raise error(
            f"{path} is truncated or corrupt: its zip directory cannot be read ({type(e).__name__}: {e}); "
            "copy or download it again"
        ) from None
    size = path.stat().st_size
    records = []  # (name, first data byte, size, recorded CRC32)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for info in infos:
            start = info.header_offset
            if start < 0 or start + _LOCAL_HEADER.size > size:
                raise error(f"{path} is corrupt: zip record {info.filename!r} starts outside the file")
            fields = _LOCAL_HEADER.unpack_from(m, start)
            if fields[0] != _LOCAL_MAGIC:
                raise error(f"{path} is corrupt: zip record {info.filename!r} has no local header")
            name_len, extra_len = fields[-2], fields[-1]
            data = start + _LOCAL_HEADER.size + name_len + extra_len
            if info.compress_type != zipfile.ZIP_STORED:
                continue  # torch stores records uncompressed; anything else is not ours to check
            if data + info.compress_size > size:
                raise error(f"{path} is truncated or corrupt: zip record {info.filename!r} runs past its end")
            records.append((info.filename, data, info.compress_size, info.CRC))

        def crc_of(record) -> int:
            _, first, n, _ = record
            with memoryview(m) as view:
                crc = _crc32(view[first : first + n])
            # hand the record's pages back: checked bytes need not stay in this process's memory
            # (a model loaded after the check would otherwise peak at its size plus the whole file)
            lo = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
            hi = (first + n) // mmap.PAGESIZE * mmap.PAGESIZE
            if hi > lo and hasattr(mmap, "MADV_DONTNEED"):
                m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            return crc

        # the big records in parallel threads (both CRC implementations release the GIL)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            crcs = list(pool.map(crc_of, records))
    checked = nbytes = 0
    for (name, _, n, recorded), crc in zip(records, crcs):
        if recorded == 0 and n and crc != 0:
            continue  # written without CRCs (torch.serialization.set_crc32_options(False))
        if crc != recorded:
            raise error(
                f"{path} is corrupt: zip record {name!r} fails its CRC32 check "
                "(damaged on disk or in a copy); copy or download it again"
            )
        checked += 1
        nbytes += n
    return Verified(path, "crc32", checked, nbytes, time.perf_counter() - t0)
