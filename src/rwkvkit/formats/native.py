"""rwkvkit's own format: one ``.safetensors`` file that says what it holds.

* tensor names: rwkvkit's module names, which are the official (BlinkDL) checkpoint names;
* tensors: stored bit for bit in their own dtype (a round trip through this format is lossless);
* metadata (safetensors' string -> string header map):

  ``format``           ``"pt"`` (the safetensors convention for PyTorch tensors)
  ``rwkvkit_format``   ``"1"``, the version of this layout; readers refuse a newer one
  ``rwkvkit_config``   ``RWKVConfig.to_dict()`` as JSON: version and every size
  ``rwkvkit_version``  the rwkvkit that wrote the file (information only)
  ``rwkvkit_family``   absent for RWKV language models; ``"arwkv"`` for the ARWKV hybrid
                       (:mod:`rwkvkit.models.arwkv`), whose ``rwkvkit_config`` is an ARWKVConfig
  ``rwkvkit_checksums`` a digest of every tensor and of the other metadata
                       (:mod:`rwkvkit.utils.integrity`); reading verifies them (files written
                       before checksums existed have none and are read unverified)

Safetensors is a plain header plus raw bytes: reading it never runs code, and it memory-maps.
A ``.safetensors`` file *without* the rwkvkit tag is read too when its names are the official ones
(files converted by other tools); an HF ``model.safetensors`` is read through its directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from rwkvkit import __version__
from rwkvkit.errors import CheckpointError, ConfigError
from rwkvkit.formats._io import atomic_file, owned
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.utils.integrity import save_safetensors, verify_tensors

TAG = "rwkvkit_format"
FORMAT_VERSION = 1
FAMILY = "rwkvkit_family"
FAMILIES = ("arwkv",)


def looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length, then the JSON header ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def read_safetensors(path: Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a bad file is one CheckpointError line.

    ``verify``: check the tensors against the checksums rwkvkit records when it writes a file
    (a file without them is read as it is)."""
    if not looks_like_safetensors(path):
        raise CheckpointError(
            f"{path} is not a safetensors file, or its header is truncated; download or copy it again"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt (safetensors: {first}); download or copy it again"
        ) from None
    if not sd:
        raise CheckpointError(f"{path} holds no tensors")
    if verify:
        verify_tensors(sd, meta, path)
    return sd, meta


def config_from_metadata(meta: dict[str, str], path: Path) -> RWKVConfig | None:
    """The RWKVConfig an rwkvkit file declares, or None for a safetensors file without the tag."""
    if TAG not in meta:
        return None
    try:
        fmt = int(meta[TAG])
    except ValueError:
        raise CheckpointError(f"{path}: metadata {TAG}={meta[TAG]!r} is not a format number") from None
    if fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is rwkvkit format {fmt}, newer than this rwkvkit reads ({FORMAT_VERSION}); "
            "upgrade rwkvkit"
        )
    try:
        return RWKVConfig.from_dict(json.loads(meta["rwkvkit_config"]))
    except KeyError:
        raise CheckpointError(
            f"{path}: rwkvkit file without its rwkvkit_config metadata; the file is damaged"
        ) from None
    except (json.JSONDecodeError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: its rwkvkit_config metadata is invalid ({e})") from None


def write(
    sd: dict[str, torch.Tensor],
    config,
    path: str | Path,
    dtype: torch.dtype | None = None,
    family: str | None = None,
) -> None:
    """Write ``sd`` (rwkvkit names) and ``config`` (anything with ``to_dict()``: an RWKVConfig, or the
    config of ``family``, one of FAMILIES) as an rwkvkit ``.safetensors`` file, atomically."""

    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {FAMILIES}")
    tensors = owned(sd, dtype)
    meta = {
        "format": "pt",
        TAG: str(FORMAT_VERSION),
        "rwkvkit_config": json.dumps(config.to_dict(), sort_keys=True),
        "rwkvkit_version": __version__,
        **({FAMILY: family} if family else {}),
    }
    atomic_file(Path(path), lambda tmp: save_safetensors(tensors, tmp, meta))


def family_of(meta: dict[str, str], path: Path) -> str | None:
    """The model family an rwkvkit file declares (None: an RWKV language model)."""
    family = meta.get(FAMILY)
    if family is not None and family not in FAMILIES:
        raise CheckpointError(
            f"{path} holds a {family!r} model, which this rwkvkit does not know ({', '.join(FAMILIES)}); "
            "upgrade rwkvkit"
        )
    return family


def family_config(meta: dict[str, str], path: Path) -> dict:
    try:
        config = json.loads(meta["rwkvkit_config"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path}: missing or invalid rwkvkit_config metadata; the file is damaged"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: rwkvkit_config metadata is not a JSON object; the file is damaged")
    return config


def read_metadata(path: Path) -> dict[str, str]:
    """Only the metadata of a safetensors file (no tensor is read); {} when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return {}  # the full read reports the problem
