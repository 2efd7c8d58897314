"""Training configuration: one frozen dataclass, TOML files, named presets, command-line overrides.

A run is fully described by a :class:`TrainConfig`. It comes from a preset (``--preset NAME``), a
TOML file (flat ``key = value`` pairs, the dataclass field names; ``[model]``-style tables are
accepted and flattened), and ``--field value`` overrides on the command line, applied in that order.
The resolved config is written beside the checkpoints, so every run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rwkvkit.errors import ConfigError
from rwkvkit.models.rwkv.versions import SPECS, TRAINABLE


class FlatConfig:
    """Shared by the flat run configs (:class:`TrainConfig`, ``rwkvkit.distill.DistillConfig``):
    replace, dict and TOML round trips, typed parsing of command-line strings with clear errors."""

    _kind = "training"  # for error messages
    _command = "train"
    # fields a resumed run may change (everything else defines the model, the data or the
    # optimisation, and must stay as the run began); fields holding paths compare as real paths
    _resume_mutable: tuple[str, ...] = ()
    _path_fields: tuple[str, ...] = ()

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            lines.append(
                f"{f.name} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}"
            )
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], base=None):
        """``base`` (default: the defaults) with the fields of ``d`` replaced; unknown keys are an error."""
        flat: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):  # a [table] in TOML: its keys are field names too
                flat.update(v)
            else:
                flat[k] = v
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(flat) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls._kind} option(s) {unknown}; see `rwkvkit {cls._command} --help`")
        typed = {k: _coerce(k, v, known[k].type) for k, v in flat.items()}
        return dataclasses.replace(base or cls(), **typed)

    @classmethod
    def read_toml(cls, path: str | Path) -> dict[str, Any]:
        """The key/value pairs of a TOML config file, ``[tables]`` flattened (not yet checked)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{cls._kind} config not found: {path}")
        try:
            d = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        flat: dict[str, Any] = {}
        for k, v in d.items():
            flat.update(v if isinstance(v, dict) else {k: v})
        return flat

    @classmethod
    def from_toml(cls, path: str | Path, base=None):
        return cls.from_dict(cls.read_toml(path), base)

    # ---- resuming a run ------------------------------------------------------------------------

    def _same(self, name: str, a: Any, b: Any) -> bool:
        if name in self._path_fields and a and b:
            return os.path.realpath(str(a)) == os.path.realpath(str(b))
        return a == b

    def resume_changes(self, saved: Mapping[str, Any]) -> list[str]:
        """Compare this config with the one a run was saved with (``saved``: its ``to_dict()``).

        Returns the changes a resumed run may take, as readable lines (``"max_steps: 2000 (the run
        had 1000)"``); raises ConfigError naming the first field that may not change.
        """
        changes = []
        for f in fields(self):
            if f.name not in saved:
                continue  # a field newer than the saved run: nothing to compare
            was, now = saved[f.name], getattr(self, f.name)
            if self._same(f.name, now, was):
                continue
            option = "--" + f.name.replace("_", "-")
            if f.name not in self._resume_mutable:
                may = ", ".join(self._resume_mutable)
                raise ConfigError(
                    f"{option} is {now!r} but the run being resumed has {was!r}; a resumed run keeps its "
                    f"model, data and optimisation (only {may} may change): drop {option}, or start a "
                    "new run in another --out-dir"
                )
            changes.append(f"{f.name}: {now!r} (the run had {was!r})")
        return changes

    @classmethod
    def for_resume(cls, given: Mapping[str, Any]):
        """The config of a resumed run: the one saved in its ``out_dir/config.toml``, with ``given``
        (options the user passed again, strings or typed values) applied where they may change.
        ``out_dir`` is ``given``'s, else the default one."""
        out_dir = Path(given.get("out_dir") or cls().out_dir)
        saved_path = out_dir / "config.toml"
        if not saved_path.is_file():
            raise ConfigError(
                f"nothing to resume in {out_dir}: it has no config.toml of an earlier run; pass that "
                f"run's --out-dir, or start without --resume"
            )
        saved = cls.from_toml(saved_path)
        cfg = cls.from_dict(dict(given), base=saved)
        cfg.resume_changes(saved.to_dict())  # refuse changes of the model, data or optimisation
        return cfg


