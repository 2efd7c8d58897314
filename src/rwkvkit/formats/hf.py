"""Hugging Face model directories: ``config.json`` plus the weights, in one of several layouts.

=====================  ==============  ========  ===========================================
layout                 model_type      versions  module with its key table and sources
=====================  ==============  ========  ===========================================
transformers-rwkv4     rwkv            4         :mod:`rwkvkit.formats.hf_transformers`
rwkv-hub-rwkv5         rwkv5           5.2       :mod:`rwkvkit.formats.hf_rwkv_hub`
rwkv-hub-rwkv6         rwkv6           6         :mod:`rwkvkit.formats.hf_rwkv_hub`
fla-rwkv6              rwkv6           6         :mod:`rwkvkit.formats.hf_fla`
fla-rwkv7              rwkv7           7         :mod:`rwkvkit.formats.hf_fla`
=====================  ==============  ========  ===========================================

Reading picks the layout from ``model_type`` and, where two layouts share one (``rwkv6``), from
the weights' keys. The sizes always come from the tensor shapes (as for official files); the
config.json is checked against them, so a directory whose config does not belong to its weights is
refused. Weights: ``model.safetensors``, sharded ``model.safetensors.index.json``,
``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``) or its sharded index.
Writing: one ``model.safetensors`` (metadata ``format: pt``) and ``config.json``; the default
layout per version is transformers (4), the RWKV hub (5.2) and fla (6, 7). RWKV-5.0/5.1 have no HF
layout anywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rwkvkit.errors import CheckpointError, UnsupportedVersionError
from rwkvkit.formats import blinkdl, hf_fla, hf_rwkv_hub, hf_transformers, native
from rwkvkit.formats._io import atomic_dir, majority_dtype, owned
from rwkvkit.formats.keymap import Layout, count_layers, foreign_patterns, short, to_foreign, to_native
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.utils.integrity import save_safetensors

LAYOUTS: tuple[Layout, ...] = (
    hf_transformers.RWKV4,
    hf_rwkv_hub.RWKV5,
    hf_fla.RWKV6,
    hf_rwkv_hub.RWKV6,
    hf_fla.RWKV7,
)
DEFAULT_LAYOUT = {"4": hf_transformers.RWKV4, "5.2": hf_rwkv_hub.RWKV5, "6": hf_fla.RWKV6, "7": hf_fla.RWKV7}

# searched in this order, transformers' own order: a written model.safetensors wins over old files
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def layout_for(version: str, name: str | None = None) -> Layout:
    """The layout that writes RWKV-``version`` (``name`` picks one explicitly)."""
    if name is not None:
        by_name = {lay.name: lay for lay in LAYOUTS}
        if name not in by_name:
            raise CheckpointError(f"unknown HF layout {name!r}; known: {', '.join(by_name)}")
        if version not in by_name[name].versions:
            raise UnsupportedVersionError(
                f"the {name} layout holds RWKV-{'/'.join(by_name[name].versions)}, not {version}"
            )
        return by_name[name]
    if version not in DEFAULT_LAYOUT:
        raise UnsupportedVersionError(
            f"RWKV-{version} has no HF layout (transformers holds RWKV-4 only, fla RWKV-6/7, the RWKV hub's "
            "remote code RWKV-5.2 and 6); write it as rwkvkit or blinkdl instead"
        )
    return DEFAULT_LAYOUT[version]


def read_config(path: Path) -> dict:
    cfg = path / "config.json"
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg} is not valid JSON ({e}); fix or replace it") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{cfg} is not a JSON object")
    return d


def _read_file(path: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return native.read_safetensors(path, verify)[0]
    return blinkdl.read_pth(path, verify)


def read_weights(path: Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """The tensors of an HF directory (single file or shards) and the files they came from."""
    found = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if found is None:
        raise CheckpointError(
            f"{path} has a config.json but no weights (expected one of {', '.join(WEIGHT_FILES)})"
        )
    if not found.name.endswith(".index.json"):
        return _read_file(found, verify), [found]
    try:
        weight_map = json.loads(found.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{found} is not a valid shard index ({type(e).__name__}: {e})") from None
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not (path / shard).is_file():
            raise CheckpointError(f"{found} names the shard {shard!r}, which is missing from {path}")
        sd |= _read_file(path / shard, verify)
    lost = sorted(set(weight_map) - set(sd))
    if lost:
        raise CheckpointError(f"{found}: tensors {short(lost)} are listed but not in their shards")
    return sd, [found] + [path / s for s in shards]


def _same(found: object, expected: object) -> bool:
    if isinstance(expected, list):
        if isinstance(found, list):
            return len(found) == len(expected) and all(_same(a, b) for a, b in zip(found, expected))
        return all(_same(found, e) for e in expected)  # a scalar stands for "the same for every layer"
    if isinstance(expected, bool) or expected is None or isinstance(found, bool):
        return found is expected  # JSON true/false/null: no 1 == True
    if isinstance(expected, float) and isinstance(found, (int, float)):
        return math.isclose(found, expected, rel_tol=1e-6)
    return found == expected


def check_config(config_json: dict, layout: Layout, config: RWKVConfig, where: Path) -> None:
    """Refuse a config.json that contradicts the tensors, or one of a model rwkvkit would run differently."""
    for k, v in layout.config_fields(config).items():
        found = config_json.get(k)
        if found is not None and not _same(found, v):
            raise CheckpointError(
                f"{where}: config.json has {k} = {found!r} but the weights have {v!r}; "
                "the config does not belong to these weights"
            )
    for k, v in layout.fixed.items():
        if k in config_json and not _same(config_json[k], v):
            raise UnsupportedVersionError(
                f"{where}: config.json has {k} = {config_json[k]!r}; rwkvkit runs {layout.title} "
                f"models with {k} = {v!r} only"
            )


def read(
    path: Path, verify: bool = True
) -> tuple[dict[str, torch.Tensor], RWKVConfig, Layout, dict[str, torch.Tensor], list[Path]]:
    """Read an HF model directory (``verify``: check the checksums of files rwkvkit wrote).

    Returns:
        ``(native state dict, config, layout, the stored tensors, the files read)``.
    """
    if not (path / "config.json").is_file():
        held = sorted(p.name for p in path.iterdir())
        raise CheckpointError(
            f"{path} is a directory without config.json, so no known layout (it holds {short(held)}); "
            "pass a checkpoint file, or a model directory written by save_pretrained or rwkvkit"
        )
    cj = read_config(path)
    model_type = cj.get("model_type")
    candidates = [lay for lay in LAYOUTS if model_type in lay.model_types]
    if not candidates:
        known = sorted({t for lay in LAYOUTS for t in lay.model_types})
        raise UnsupportedVersionError(
            f"{path}: config.json model_type {model_type!r} is not an RWKV layout rwkvkit reads "
            f"(known: {', '.join(known)})"
        )
    stored, files = read_weights(path, verify)
    layout = next((lay for lay in candidates if lay.marker in stored), None)
    if layout is None:
        raise CheckpointError(
            f"{path}: config.json says model_type {model_type!r} but the weights (keys "
            f"{short(sorted(stored))}) match none of its layouts "
            f"({', '.join(lay.name for lay in candidates)})"
        )
    foreign = layout.upgrade(stored) if layout.upgrade else dict(stored)
    if (
        layout.tied
        and layout.tied[0] not in foreign
        and cj.get("tie_word_embeddings")
        and layout.tied[1] in foreign
    ):
        foreign[layout.tied[0]] = foreign[layout.tied[1]].clone()  # own copy: rwkvkit's head is untied
    source = f"{path} ({layout.title})"
    n_layer = count_layers(foreign, foreign_patterns(layout.table))
    sd = to_native(foreign, layout.table, n_layer, source)
    if layout.complete:
        layout.complete(sd, cj)
    version = blinkdl.detect_version(sd)
    if version not in layout.versions:
        raise CheckpointError(f"{source}: the tensors are RWKV-{version}, which this layout does not hold")
    config = blinkdl.config_from_state_dict(sd, version)
    check_config(cj, layout, config, path / "config.json")
    sd = blinkdl.to_native(sd, version, config)
    blinkdl.check_state_dict(sd, config, source)
    return sd, config, layout, stored, files


def write(
    sd: dict[str, torch.Tensor],
    config: RWKVConfig,
    path: str | Path,
    layout: str | None = None,
    dtype: torch.dtype | None = None,
) -> Layout:
    """Write an HF model directory (``config.json`` + ``model.safetensors``); returns the layout used.

    A new directory appears whole (written beside it, then renamed); in an existing directory the
    two files are replaced one by one and other files (a tokenizer) are kept.
    """
    path = Path(path)
    lay = layout_for(config.version, layout)
    if config.v5_log_bonus:
        raise UnsupportedVersionError(
            "this RWKV-5 checkpoint stores the bonus as its log (time_first); the RWKV hub layout holds "
            "time_faaaa (u itself), and exp() would not be lossless; write it as rwkvkit or blinkdl instead"
        )
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file; an HF model is a directory, so choose a directory path")
    foreign = owned(to_foreign(sd, lay.table, config.n_layer, target=lay.title), dtype)
    config_json = {
        "architectures": list(lay.architectures),
        "model_type": lay.model_types[0],
        **lay.config_fields(config),
        **lay.fixed,
        **lay.extra,
        "dtype": str(majority_dtype(foreign)).removeprefix("torch."),
    }

    def write_files(d: Path) -> None:
        save_safetensors(foreign, d / "model.safetensors", {"format": "pt"})
        (d / "config.json").write_text(
            json.dumps(config_json, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    atomic_dir(path, write_files)
    return lay
