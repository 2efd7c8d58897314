"""Optimiser parameter groups, AdamW, and the learning-rate schedule of the official RWKV trainers.

Parameter groups (docs/training.md#parameter-groups, read from the trainers' ``configure_optimizers``):

* **Weight decay** only on parameters named ``*.weight`` that are at least 2-D after squeezing
  (``len(p.squeeze().shape) >= 2 and ".weight" in n``, the RWKV-7 rule): every linear, ``emb`` and
  ``head``. Nothing else (LayerNorm/GroupNorm gains and biases, the "time" vectors, the LoRA
  factors, ``r_k``) is decayed. The v4neo trainer used no weight decay at all: pass 0 to match it.
* **Learning-rate multipliers** (``lr_scale``), with the official ``layerwise_lr`` on, outside the
  Pile "stage 2" recipe:

  - v4: ``time_decay`` 2x, ``time_first`` 3x;
  - v5.x and v6: ``time_decay`` 2x (not its LoRA ``time_decay_w1/_w2``: 1x), ``time_first``
    (log-bonus v5 files) 3x; ``time_faaaa``, ``time_mix_*``, ``time_maa_*`` and the ``*_w1/_w2``
    LoRA factors 1x;
  - v7: ``att.w0`` 2x;
  - everything else 1x.

  (``RWKV-v4neo/src/model.py`` and ``RWKV-v5/src/model.py`` ``configure_optimizers``: the ``_w1`` /
  ``_w2`` test comes first, so the v6 decay LoRA is 1x; ``time_faaaa`` is 1x, 2x only in stage 2.
  ``RWKV-v7/train_temp/src/model.py``: ``att.w0`` 2x, unconditionally.)

Each group is a dict with ``name``, ``params``, ``param_names``, ``lr`` (= base lr x ``lr_scale``),
``lr_scale`` and ``weight_decay``; :func:`set_lr` keeps ``lr = base lr x lr_scale`` as the schedule
moves. Parameters with ``requires_grad=False`` (e.g. RWKV-7 layer 0's unused ``v0, v1, v2``) are
left out. Models other than RWKV (the GPT baseline) get the same weight-decay rule and no
multipliers; the vision and time-series trainers pass their own weight-decay rule (``decayed``).

Schedule: see :func:`lr_schedule` (every trainer of rwkvkit uses it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError
from rwkvkit.models.rwkv.versions import SPECS

# name -> (lr_scale, decayed): the order in which groups are listed
_GROUPS: dict[str, tuple[float, bool]] = {
    "decay": (1.0, True),
    "no_decay": (1.0, False),
    "lr_2x": (2.0, False),
    "lr_3x": (3.0, False),
}


def lr_scale_of(name: str, version: str | None, layerwise_lr: bool = True) -> float:
    """The official learning-rate multiplier of parameter ``name`` in an RWKV model of ``version``
    (the version spec's ``lr_scale``; 1 for models without a version, e.g. GPT)."""
    spec = SPECS.get(version) if version is not None else None
    return 1.0 if spec is None else spec.lr_scale(name, layerwise_lr)


def is_decayed(name: str, p: torch.Tensor) -> bool:
    """The official weight-decay rule: a ``.weight`` of at least 2 dims after squeezing."""
    return name.endswith(".weight") and p.squeeze().dim() >= 2


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    *,
    layerwise_lr: bool = True,
    decayed: Callable[[str, torch.Tensor], bool] = is_decayed,
) -> list[dict]:
    """The optimiser parameter groups of ``model`` by the official rules (see the module docstring).

    Args:
        model: an RWKV model (its ``config.version`` picks the multipliers) or any other module.
        weight_decay: decoupled weight decay of the ``decay`` group. With 0, as in the official
            trainers, there is no ``decay`` group and those parameters join ``no_decay``.
        lr: the base learning rate; each group's ``lr`` is ``lr * lr_scale``.
        layerwise_lr: the official v4-v6 ``layerwise_lr`` switch (on in every official run); off
            gives every v4-v6 parameter a multiplier of 1. RWKV-7's ``w0`` rule does not depend on it.
        decayed: ``decayed(name, parameter)`` says which parameters weight decay applies to
            (default :func:`is_decayed`, the official rule).

    Returns:
        The non-empty groups, in the order ``decay, no_decay, lr_2x, lr_3x``; every trainable
        parameter is in exactly one.
    """
    if weight_decay < 0 or lr < 0:
        raise ConfigError(f"weight_decay and lr must be >= 0, got {weight_decay} and {lr}")
    version = getattr(getattr(_unwrap(model), "config", None), "version", None)
    members: dict[str, list[tuple[str, torch.Tensor]]] = {g: [] for g in _GROUPS}
    for name, p in model.named_parameters():  # named_parameters() lists a tied tensor once
        if not p.requires_grad:
            continue
        scale = lr_scale_of(name, version, layerwise_lr)
        if scale == 2.0:
            group = "lr_2x"
        elif scale == 3.0:
            group = "lr_3x"
        elif weight_decay > 0 and decayed(name, p):
            group = "decay"
        else:
            group = "no_decay"
        members[group].append((name, p))
    groups = []
    for gname, (scale, decayed) in _GROUPS.items():
        if not members[gname]:
            continue
        groups.append(
            {
                "name": gname,
                "params": [p for _, p in members[gname]],
                "param_names": [n for n, _ in members[gname]],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decayed else 0.0,
            }
        )
    return groups


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers.

    Only the version lookup needs it: the name rules test name endings, which the wrappers'
    prefixes (``module.``, ``_orig_mod.``) leave alone.
    """
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
    fused: bool | None = None,
    decayed: Callable[[str, torch.Tensor], bool] = is_decayed,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (official betas (0.9, 0.99); eps 1e-8, the v7 demo uses 1e-18).

    ``fused``: passed to :class:`torch.optim.AdamW` (None lets torch choose); ``decayed``: the
    weight-decay rule of :func:`param_groups`.
    """
    groups = param_groups(model, weight_decay, lr, decayed=decayed)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=0.0, fused=fused)


