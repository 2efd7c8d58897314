"""Adapter files: only the LoRA tensors of a model, with what is needed to put them back.

An adapter file is one ``.safetensors`` file (checksummed like every file rwkvkit writes,
:mod:`rwkvkit.utils.integrity`):

* tensors: ``<module>.lora_A [r, in]`` and ``<module>.lora_B [out, r]`` for every wrapped module;
  after a PiSSA init also ``<module>.lora_A0`` and ``<module>.lora_B0``, the initial factors;
* metadata: ``format`` (``rwkvkit.adapter/1``), ``method`` (``lora``), ``init``, ``r``, ``alpha``,
  ``dropout``, ``targets`` (the patterns, JSON), ``modules`` (the wrapped paths, JSON), ``base`` (the
  fingerprint below, JSON), ``base_name`` (free text, e.g. the base file's name; not checked) and
  ``rwkvkit_version``.

The base fingerprint: ``version``, ``n_layer``, ``n_embd``, ``vocab_size``, ``head_size`` of the
model's config, the shape ``[out, in]`` of every wrapped weight, and ``weights``: a digest of those
weights as they were before the adapter touched them (rounded to bf16, so a base loaded in fp32 or
bf16 has the same one; null when the adapter was applied to a model on the meta device).
:func:`load_adapter` refuses an adapter whose sizes or shapes differ (one line naming the first
difference), and one trained on other weights of the same shape unless ``check_base=False``.

PiSSA and the changed base: a PiSSA init replaces each wrapped weight by the residual
``W - s B0 A0``, so the fine-tuned model is ``W - s B0 A0 + s B A``. Storing the residuals would
make the adapter as large as the wrapped weights; recomputing the SVD at load time is slow and not
reproducible bit for bit across LAPACK builds (nor, for ``pissa_niter_N``, across torch's random
streams). So the file keeps the initial factors ``A0, B0`` (twice the LoRA tensors, still a few MB)
and loading recomputes the residual from the original base with the very function the init used
(:meth:`~rwkvkit.finetune.lora.LoRALinear.start_from_`): on the original base, loading gives the
fine-tuned model (bit for bit on the same machine), and it stays a PiSSA model that can train on.
(peft instead offers to convert a PiSSA adapter into a rank-2r LoRA, ``[B | B0]`` and ``[A; -A0]``;
that loses the PiSSA parametrisation for further training.)

Example::

    >>> model = rwkvkit.load("base.pth")
    >>> apply_lora(model, r=16, init="pissa_niter_4"); ...          # train
    >>> save_adapter(model, "chat.adapter.safetensors", base="base.pth")
    >>> fresh = rwkvkit.load("base.pth")
    >>> load_adapter(fresh, "chat.adapter.safetensors")            # the fine-tuned model again
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import xxhash

from rwkvkit import __version__
from rwkvkit.errors import CheckpointError, ConfigError
from rwkvkit.finetune.lora import LoRALinear, _replace, lora_modules, parse_init, weight_digest
from rwkvkit.formats.native import read_safetensors
from rwkvkit.utils.integrity import save_safetensors

__all__ = ["FORMAT", "base_fingerprint", "load_adapter", "read_adapter", "save_adapter"]

FORMAT = "rwkvkit.adapter/1"
_CONFIG_FIELDS = ("version", "n_layer", "n_embd", "vocab_size", "head_size")


def _combined_digest(digests: list[str | None]) -> str | None:
    if any(d is None for d in digests):  # adapters made on a meta-device model: nothing to check
        return None
    return xxhash.xxh3_128("\n".join(digests).encode()).hexdigest()


def base_fingerprint(model: nn.Module, modules: list[str], digests: list[str] | None = None) -> dict:
    """The fingerprint of the base model an adapter on ``modules`` belongs to (module docstring).

    ``digests``: the wrapped weights' digests (:func:`~rwkvkit.finetune.lora.weight_digest`) in the
    order of ``modules``; None reads them from the model's :class:`LoRALinear` modules."""
    config = getattr(model, "config", None)
    fp: dict = {f: getattr(config, f, None) for f in _CONFIG_FIELDS}
    shapes, found = {}, []
    for name in modules:
        m = model.get_submodule(name)
        shapes[name] = [m.out_features, m.in_features]
        if digests is None:
            found.append(m.base_digest)
    fp["shapes"] = shapes
    fp["weights"] = _combined_digest(found if digests is None else digests)
    return fp


