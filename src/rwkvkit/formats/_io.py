"""File plumbing shared by the writers: atomic replacement and tensors that own their bytes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from rwkvkit.errors import CheckpointError

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp64": torch.float64, "float64": torch.float64,
}  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``, ``"float32"``, ``torch.float16``, ... -> a torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16, fp64")
    return _DTYPES[dtype]


def majority_dtype(sd: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype most of the floating-point parameters are stored in (fp32 when there are none)."""
    counts: dict[torch.dtype, int] = {}
    for t in sd.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def atomic_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    A crash or error midway leaves any existing ``path`` untouched and no stray temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Fill a new directory ``path`` through a temporary sibling directory, then rename it.

    An existing directory is updated file by file instead (each file atomically), keeping the files
    it holds that the writer does not produce (a tokenizer, a README).
    """
    if path.is_dir():
        with tempfile.TemporaryDirectory(dir=path, prefix=".rwkvkit-") as staging:
            _write_with_usual_permissions(Path(staging), write)
            for f in Path(staging).iterdir():
                os.replace(f, path / f.name)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        _write_with_usual_permissions(tmp, write)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_with_usual_permissions(folder: Path, write: Callable[[Path], None]) -> None:
    write(folder)
    for f in folder.iterdir():  # safetensors creates its files 0600; give them the umask's permissions
        os.chmod(f, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def owned(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors, each with storage of its own and of its own size.

    Views into a shared or larger storage (a transposed LoRA factor, one row of an unbound stack)
    are copied: ``torch.save`` would otherwise write the whole underlying storage, and safetensors
    refuses tensors that share memory. Everything else is passed through without a copy.
    ``dtype`` casts the floating-point tensors.
    """
    out, seen = {}, set()
    for k, t in sd.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if not t.is_contiguous() or key in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone() if t.is_contiguous() else t.contiguous()
            storage = t.untyped_storage()
            key = (t.device, storage.data_ptr())
        seen.add(key)
        out[k] = t
    return out