def lr_schedule(
    step: int,
    *,
    lr: float,
    lr_final: float,
    warmup_steps: int,
    total_steps: int,
    kind: str = "cosine",
    warmup_init: float = 0.01,
    warmup_counts_step: bool = False,
) -> float:
    """The base learning rate at optimiser step ``step`` (0-based).

    * Warm-up, ``step < warmup_steps``: linear from ``warmup_init * lr`` at step 0 towards ``lr``,
      ``lr * (warmup_init + (1 - warmup_init) * step / warmup_steps)``. The default 0.01 is the
      official v7 trainer's (``lr * (0.01 + 0.99 * step / w_step)``, ``train_temp/src/trainer.py``).
      With ``warmup_counts_step`` the step being taken counts as done (``step + 1`` in place of
      ``step``): with ``warmup_init=0`` the rate climbs ``lr / warmup_steps, 2 lr / warmup_steps, ...``
      and the last warm-up step already uses ``lr`` (the vision and time-series trainers' warm-up).
    * Then, with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]:

      - ``"cosine"``: ``lr_final + (lr - lr_final) * (1 + cos(pi p)) / 2`` (the v7 trainer's form);
      - ``"exponential"``: ``lr * (lr_final / lr) ** p``, a geometric decay (the v4/v5 trainers');
      - ``"constant"``: ``lr`` (``lr_final`` unused).

    So the rate is ``lr`` at ``warmup_steps`` and ``lr_final`` from ``total_steps`` on.
    """
    if kind not in ("cosine", "exponential", "constant"):
        raise ConfigError(f"unknown learning-rate schedule {kind!r}; use cosine, exponential or constant")
    if lr < 0 or lr_final < 0:
        raise ConfigError(f"learning rates must be >= 0, got lr {lr}, lr_final {lr_final}")
    if kind == "exponential" and (lr <= 0 or lr_final <= 0):
        raise ConfigError("an exponential schedule needs lr > 0 and lr_final > 0")
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ConfigError(f"need 0 <= warmup_steps <= total_steps, got {warmup_steps}, {total_steps}")
    if not 0 <= warmup_init <= 1:
        raise ConfigError(f"warmup_init must be in [0, 1], got {warmup_init}")
    if step < warmup_steps:
        done = step + 1 if warmup_counts_step else step
        return lr * (warmup_init + (1 - warmup_init) * done / warmup_steps)
    if kind == "constant":
        return lr
    span = total_steps - warmup_steps
    p = min(1.0, (step - warmup_steps) / span) if span > 0 else 1.0
    if kind == "cosine":
        return lr_final + (lr - lr_final) * 0.5 * (1 + math.cos(math.pi * p))
    return lr * (lr_final / lr) ** p


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr * group["lr_scale"]`` (1 for groups without one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def group_of(groups: Iterable[dict], param_name: str) -> dict:
    """The group holding ``param_name`` (for inspection and tests)."""
    for g in groups:
        if param_name in g["param_names"]:
            return g
    raise KeyError(param_name)