def save_adapter(model: nn.Module, path: str | Path, base: str | None = None) -> Path:
    """Write the LoRA tensors of ``model`` (and how to apply them) to ``path`` (``.safetensors``).

    ``base``: a name for the base model (its file name, a hub name, ...), stored for people to read;
    the checked fingerprint is computed from the model itself. The write is atomic. Returns ``path``.

    Example::

        >>> apply_lora(model, r=8); ...; save_adapter(model, "a.safetensors", base="rwkv7-0.1b.pth")
    """
    mods = list(lora_modules(model))
    if not mods:
        raise ConfigError("the model has no LoRA modules to save; call apply_lora (or load_adapter) first")
    first = mods[0][1]
    settings = {(m.r, m.alpha, m.dropout_p, m.init) for _, m in mods}
    if len(settings) > 1:
        raise ConfigError(f"the model's LoRA modules differ in (r, alpha, dropout, init): {sorted(settings)}")
    names = [n for n, _ in mods]
    tensors: dict[str, torch.Tensor] = {}
    for name, m in mods:
        tensors[f"{name}.lora_A"] = m.lora_A
        tensors[f"{name}.lora_B"] = m.lora_B
        if m.lora_A0 is not None:
            tensors[f"{name}.lora_A0"] = m.lora_A0
            tensors[f"{name}.lora_B0"] = m.lora_B0
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "method": "lora",
        "init": first.init,
        "r": str(first.r),
        "alpha": repr(first.alpha),
        "dropout": repr(first.dropout_p),
        "targets": json.dumps(list(first.targets or names)),
        "modules": json.dumps(names),
        "base": json.dumps(base_fingerprint(model, names), sort_keys=True),
        "base_name": "" if base is None else str(base),
        "rwkvkit_version": __version__,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_safetensors(tensors, tmp, meta)
    tmp.replace(path)  # atomic: a crash never leaves a half-written adapter behind
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the parsed metadata of an adapter file (checksums verified); a file that is
    not one is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter file not found: {path}")
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rwkvkit adapter file (format tag {meta.get('format')!r})")
    try:
        info = {
            "init": meta["init"],
            "r": int(meta["r"]),
            "alpha": float(meta["alpha"]),
            "dropout": float(meta["dropout"]),
            "targets": json.loads(meta["targets"]),
            "modules": json.loads(meta["modules"]),
            "base": json.loads(meta["base"]),
            "base_name": meta.get("base_name", ""),
        }
        parse_init(info["init"])
        if not math.isfinite(info["alpha"]) or not isinstance(info["modules"], list):
            raise ValueError
    except (KeyError, ValueError, TypeError, ConfigError):
        raise CheckpointError(
            f"{path}: its adapter metadata is missing or invalid; the file is damaged"
        ) from None
    return tensors, info


def _check_fits(model: nn.Module, info: dict, path: Path, check_base: bool) -> list[str]:
    """The digests of the target weights; CheckpointError naming the first mismatch."""
    fp, config = info["base"], getattr(model, "config", None)
    for f in _CONFIG_FIELDS:
        have = getattr(config, f, None)
        if fp.get(f) != have:
            raise CheckpointError(
                f"{path} is an adapter for a model with {f} = {fp.get(f)}, but this model has {f} = {have}; "
                "load the base model it was trained on"
            )
    digests = []
    for name in info["modules"]:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"{path}: the adapter wraps {name}, which this model does not have"
            ) from None
        if isinstance(m, LoRALinear):
            raise ConfigError(f"{name} already carries a LoRA adapter; load adapters into a plain base model")
        if type(m) is not nn.Linear:
            raise CheckpointError(f"{path}: the adapter wraps {name}, which is a {type(m).__name__} here")
        want = fp["shapes"].get(name)
        if want != [m.out_features, m.in_features]:
            raise CheckpointError(
                f"{path}: the adapter's {name} is [out, in] = {want}, this model's is "
                f"{[m.out_features, m.in_features]}; load the base model it was trained on"
            )
        digests.append(weight_digest(m.weight))
    if check_base and fp.get("weights") is not None and _combined_digest(digests) != fp["weights"]:
        raise CheckpointError(
            f"{path} was trained on a base model of this shape but with other weights (its fingerprint "
            f"differs); load that base ({info['base_name'] or 'not named in the file'}), or pass "
            "check_base=False to apply it anyway"
        )
    return digests


@torch.no_grad()
def load_adapter(model: nn.Module, path: str | Path, *, check_base: bool = True) -> list[str]:
    """Apply the adapter in ``path`` to the plain base ``model`` in place; returns the wrapped paths.

    The model is frozen and its modules wrapped as :func:`~rwkvkit.finetune.lora.apply_lora` would
    (same ``r``, ``alpha``, dropout), with the file's factors; a PiSSA adapter also turns each
    weight into its residual (module docstring), so the result is the fine-tuned model and can be
    trained further. Call :func:`~rwkvkit.finetune.lora.merge_lora` afterwards for a plain model.

    Raises CheckpointError (one line) for a file that is not an adapter, is damaged, or belongs to a
    model of other sizes or shapes; with ``check_base`` (default), also for a base of the right
    shape whose weights differ from those the adapter was trained on.

    Example::

        >>> model = rwkvkit.load("rwkv7-0.1b.pth")
        >>> load_adapter(model, "chat.adapter.safetensors")
        >>> merge_lora(model)                          # optional: a plain RWKV again
    """
    path = Path(path)
    tensors, info = read_adapter(path)
    names = info["modules"]
    digests = _check_fits(model, info, path, check_base)
    pissa = parse_init(info["init"]) is not None
    needed = [f"{n}.{t}" for n in names for t in (("lora_A", "lora_B", "lora_A0", "lora_B0") if pissa
                                                   else ("lora_A", "lora_B"))]  # fmt: skip
    missing = [k for k in needed if k not in tensors]
    if missing or len(tensors) != len(needed):
        extra = sorted(set(tensors) - set(needed))
        raise CheckpointError(f"{path}: adapter tensors missing {missing[:3]} or unexpected {extra[:3]}")
    r = info["r"]
    model.requires_grad_(False)
    for name, digest in zip(names, digests):
        base = model.get_submodule(name)
        A, B = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
        if tuple(A.shape) != (r, base.in_features) or tuple(B.shape) != (base.out_features, r):
            raise CheckpointError(f"{path}: {name}.lora_A/B have shapes {tuple(A.shape)}, {tuple(B.shape)}")
        m = LoRALinear(base, r, info["alpha"], info["dropout"], dtype=A.dtype, digest=digest)
        m.targets = tuple(info["targets"])
        dev = base.weight.device
        if pissa:
            m.start_from_(
                tensors[f"{name}.lora_A0"].to(dev), tensors[f"{name}.lora_B0"].to(dev), info["init"]
            )
        m.lora_A.copy_(A.to(dev))
        m.lora_B.copy_(B.to(dev))
        _replace(model, name, m)
    return names
