"""Reading and writing checkpoints: ``rwkvkit.load`` and the per-format key tables."""

from __future__ import annotations

from pathlib import Path

import torch

from rwkvkit.errors import CheckpointError
from rwkvkit.formats import blinkdl
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp64": torch.float64, "float64": torch.float64,
}  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16, fp64")
    return _DTYPES[dtype]


def _checkpoint_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype most of the checkpoint's parameters are stored in."""
    counts: dict[torch.dtype, int] = {}
    for t in sd.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def build_model(
    config: RWKVConfig,
    sd: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: str | torch.device,
    source: str,
) -> RWKV:
    """Create the model on the meta device and adopt the checkpoint's tensors (no double allocation)."""
    with torch.device("meta"):
        model = RWKV(config, dtype=dtype)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise CheckpointError(f"cannot map {source} to an RWKV-{config.version} model: " + "; ".join(parts))
    tensors = {}
    for k, shape in expected.items():
        t = sd[k]
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(t.shape)}, expected {shape} for {config}"
            )
        if not t.is_floating_point():
            raise CheckpointError(f"{source}: tensor {k!r} has non-float dtype {t.dtype}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: tensor {k!r} contains NaN or inf; the checkpoint is corrupt")
        tensors[k] = t.to(device=device, dtype=dtype)
    model.load_state_dict(tensors, assign=True)
    return model.eval()


def _short(keys: list[str], n: int = 6) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"


def load(
    path: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
) -> RWKV:
    """Load an RWKV checkpoint, detecting the version from its keys.

    Args:
        path: an official (BlinkDL) ``.pth`` file (any key-name generation).
        dtype: weight dtype (``torch.float32``, ``"bf16"``, ...); None keeps the checkpoint's dtype.
            The recurrent state and WKV accumulation are fp32 whatever this is.
        device: where to put the weights.

    Returns:
        An :class:`rwkvkit.models.rwkv.model.RWKV` in eval mode.

    Raises:
        CheckpointError: missing, unreadable, truncated or corrupt file; keys that do not map.
        UnsupportedVersionError: a version (or architecture) rwkvkit cannot run.
    """
    path = Path(path)
    dtype = parse_dtype(dtype)
    sd = blinkdl.read_pth(path)
    version = blinkdl.detect_version(sd)
    config = blinkdl.config_from_state_dict(blinkdl.rename_old_keys(sd), version)
    sd = blinkdl.to_native(sd, version, config)
    return build_model(config, sd, dtype or _checkpoint_dtype(sd), device, str(path))


def describe(path: str | Path) -> dict:
    """What a checkpoint holds, without building a model: format, version, sizes, parameters, dtype."""
    path = Path(path)
    sd = blinkdl.read_pth(path)
    version = blinkdl.detect_version(sd)
    config = blinkdl.config_from_state_dict(blinkdl.rename_old_keys(sd), version)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in sd.values()})
    return {
        "path": str(path),
        "format": "official (BlinkDL) .pth",
        "config": config,
        "parameters": sum(t.numel() for t in sd.values()),
        "dtype": str(_checkpoint_dtype(sd)).replace("torch.", ""),
        "dtypes": dtypes,
        "file_bytes": path.stat().st_size,
    }


__all__ = ["load", "describe", "parse_dtype", "build_model", "blinkdl"]