@dataclass(frozen=True, kw_only=True)
class TrainConfig(FlatConfig):
    """Everything a training run needs. Field docstrings are the ``rwkvkit train --help`` texts."""

    # ---- data and output ----
    data: str = ""
    """prepared data directory (`rwkvkit data prepare`), with train and val splits"""
    out_dir: str = "runs/train"
    """where checkpoints, the resolved config, loss.csv and loss.png go"""

    # ---- model ----
    arch: str = "rwkv"
    """model family: rwkv, or gpt (the transformer baseline)"""
    version: str = "7"
    """RWKV version to train: 4, 5.2, 6 or 7"""
    n_layer: int = 6
    """number of blocks"""
    n_embd: int = 256
    """model width C"""
    head_size: int = 64
    """RWKV head size (v5-v7); for gpt the attention head size"""
    dim_ffn: int = 0
    """feed-forward width; 0 = the version's default"""
    vocab_size: int = 0
    """0 = the tokenizer's vocabulary, rounded up to a multiple of 64"""
    lora_ranks: str = ""
    """RWKV-6/7 LoRA ranks as 'w,a,v,g' (v7) or 'mix,decay' (v6); empty = the official formula"""
    init_from: str = ""
    """checkpoint to start from (fine-tuning) instead of the official initialisation"""
    finetune: str = ""
    """with init_from: full (every weight), lora, pissa (LoRA started from the principal singular
    vectors) or state (only the initial WKV state of every layer); empty = train every weight"""
    lora_r: int = 8
    """rank of the fine-tuning LoRA adapters (finetune lora/pissa; not the model's own lora_ranks)"""
    lora_alpha: float = 16.0
    """LoRA scaling numerator: the adapter's product is multiplied by lora_alpha / lora_r"""
    lora_dropout: float = 0.0
    """dropout on the LoRA adapters' input during training"""
    lora_targets: str = ""
    """comma-separated module-name patterns to adapt, e.g. 'att.key,att.value,ffn' (empty = every
    time-mix and channel-mix projection)"""
    lora_int8: bool = False
    """LoRA/PiSSA: keep the frozen projections as int8 with per-row scales (QLoRA-style): a quarter of
    their memory, dequantised in each forward (not faster)"""

    # ---- batches ----
    ctx_len: int = 512
    """tokens per training window (the context the model learns)"""
    chunk_len: int = 0
    """process each window in chunks of this many tokens, carrying the state (0 = whole window)"""
    batch_size: int = 8
    """windows per micro-batch per process"""
    grad_accum: int = 1
    """micro-batches per optimiser step"""
    max_steps: int = 1000
    """optimiser steps in the whole run"""

    # ---- optimiser ----
    lr: float = 6e-4
    """peak learning rate (reached after warm-up)"""
    lr_final: float = 6e-5
    """learning rate at max_steps"""
    warmup_steps: int = 50
    """linear warm-up steps from lr / 100"""
    schedule: str = "cosine"
    """learning-rate decay after warm-up: cosine, exponential or constant"""
    weight_decay: float = 0.01
    """on matrices only (the official rule)"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.99
    """AdamW beta2 (the official 0.99)"""
    adam_eps: float = 1e-8
    """AdamW epsilon"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""
    l2wrap: bool = True
    """the official L2Wrap loss term on the largest logit"""
    fused_loss: bool = True
    """apply the output head and the loss in chunks of tokens (fused linear + cross-entropy): the whole
    [B, T, V] fp32 logits never exist, in training or validation; false = the plain logits and loss"""
    loss_chunk: int = 0
    """tokens per chunk of the fused loss (0 = automatic: about 256 MiB of fp32 logits per chunk)"""

    # ---- numerics and speed ----
    precision: str = "bf16"
    """bf16 (autocast, fp32 master weights) or fp32"""
    activation_checkpointing: bool = False
    """recompute each block in the backward pass (less memory, more time)"""
    compile: bool = False
    """torch.compile each block (falls back with a logged warning where unsupported)"""
    device: str = "cpu"
    """cpu, cuda or cuda:N"""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)"""
    parallel: str = "auto"
    """under torchrun: ddp or fsdp (fully_shard per block); auto = ddp when WORLD_SIZE > 1"""

    # ---- bookkeeping ----
    seed: int = 0
    """seeds the initialisation and the data order"""
    eval_every: int = 200
    """steps between validation passes (and at the end)"""
    eval_tokens: int = 0
    """validation tokens per pass (0 = the whole validation split)"""
    save_every: int = 200
    """steps between checkpoints (and at the end)"""
    log_every: int = 10
    """steps between log lines (tokens/s and MFU are averaged over them)"""
    progress: bool = True
    """show a progress bar (off automatically when stderr is not a terminal)"""

    _resume_mutable = ("max_steps", "lr_final", "eval_every", "eval_tokens", "save_every", "log_every",
                       "progress", "threads", "device", "precision", "compile", "activation_checkpointing",
                       "parallel", "fused_loss", "loss_chunk")  # fmt: skip
    _path_fields = ("data", "out_dir", "init_from")

    def __post_init__(self) -> None:
        checks = [
            (self.arch in ("rwkv", "gpt"), f"arch must be rwkv or gpt, got {self.arch!r}"),
            (self.version in TRAINABLE, f"version must be {', '.join(TRAINABLE)}, got {self.version!r}"),
            (self.ctx_len >= 1, "ctx_len must be >= 1"),
            (self.chunk_len >= 0, "chunk_len must be >= 0"),
            (self.loss_chunk >= 0, "loss_chunk must be >= 0 (0 = automatic)"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (
                0 <= self.warmup_steps <= self.max_steps,
                f"warmup_steps ({self.warmup_steps}) must be between 0 and max_steps ({self.max_steps})",
            ),
            (
                self.eval_every >= 1 and self.save_every >= 1 and self.log_every >= 1,
                "eval_every, save_every and log_every must be >= 1",
            ),
            (
                self.eval_tokens >= 0 and self.threads >= 0 and self.dim_ffn >= 0 and self.vocab_size >= 0,
                "eval_tokens, threads, dim_ffn and vocab_size must be >= 0",
            ),
            (self.schedule in ("cosine", "exponential", "constant"), f"unknown schedule {self.schedule!r}"),
            (self.precision in ("bf16", "fp32"), f"precision must be bf16 or fp32, got {self.precision!r}"),
            (self.parallel in ("auto", "ddp", "fsdp", "none"), f"unknown parallel mode {self.parallel!r}"),
            (self.lr > 0 and self.lr_final >= 0, "lr must be > 0 and lr_final >= 0"),
            (
                self.finetune in ("", "full", "lora", "pissa", "state"),
                f"finetune must be full, lora, pissa or state, got {self.finetune!r}",
            ),
            (
                not self.finetune or (self.init_from and self.arch == "rwkv"),
                "finetune needs the checkpoint to adapt: pass --init-from BASE (an RWKV model: a path or "
                "'default')",
            ),
            (self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}"),
            (self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}"),
            (0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def effective_chunk(self) -> int:
        return self.chunk_len or self.ctx_len


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a TOML / command-line value to the field's type, with a clear error."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name} expects a {kind}, got {value!r}") from None


def default_lora_ranks(version: str, n_embd: int) -> dict[str, int]:
    """LoRA ranks of the official formulas (docs/checkpoints.md#lora-ranks) for training from scratch."""
    return SPECS[version].default_lora_ranks(n_embd)


def parse_lora_ranks(version: str, text: str, n_embd: int) -> dict[str, int]:
    if not text:
        return default_lora_ranks(version, n_embd)
    names = SPECS[version].lora_fields
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"lora_ranks must be comma-separated integers, got {text!r}") from None
    if len(values) != len(names):
        raise ConfigError(f"RWKV-{version} takes {len(names)} LoRA ranks ({', '.join(names)}), got {text!r}")
    return dict(zip(names, values))


