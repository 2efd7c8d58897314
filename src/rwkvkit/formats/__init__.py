"""Reading, checking and writing RWKV checkpoints in the formats people have.

=========  =========================================================================================
format     what it is (module)
=========  =========================================================================================
blinkdl    the official ``.pth`` (``torch.save`` of the state dict), RWKV-4 to 7 (:mod:`.blinkdl`)
rwkvkit    one ``.safetensors`` file, official names, RWKVConfig + tag in its metadata (:mod:`.native`)
hf         a Hugging Face model directory: transformers RWKV-4, the RWKV hub's RWKV-5.2/6, fla
           RWKV-6/7 (:mod:`.hf`, tables in :mod:`.hf_transformers`, :mod:`.hf_rwkv_hub`, :mod:`.hf_fla`)
gguf       llama.cpp's ``.gguf``, RWKV-6/7 in llama.cpp's layout (architectures ``rwkv6``/``rwkv7``),
           f32/f16/bf16 or quantised (q8_0, q4_0 written; any type gguf-py dequantises read) (:mod:`.gguf`)
=========  =========================================================================================

Every reader ends in the same place: a :class:`Checkpoint` whose state dict has rwkvkit's names
(the official ones), whose config is read from the tensor shapes alone, and which has been checked
key by key and shape by shape against the official layout (docs/checkpoints.md#official-keys). A plain
``.safetensors`` with official names is read as well. Writers are atomic (temporary file or folder,
then rename) and lossless: every key map is a pure reshaping (:mod:`.keymap`), so a round trip
through any format gives back the same bits, except RWKV-7's layer-0 value-residual LoRA, which
fla does not store (unused by the model; it reads back as zeros). GGUF is lossless at f32 (and at
the checkpoint's own precision, the default); its q8_0 and q4_0 types are lossy by design, and are
read back dequantised to float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rwkvkit.assets import DEFAULT_NAME, default_model_path
from rwkvkit.errors import CheckpointError, ConfigError
from rwkvkit.formats import blinkdl, gguf, hf, native
from rwkvkit.formats._io import majority_dtype, parse_dtype
from rwkvkit.models.arwkv import ARWKV, ARWKVConfig
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.utils.integrity import Verified, check_zip_crc, is_zip, verify_tensors
from rwkvkit.utils.meta import on_meta

FORMATS = ("rwkvkit", "blinkdl", "hf", "gguf")


@dataclass
class Checkpoint:
    """A checkpoint as read: rwkvkit-named tensors, the config, and what the file held.

    Attributes:
        state_dict: tensors under rwkvkit's (official) names, in the file's dtypes.
        config: sizes and version, read from the tensor shapes.
        format: ``"blinkdl"``, ``"rwkvkit"``, ``"safetensors"`` (plain, official names), ``"hf"`` or
            ``"gguf"``.
        description: a readable name of the format and layout (``rwkvkit info`` prints it).
        path: the file or directory read.
        files: every file read (an HF directory's config, weights, shards).
        stored_parameters: number of values stored (fla leaves out RWKV-7's layer-0 value LoRA).
        stored_dtypes: the dtypes of the stored tensors (GGUF: ggml type names, ``"q4_0"``, ...).
        source: where the layout's key map comes from (HF layouts, GGUF).
        stored_dtype: the type most stored values have, where the state dict does not show it
            (GGUF: the quantised types are read back as float32); empty otherwise.
    """

    state_dict: dict[str, torch.Tensor]
    config: RWKVConfig
    format: str
    description: str
    path: Path
    files: list[Path] = field(default_factory=list)
    stored_parameters: int = 0
    stored_dtypes: list[str] = field(default_factory=list)
    source: str = ""
    stored_dtype: str = ""


def _dtype_names(sd: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({str(t.dtype).removeprefix("torch.") for t in sd.values()})


def _config_diff(a: RWKVConfig, b: RWKVConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(f"{k} {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k])


def _from_official(
    sd: dict[str, torch.Tensor],
    path: Path,
    fmt: str,
    description: str,
    declared: RWKVConfig | None = None,
    verify: bool = True,
) -> Checkpoint:
    """Official-name tensors (a .pth or a safetensors file) -> a checked Checkpoint."""
    sd = blinkdl.strip_wrapper_prefixes(sd)
    if "emb.weight" not in sd and hf.is_model_dir(path.parent):
        return _read_hf(path.parent, verify)  # a weights file of an HF directory: read the whole directory
    stored_parameters, stored_dtypes = sum(t.numel() for t in sd.values()), _dtype_names(sd)
    version = blinkdl.detect_version(sd)
    config = blinkdl.config_from_state_dict(blinkdl.rename_old_keys(sd), version)
    if declared is not None and declared != config:
        raise CheckpointError(
            f"{path}: the config in its metadata disagrees with its tensors "
            f"({_config_diff(declared, config)}); the file was damaged or edited"
        )
    sd = blinkdl.to_native(sd, version, config)
    blinkdl.check_state_dict(sd, config, str(path))
    return Checkpoint(sd, config, fmt, description, path, [path], stored_parameters, stored_dtypes)


def _read_hf(path: Path, verify: bool = True) -> Checkpoint:
    sd, config, layout, stored, files = hf.read(path, verify)
    return Checkpoint(
        sd, config, "hf", f"HF directory, {layout.title}", path, files,
        sum(t.numel() for t in stored.values()), _dtype_names(stored), layout.source,
    )  # fmt: skip


def _read_gguf(path: Path, verify: bool = True) -> Checkpoint:
    sd, config, info = gguf.read(path, verify)
    return Checkpoint(
        sd, config, "gguf", f"GGUF, llama.cpp {info['architecture']} ({info['main_type']})", path, [path],
        info["stored_parameters"], info["stored_types"], gguf.SOURCE, info["main_type"],
    )  # fmt: skip


def resolve(path: str | Path) -> Path:
    """``"default"`` names the model shipped with rwkvkit; anything else is a path."""

    if str(path) == DEFAULT_NAME and not Path(path).exists():
        model = default_model_path()
        if not model.is_file():
            raise CheckpointError(
                f"the default model is not installed ({model} is missing); "
                "reinstall rwkvkit or pass --model PATH"
            )
        return model
    return Path(path)


def read(path: str | Path, verify: bool = True) -> Checkpoint:
    """Read and check a checkpoint of any supported format, without building a model.

    Args:
        path: an official ``.pth``, an rwkvkit (or official-name) ``.safetensors``, an HF model
            directory (or one of its weight files), or an RWKV-6/7 ``.gguf`` (told by its magic bytes).
        verify: check the bytes against the checksums the file carries (rwkvkit's safetensors:
            a digest per tensor, also in its GGUF files; ``torch.save`` zips: CRC32 per record);
            costs about a memory read.

    Raises:
        CheckpointError: missing, unreadable, truncated or corrupt files; keys or shapes that do not
            map; a config.json or metadata that disagrees with the tensors.
        UnsupportedVersionError: an RWKV version, variant or HF layout rwkvkit cannot run.
    """
    path = resolve(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_hf(path, verify)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the download or save was interrupted")
    if gguf.is_gguf(path):
        return _read_gguf(path, verify)
    if path.suffix == ".safetensors" or native.looks_like_safetensors(path):
        sd, meta = native.read_safetensors(path, verify)
        family = native.family_of(meta, path)
        if family is not None:
            raise CheckpointError(
                f"{path} holds an {family.upper()} model, not an RWKV language model checkpoint; "
                "load it with rwkvkit.load (info and convert handle RWKV checkpoints only)"
            )
        declared = native.config_from_metadata(meta, path)
        if declared is None:
            return _from_official(
                sd, path, "safetensors", "safetensors with official (BlinkDL) names", verify=verify
            )
        return _from_official(
            sd, path, "rwkvkit", f"rwkvkit .safetensors (format {meta[native.TAG]})", declared, verify
        )
    return _from_official(
        blinkdl.read_pth(path, verify), path, "blinkdl", "official (BlinkDL) .pth", verify=verify
    )


def build_model(
    config: RWKVConfig,
    sd: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: str | torch.device,
    source: str,
) -> RWKV:
    """Create the model on the meta device and adopt the checkpoint's tensors (no double allocation)."""
    with on_meta():
        model = RWKV(config, dtype=dtype)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    blinkdl.check_state_dict(sd, config, source, expected)
    _adopt(model, sd, expected, dtype, device, source)
    return model.eval()


def _adopt(model, sd, keys, dtype, device, source: str, strict: bool = True) -> None:
    """Load ``sd[k]`` for ``k`` in ``keys`` into a meta-device ``model`` (cast, moved, no copy kept),
    refusing NaN or inf."""
    tensors = {}
    for k in keys:
        if not torch.isfinite(sd[k]).all():
            raise CheckpointError(f"{source}: tensor {k!r} contains NaN or inf; the checkpoint is corrupt")
        tensors[k] = sd[k].to(device=device, dtype=dtype)
    model.load_state_dict(tensors, assign=True, strict=strict)


def load(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    verify: bool = True,
    *,
    weights: str | None = None,
    head: str | None = None,
) -> RWKV:
    """Load an RWKV checkpoint of any supported format, detecting the version from its keys.

    Args:
        path: an official (BlinkDL) ``.pth`` file (any key-name generation), an rwkvkit
            ``.safetensors`` file, an HF model directory (transformers RWKV-4, the RWKV hub's
            RWKV-5.2/6, fla RWKV-6/7; told apart by ``config.json`` and the keys), or an RWKV-6/7
            GGUF file of llama.cpp (quantised tensors are dequantised).
        dtype: weight dtype (``torch.float32``, ``"bf16"``, ...); None keeps the checkpoint's dtype
            (a quantised GGUF: float32).
            The recurrent state and WKV accumulation are fp32 whatever this is.
        device: where to put the weights.
        verify: check the file's checksums (rwkvkit's files carry a digest of every tensor; the
            official ``.pth`` zip a CRC32 per record) and refuse a file whose bytes changed. It
            costs about one more read of the weights in memory (``benchmarks/verify.py``).
        weights: None (default): the model as stored (for training, fine-tuning, any device).
            ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"q4"``: a CPU inference model with its projections
            in that format, built straight from the file one tensor at a time, so loading never holds
            a wider copy of the model (:mod:`rwkvkit.inference.loading`); the same model as
            ``rwkvkit.inference.optimize(load(path), weights)``, in less memory. CPU only; not with
            ``dtype``.
        head: with ``weights``, the output head's precision (same choices; None: int8 for q4, else
            ``weights``: the measured trade-off in :mod:`rwkvkit.inference.quant`).

    Returns:
        An :class:`rwkvkit.models.rwkv.model.RWKV` in eval mode (with ``weights``, its inference
        subclass :class:`rwkvkit.inference.OptimizedRWKV`).

    Raises:
        CheckpointError: missing, unreadable, truncated or corrupt file; keys that do not map; a
            config that disagrees with the tensors.
        UnsupportedVersionError: a version (or architecture) rwkvkit cannot run.
    """
    if weights is not None:
        return _load_for_inference(path, weights, dtype, device, verify, head)
    if head is not None:
        raise ConfigError("head= sets the output head's precision of an inference model: pass weights= too")
    family_model = _load_family(path, dtype, device, verify)
    if family_model is not None:
        return family_model
    ckpt = read(path, verify)
    dtype = parse_dtype(dtype) or majority_dtype(ckpt.state_dict)
    return build_model(ckpt.config, ckpt.state_dict, dtype, device, str(ckpt.path))


def _load_for_inference(path, weights: str, dtype, device, verify: bool, head: str | None) -> RWKV:
    if dtype is not None:
        raise ConfigError(
            f"pass either dtype ({dtype!r}: the model as stored) or weights ({weights!r}: the CPU "
            "inference model), not both"
        )
    if torch.device(device).type != "cpu":
        raise ConfigError(
            f"weights={weights!r} builds a CPU inference model; for {device} load without weights "
            "(rwkvkit.load(path, dtype='bf16', device=...))"
        )
    ckpt = read(path, verify)
    from rwkvkit.inference.loading import build_inference_model  # deferred: only inference loading needs it

    config, sd, file = ckpt.config, dict(ckpt.state_dict), Path(ckpt.path)
    del ckpt  # its references to the tensors go: build_inference_model drops them one at a time
    return build_inference_model(config, sd, weights, file, str(path), head=head)


def _load_family(path: str | Path, dtype, device, verify: bool = True):
    """An rwkvkit file of another model family (ARWKV), built from its metadata; None otherwise."""
    path = resolve(path)
    if not path.is_file() or path.stat().st_size == 0 or gguf.is_gguf(path):
        return None
    if not native.looks_like_safetensors(path):
        return None
    if native.read_metadata(path).get(native.FAMILY) is None:
        return None  # an RWKV checkpoint: read() below
    sd, meta = native.read_safetensors(path, verify)
    native.family_of(meta, path)  # a family this rwkvkit knows

    try:
        config = ARWKVConfig.from_dict(native.family_config(meta, path))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: its ARWKV config metadata is invalid ({e})") from None
    dtype = parse_dtype(dtype) or majority_dtype(sd)
    with on_meta():
        model = ARWKV(config, dtype=dtype)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("head.weight")
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: the ARWKV tensors do not match its config (missing {missing[:5]}, unexpected "
            f"{extra[:5]}); the file was damaged or edited"
        )
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {tuple(sd[k].shape)}, its config needs {shape}"
            )
    _adopt(model, sd, expected, dtype, device, str(path), strict=not config.tie_embeddings)
    if config.tie_embeddings:
        model.head.weight = model.emb.weight
    return model.eval()


def describe(path: str | Path, verify: bool = True) -> dict:
    """What a checkpoint holds, without building a model: format, version, sizes, parameters, dtype."""
    ckpt = read(path, verify)
    return {
        "path": str(ckpt.path),
        "format": ckpt.description,
        "config": ckpt.config,
        "parameters": ckpt.stored_parameters,
        "dtype": ckpt.stored_dtype or str(majority_dtype(ckpt.state_dict)).removeprefix("torch."),
        "dtypes": ckpt.stored_dtypes,
        "file_bytes": sum(f.stat().st_size for f in ckpt.files),
        "source": ckpt.source,
    }


def verify(path: str | Path) -> list[Verified]:
    """Check every file of a checkpoint (a file, or each weights file of a directory) against its
    checksums, without building a model; what ``rwkvkit info --verify`` reports.

    Returns one :class:`~rwkvkit.utils.integrity.Verified` per file (``method`` empty for a file
    that carries no checksums). Raises CheckpointError on the first corrupt file.
    """
    path = resolve(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    weights = (".safetensors", ".bin", ".pth", ".pt", ".gguf")
    files = sorted(p for p in path.iterdir() if p.suffix in weights) if path.is_dir() else [path]
    out = []
    for f in files:
        if is_zip(f):
            out.append(check_zip_crc(f))
        elif gguf.is_gguf(f):
            out.append(gguf.verify(f))
        elif f.suffix == ".safetensors" or native.looks_like_safetensors(f):
            tensors, meta = native.read_safetensors(f, verify=False)
            out.append(verify_tensors(tensors, meta, f))
        else:
            out.append(Verified(f, "", 0, 0, 0.0))
    return out


def _state_and_config(obj: object) -> tuple[dict[str, torch.Tensor], RWKVConfig]:
    if isinstance(obj, Checkpoint):
        return obj.state_dict, obj.config
    if isinstance(obj, torch.nn.Module):
        config = getattr(obj, "config", None)
        if not isinstance(config, RWKVConfig):
            raise TypeError(
                f"save() takes an rwkvkit RWKV model, got a {type(obj).__name__} without an RWKVConfig"
            )
        sd = obj.state_dict()
    elif isinstance(obj, Mapping):
        sd = blinkdl.strip_wrapper_prefixes(dict(obj))
        version = blinkdl.detect_version(sd)
        config = blinkdl.config_from_state_dict(blinkdl.rename_old_keys(sd), version)
        sd = blinkdl.to_native(sd, version, config)
    else:
        raise TypeError(f"save() takes a model, a state dict or a Checkpoint, got {type(obj).__name__}")
    blinkdl.check_state_dict(sd, config, "the state dict to save")
    return sd, config


def save(
    model_or_state_dict: RWKV | Mapping[str, torch.Tensor] | Checkpoint,
    path: str | Path,
    format: str = "rwkvkit",  # noqa: A002 - the natural name of the option
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = "auto",
) -> Path:
    """Write a model, an official-name state dict, or a read :class:`Checkpoint`.

    Args:
        model_or_state_dict: what to write; a state dict's version and sizes are read from its shapes.
        path: a file (``rwkvkit``: ``.safetensors``; ``blinkdl``: ``.pth``; ``gguf``: ``.gguf``) or a
            directory (``hf``).
        format: ``"rwkvkit"``, ``"blinkdl"``, ``"hf"`` (layout per version: transformers for
            RWKV-4, the RWKV hub for 5.2, fla for 6 and 7; RWKV-5.0/5.1 have no HF layout) or
            ``"gguf"`` (llama.cpp's layout; RWKV-6 and 7 only).
        dtype: cast the floating-point tensors (``"bf16"``, ``torch.float16``, ...); None keeps them.
            GGUF also takes ``"q8_0"`` and ``"q4_0"`` and casts only its large matrices (norms,
            lerps, decay and LoRAs stay f32, as llama.cpp keeps them; :mod:`rwkvkit.formats.gguf`).
        tokenizer: GGUF only: the vocabulary it carries, ``"auto"`` (the World vocabulary when the
            model has its size), ``"world"``, a World ``.txt`` vocabulary, or None.

    Returns:
        ``path``. The write is atomic: a temporary file or folder, then a rename.
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if format != "gguf" and tokenizer != "auto":
        raise ConfigError(
            f"tokenizer= is an option of the gguf format; the {format} format stores no vocabulary"
        )
    path = Path(path)
    sd, config = _state_and_config(model_or_state_dict)
    if format == "gguf":
        return gguf.write(sd, config, path, dtype=dtype, tokenizer=tokenizer)
    dtype = parse_dtype(dtype)
    if format == "hf":
        hf.write(sd, config, path, dtype=dtype)
        return path
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; the {format} format is a single file")
    if format == "rwkvkit":
        native.write(sd, config, path, dtype)
    else:
        blinkdl.save_pth(sd, path, dtype)
    return path


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = "auto",
) -> Checkpoint:
    """Read ``src`` (any format), check it, write it to ``dst`` in format ``to``; returns what was read.

    ``dtype`` and ``tokenizer`` are those of :func:`save`: e.g. ``convert("m.pth", "m.gguf",
    to="gguf", dtype="q4_0")`` writes llama.cpp's q4_0 file with the World vocabulary.
    """
    ckpt = read(src)
    save(ckpt, dst, format=to, dtype=dtype, tokenizer=tokenizer)
    return ckpt


__all__ = [
    "FORMATS", "Checkpoint", "read", "load", "describe", "verify", "save", "convert",
    "parse_dtype", "build_model", "blinkdl", "gguf", "hf", "native",
]  # fmt: skip
