"""Training: the official RWKV initialisation, optimiser groups and schedule, and the loss."""

from rwkvkit.training.init import official_init_
from rwkvkit.training.loss import L2Wrap, fused_lm_loss, lm_loss
from rwkvkit.training.optim import build_optimizer, lr_schedule, param_groups, set_lr

__all__ = [
    "L2Wrap",
    "build_optimizer",
    "fused_lm_loss",
    "lm_loss",
    "lr_schedule",
    "official_init_",
    "param_groups",
    "set_lr",
]
