"""Optimiser groups and learning-rate schedules: they live in :mod:`rwkvkit.optim`, shared by every
trainer (language models, distillation, vision, time series); the LM trainer and older callers
import them from here."""

from rwkvkit.optim import (
    build_optimizer,
    group_of,
    is_decayed,
    lr_scale_of,
    lr_schedule,
    param_groups,
    set_lr,
)

__all__ = [
    "build_optimizer",
    "group_of",
    "is_decayed",
    "lr_scale_of",
    "lr_schedule",
    "param_groups",
    "set_lr",
]