# ---- presets ------------------------------------------------------------------------------------

# The default model's data: `rwkvkit data prepare --stdlib --out runs/data/stdlib-bpe4096
# --tokenizer bpe:4096 --val-fraction 0.05` (the stdlib's sources, 40 whole files held out).
_DEFAULT_RUN = dict(
    data="runs/data/stdlib-bpe4096",
    n_layer=6,
    ctx_len=512,
    batch_size=8,
    max_steps=1400,  # 5.7 M tokens (~1.75 epochs): about 45 minutes on the 2-core development machine
    lr=1e-3,
    lr_final=1e-4,
    warmup_steps=100,
    weight_decay=0.01,
    eval_every=350,
    save_every=350,
)

PRESETS: dict[str, TrainConfig] = {
    # the shipped default model: RWKV-7 on the Python standard library (see the README)
    "default-model": TrainConfig(**_DEFAULT_RUN, out_dir="runs/default-model", version="7", n_embd=256),
    # the same-size transformer (7.32 M vs 7.34 M parameters) on the same data, tokens and schedule
    "default-gpt": TrainConfig(
        **_DEFAULT_RUN, out_dir="runs/default-gpt", arch="gpt", n_embd=264, head_size=66, l2wrap=False
    ),
    # a seconds-long run for smoke tests
    "tiny": TrainConfig(
        n_layer=2,
        n_embd=64,
        head_size=32,
        ctx_len=64,
        batch_size=4,
        max_steps=20,
        warmup_steps=2,
        eval_every=10,
        save_every=10,
        log_every=5,
    ),  # fmt: skip
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


__all__ = [
    "FlatConfig",
    "TrainConfig",
    "PRESETS",
    "preset",
    "default_lora_ranks",
    "parse_lora_ranks",
    "field",
]
