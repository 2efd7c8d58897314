"""Fine-tuning runs on rwkvkit's trainer: :func:`finetune`, and :func:`merge` of a LoRA adapter.

A fine-tuning run is an ordinary training run (:func:`rwkvkit.training.train`: the same checkpoints,
``--resume``, bf16, torchrun, progress bar, ``loss.csv`` and ``loss.png``) whose ``TrainConfig`` has
``init_from`` (the base checkpoint, any format rwkvkit reads, or ``default``) and ``finetune``:

``full``
    every weight trains, from the base (writes ``model.safetensors``, as training does);
``lora`` / ``pissa``
    the base is frozen and LoRA adapters of rank ``lora_r`` train on the projections ``lora_targets``
    (:mod:`rwkvkit.finetune.lora`); ``pissa`` starts them from the principal singular vectors. Writes
    ``adapter.safetensors`` (the factors only; a PiSSA adapter also holds the residual it leaves in
    the base weights): ``rwkvkit finetune merge BASE ADAPTER OUT`` or :func:`merge` makes a plain
    checkpoint of it, and :func:`rwkvkit.finetune.load_adapter` applies it to a loaded base;
``state``
    the model is frozen and only the initial WKV state of every layer trains
    (:class:`~rwkvkit.finetune.state_tuning.StateTuned`). Writes ``state.safetensors``, a
    :class:`rwkvkit.State` that ``rwkvkit.generate(..., state=...)``, ``BatchEngine.add(state=...)``,
    ``rwkvkit generate --state-in`` and ``rwkvkit serve --state NAME=PATH`` load.

A checkpoint (``last.pt``) of a LoRA or state run holds only the trained tensors (and the optimiser
state for them); ``--resume`` reloads the base from ``init_from`` and continues bitwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError
from rwkvkit.finetune.adapter import load_adapter, save_adapter
from rwkvkit.finetune.lora import apply_lora, lora_modules, merge_lora
from rwkvkit.finetune.state_tuning import StateTuned
from rwkvkit.formats import load as load_model
from rwkvkit.formats import save as save_weights
from rwkvkit.training.config import TrainConfig
from rwkvkit.training.loop import TrainResult, train

__all__ = ["ADAPTER_FILE", "STATE_FILE", "LoRAAdaptation", "StateAdaptation", "finetune", "merge"]

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "state.safetensors"


class LoRAAdaptation:
    """LoRA / PiSSA adapters on the trainer (:class:`rwkvkit.training.loop.Adaptation`)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def prepare(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()] or None
        kwargs: dict[str, Any] = {} if targets is None else {"targets": targets}
        init = "pissa_niter_4" if cfg.finetune == "pissa" else "lora"
        if cfg.lora_int8:
            kwargs["quantize"] = "int8"
        apply_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            init=init,
            seed=cfg.seed,
            **kwargs,
        )
        return model

    def parameters(self) -> list[nn.Parameter]:
        return []  # the factors are the model's own (trainable) parameters

    def initial_state(self, batch_size: int) -> Any:
        return None

    def _keys(self, model: nn.Module) -> set[str]:
        # The factors (and PiSSA's initial ones); the frozen weights are rebuilt by prepare() on resume:
        # the base from init_from, PiSSA's residual by the same seeded decomposition.
        keys = set()
        for name, module in lora_modules(model):
            keys |= {f"{name}.{k}" for k in module.state_dict() if k.startswith("lora_")}
        return keys

    def checkpoint_state(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        keys = self._keys(model)
        return {k: v for k, v in state_dict.items() if k in keys}

    def load_checkpoint_state(self, model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
        keys = self._keys(model)
        if set(saved) != keys:
            raise ConfigError(
                "the checkpoint's adapter tensors do not match this run's adapters (another lora_r or "
                "lora_targets?): resume with the run's own configuration"
            )
        model.load_state_dict(saved, strict=False)

    def save_outputs(self, model: nn.Module, out_dir: Path) -> None:
        save_adapter(model, out_dir / ADAPTER_FILE, base=self.cfg.init_from)


class StateAdaptation:
    """State tuning on the trainer: only the initial WKV state trains."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.tuned: StateTuned | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        self.tuned = StateTuned(model)  # freezes the model; the trainer calls the model itself
        return model

    def parameters(self) -> list[nn.Parameter]:
        return [self.tuned.wkv]

    def initial_state(self, batch_size: int) -> Any:
        return self.tuned.start_state(batch_size)  # differentiable: the gradient reaches the state

    def checkpoint_state(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {"state.wkv": self.tuned.wkv.detach().cpu().clone()}

    def load_checkpoint_state(self, model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
        wkv = saved.get("state.wkv")
        if wkv is None or wkv.shape != self.tuned.wkv.shape:
            raise ConfigError(
                "the checkpoint holds no tuned state of this model's shape: resume the run's own"
            )
        with torch.no_grad():
            self.tuned.wkv.copy_(wkv)

    def save_outputs(self, model: nn.Module, out_dir: Path) -> None:
        self.tuned.export_state().save(out_dir / STATE_FILE)


def adaptation_for(cfg: TrainConfig):
    """The trainer hook of ``cfg.finetune`` (None for full fine-tuning and ordinary training)."""
    if cfg.finetune in ("lora", "pissa"):
        return LoRAAdaptation(cfg)
    if cfg.finetune == "state":
        return StateAdaptation(cfg)
    return None


def finetune(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None) -> TrainResult:
    """Fine-tune ``cfg.init_from`` as ``cfg.finetune`` says (see the module docstring); returns the
    trainer's :class:`~rwkvkit.training.loop.TrainResult`.

    Example::

        cfg = TrainConfig(data="runs/data/mine", init_from="default", finetune="lora", lora_r=8,
                          max_steps=200, lr=1e-3, out_dir="runs/lora")
        finetune(cfg)          # runs/lora/adapter.safetensors, loss.csv, loss.png
    """
    if not cfg.finetune:
        raise ConfigError("finetune needs a method: full, lora, pissa or state (--finetune / --method)")
    return train(cfg, resume=resume, stop_at=stop_at, adaptation=adaptation_for(cfg))


def merge(base: str | Path, adapter: str | Path, out: str | Path, *, format: str = "rwkvkit", dtype=None):
    """Write ``base`` with the LoRA ``adapter`` merged in as a plain checkpoint ``out`` (any format
    :func:`rwkvkit.formats.save` writes); returns the merged model. Logits equal the base with the
    adapter applied within 1e-5 (fp32)."""
    model = load_model(str(base), dtype=torch.float32)
    load_adapter(model, adapter)
    merge_lora(model)
    options = {} if dtype is None else {"dtype": dtype}
    save_weights(model, out, format=format, **options)
    return model
