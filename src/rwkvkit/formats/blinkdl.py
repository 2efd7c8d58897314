"""The official (BlinkDL) checkpoint format: a ``torch.save``'d state dict, usually bf16.

Reading never executes code from the file (``torch.load(weights_only=True)``). Key names are
rwkvkit's own module names, so the map is the identity except for renamed keys of older releases
(docs/checkpoints.md#old-rwkv-7-names) and the version detection, done from keys and shapes
alone (no environment variable). :func:`expected_shapes` is docs/checkpoints.md#official-keys: every
reader checks a state dict against it, so a conversion refuses a broken file without building a model.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from rwkvkit.errors import CheckpointError, UnsupportedVersionError
from rwkvkit.formats._io import atomic_file, owned
from rwkvkit.formats.keymap import short
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.models.rwkv.versions import spec_of
from rwkvkit.utils.integrity import check_zip_crc, is_zip
from rwkvkit.utils.meta import on_meta

# RWKV-7 key renames of commit 348e56e (Nov 2024): old suffix -> new suffix, per block
V7_OLD_NAMES: dict[str, str] = {
    "att.xx_r": "att.x_r", "att.xx_w": "att.x_w", "att.xx_k": "att.x_k",
    "att.xx_v": "att.x_v", "att.xx_a": "att.x_a", "att.xx_g": "att.x_g",
    "att.ww_b": "att.w0", "att.ww_w1": "att.w1", "att.ww_w2": "att.w2",
    "att.aa_b": "att.a0", "att.aa_w1": "att.a1", "att.aa_w2": "att.a2",
    "att.vv_b": "att.v0", "att.vv_w1": "att.v1", "att.vv_w2": "att.v2",
    "att.gg_w1": "att.g1", "att.gg_w2": "att.g2",
    "att.kk_s": "att.k_k", "att.ka_s": "att.k_a", "att.rk_s": "att.r_k",
    "ffn.xx_k": "ffn.x_k",
}  # fmt: skip

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def read_pth(path: str | Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """Read a ``torch.save``'d state dict safely; every failure becomes a one-line CheckpointError.

    ``verify``: check the CRC32 of every record of the zip archive first (``torch.load`` does not),
    so flipped bits are reported as corruption instead of loading silently.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a .pth file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the download or save was interrupted")
    with open(path, "rb") as f:
        head = f.read(8)
    if is_zip(path):  # torch.save's format since 1.6: memory-map it
        load_kw = {"mmap": True}
        if verify:
            check_zip_crc(path)
    elif head.startswith(b"PK"):
        raise CheckpointError(
            f"{path} is truncated or corrupt ({size} bytes; its zip archive has no central directory); "
            "download or copy it again"
        )
    elif head.startswith(b"\x80"):  # legacy (pre-1.6) pickle serialisation; cannot be memory-mapped
        load_kw = {}
    else:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {head[:8]!r})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, **load_kw)
    except Exception as e:  # noqa: BLE001 - classify every failure into one readable line
        foreign = pickled_globals(path, foreign_only=True)
        if foreign or "Unsupported global" in str(e):  # the pickle names a class or function to call
            named = f" (it names {', '.join(foreign[:3])})" if foreign else ""
            raise CheckpointError(
                f"{path} contains pickled code or objects{named}, not just tensors; rwkvkit never "
                "executes code from a checkpoint (re-save it as a plain state dict of tensors)"
            ) from None
        # torch's own text may suggest weights_only=False, which we never do: name the failure only
        raise CheckpointError(
            f"{path} is truncated or corrupt (reading it raised {type(e).__name__}); "
            "download or copy it again"
        ) from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if "state_dict" in sd or "model" in sd:
        raise CheckpointError(f"{path} looks like a training checkpoint; pass the model's state dict")
    return sd


# what a pickle of plain tensors refers to: torch's rebuild functions and storages, OrderedDict
_TENSOR_GLOBALS = re.compile(r"^(torch(\.[\w.]+)?\.\w+|collections\.OrderedDict|_codecs\.encode)$")


def pickled_globals(path: str | Path, foreign_only: bool = False) -> list[str]:
    """The ``module.name`` globals a ``torch.save`` file's pickle refers to, read with
    :mod:`pickletools` (which only parses: nothing is imported or called).

    ``foreign_only`` keeps those that are not part of saving plain tensors, that is, code or
    objects a full unpickler would import and call. A damaged pickle gives what precedes the damage.
    """
    import io
    import pickletools

    path = Path(path)
    zipped = is_zip(path)
    try:
        if zipped:
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name is not None and z.getinfo(name).file_size < 1 << 28 else b""
        else:  # legacy: magic number, protocol, system info, then the object, one pickle each
            with open(path, "rb") as f:
                data = f.read(1 << 24)
    except Exception:  # noqa: BLE001 - a damaged archive: nothing can be said about its pickle
        return []
    found: list[str] = []
    buf = io.BytesIO(data)
    for _ in range(1 if zipped else 4):
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(buf):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - a damaged or non-pickle stream: stop reading it
            break
    if foreign_only:
        found = [g for g in found if not _TENSOR_GLOBALS.match(g)]
    return list(dict.fromkeys(found))


