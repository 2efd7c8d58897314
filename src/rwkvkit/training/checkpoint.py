"""Training checkpoints: everything needed to continue a run exactly, written atomically.

``last.pt`` holds the model and optimiser state, the step, the data sampler's position, the RNG
state and the loss history. It is written to a temporary file and renamed, so a crash during a save
never destroys the previous checkpoint. It is read with ``torch.load(weights_only=True)``: a
training checkpoint runs no code either, and the CRC32 of every record of its zip is checked
before it is read. The inference weights go beside it as ``model.safetensors``
(rwkvkit's format), which ``rwkvkit.load`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rwkvkit.errors import CheckpointError
from rwkvkit.utils.integrity import check_zip_crc

CHECKPOINT = "last.pt"
FORMAT = "rwkvkit.train/1"


def save_training_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (tensors, numbers, strings, lists, dicts) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as f:  # make sure the bytes are on disk before the rename makes them visible
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint to resume from at {path}; start without --resume")
    check_zip_crc(path)  # torch.load does not check the zip's CRC32s: damaged bytes would load
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read training checkpoint {path} ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rwkvkit training checkpoint")
    return payload


def load_for_resume(out_dir: Path, cfg, log, is_main: bool) -> dict[str, Any]:
    """``out_dir``'s checkpoint, after checking that ``cfg`` (a FlatConfig) changes only what a
    resumed run may change; each such change is logged (on the main process)."""
    payload = load_training_checkpoint(Path(out_dir) / CHECKPOINT)
    for change in cfg.resume_changes(payload.get("config") or {}):  # refuses another model or data
        if is_main:
            log.info("resuming with %s", change)
    return payload


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
