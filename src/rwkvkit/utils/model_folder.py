"""A trained model as a folder: ``model.safetensors`` (the weights) and ``model.json`` (what to build).

Used by the domain trainers (``rwkvkit vision train``, ``rwkvkit forecast train``). Loading reads
JSON and safetensors only: no code is executed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from rwkvkit.errors import CheckpointError
from rwkvkit.formats._io import atomic_file, owned
from rwkvkit.formats.native import read_safetensors
from rwkvkit.utils.integrity import save_safetensors


def save_model_folder(out_dir: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state dict and ``meta`` (JSON-able) into ``out_dir``; returns the folder."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = owned({k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_file(out / "model.safetensors", lambda tmp: save_safetensors(tensors, tmp, {"format": "pt"}))
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out


def load_model_folder(
    path: str | Path, build: Callable[[dict[str, Any]], nn.Module], command: str
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, meta)``: ``build(meta)`` makes the model, the weights must fit it exactly.

    ``path`` is the folder or a file in it; ``command`` names what writes such folders (for the
    error message, e.g. ``"rwkvkit forecast train"``)."""

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    meta_path, weights = folder / "model.json", folder / "model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{folder} is not a model folder of `{command}` (it needs model.json and model.safetensors)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}); rewrite it or train again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is not a JSON object; rewrite it or train again")
    model = build(meta)
    tensors, _ = read_safetensors(weights)  # one-line errors for damaged files; checksums verified
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # tensors of other shapes
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{weights} does not fit the model {meta_path} describes: {first}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit the model {meta_path} describes: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model.eval(), meta
