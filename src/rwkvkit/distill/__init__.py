"""Distillation of a transformer into an RWKV-7 hybrid (ARWKV): the stage losses; the recipe and
``rwkvkit distill`` build on them."""

from rwkvkit.distill.losses import (
    alignment_loss,
    kd_loss,
    sft_loss,
    teacher_attention_io,
    trainable_for_stage,
)

__all__ = ["alignment_loss", "kd_loss", "sft_loss", "teacher_attention_io", "trainable_for_stage"]