# prefixes that wrappers add to every key: torch.compile (``_orig_mod.``), DataParallel/DDP (``module.``)
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def strip_wrapper_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``_orig_mod.`` / ``module.`` when every key carries it (a state dict saved from a wrapper)."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def detect_version(sd: dict[str, torch.Tensor]) -> str:
    """The RWKV version of an official state dict, from its keys and shapes alone.

    Unlike the official package this works for one-layer checkpoints (it looks at the shape of
    ``time_decay`` together with the keys of the same block, not at keys of earlier blocks).
    """
    keys = list(sd)
    if "emb.weight" not in sd or not any(k.startswith("blocks.") for k in keys):
        found = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        raise UnsupportedVersionError(
            f"not an RWKV checkpoint: expected keys 'emb.weight' and 'blocks.N.*', found {found}"
        )
    has = lambda suffix: any(k.endswith(suffix) for k in keys)  # noqa: E731
    if has("ffn.s_emb.weight"):
        raise UnsupportedVersionError(
            "this is an RWKV-7 DeepEmbed checkpoint (keys ffn.s_emb.*), a variant rwkvkit does not run"
        )
    if has("att.r_k") or has("att.rk_s") or has("att.x_r") or has("att.xx_r"):
        return "7"
    if has("att.time_maa_x") or has("ffn.time_maa_k"):
        return "6"
    if has("att.ln_x.weight"):
        decay = next(v for k, v in sd.items() if k.endswith("att.time_decay"))
        if decay.dim() >= 2 and decay.shape[-1] > 1:
            return "5.2"  # per-channel decay (H, N)
        return "5.1" if has("att.gate.weight") else "5.0"
    if has("att.time_first") and has("att.time_mix_k"):
        return "4"
    raise UnsupportedVersionError("unrecognised RWKV checkpoint: its attention keys match no known version")


def rename_old_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map pre-November-2024 RWKV-7 names to the current ones (a no-op for current files)."""
    out = {}
    for k, v in sd.items():
        m = _BLOCK_KEY.match(k)
        if m and m.group(2) in V7_OLD_NAMES:
            k = f"blocks.{m.group(1)}.{V7_OLD_NAMES[m.group(2)]}"
        out[k] = v
    return out


def n_layer_of(sd: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k)))


def config_from_state_dict(sd: dict[str, torch.Tensor], version: str) -> RWKVConfig:
    """Read every size from tensor shapes (LoRA ranks included: formulas do not always give them)."""
    spec = spec_of(version, UnsupportedVersionError)
    try:
        vocab_size, n_embd = sd["emb.weight"].shape
        return RWKVConfig(
            version=version,
            n_layer=n_layer_of(sd),
            n_embd=n_embd,
            vocab_size=vocab_size,
            dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0],
            **spec.sizes_from_state_dict(sd),
        )
    except KeyError as e:
        raise CheckpointError(f"RWKV-{version} checkpoint is missing the key {e.args[0]!r}") from None
    except (ValueError, AttributeError, IndexError, TypeError) as e:
        raise CheckpointError(f"RWKV-{version} checkpoint has unexpected tensor shapes: {e}") from None


def expected_shapes(config: RWKVConfig) -> dict[str, tuple[int, ...]]:
    """Every key of an official checkpoint of ``config`` and its shape (docs/checkpoints.md#official-keys):
    the parameters of the rwkvkit model (their names are the official ones), built on the meta device.

    RWKV-5 files name the bonus ``time_first`` (its log, ``config.v5_log_bonus``) or ``time_faaaa``.
    """
    with on_meta():
        model = RWKV(config, device="meta")
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}


def check_state_dict(
    sd: dict[str, torch.Tensor],
    config: RWKVConfig,
    source: str,
    expected: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise a one-line CheckpointError unless ``sd`` has exactly the keys and shapes ``expected``.

    ``expected`` defaults to the official ones (:func:`expected_shapes`); a model passes its own.
    """
    expected = expected_shapes(config) if expected is None else expected
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = ([f"missing keys {short(missing)}"] if missing else []) + (
            [f"unexpected keys {short(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(f"cannot map {source} to an RWKV-{config.version} model: " + "; ".join(parts))
    for k, shape in expected.items():
        t = sd[k]
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(t.shape)}, expected {shape} for {config}"
            )
        if not t.is_floating_point():
            raise CheckpointError(f"{source}: tensor {k!r} has non-float dtype {t.dtype}")


def to_native(sd: dict[str, torch.Tensor], version: str, config: RWKVConfig) -> dict[str, torch.Tensor]:
    """Official state dict -> rwkvkit state dict (same names; fills what old files lack)."""
    sd = rename_old_keys(sd)  # RWKV-7's old names; no other version has them
    complete = spec_of(version, UnsupportedVersionError).complete_state_dict
    if complete is not None:
        complete(sd, config)
    return sd


def from_native(sd: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """rwkvkit state dict -> official state dict (identity names; detached tensors owning their bytes)."""
    return owned(sd, dtype)


def save_pth(sd: dict[str, torch.Tensor], path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write an official-format ``.pth`` (atomically: temporary file, then rename)."""
    official = from_native(sd, dtype)
    atomic_file(Path(path), lambda tmp: torch.save(official, tmp))
