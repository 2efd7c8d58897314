"""Distillation of a transformer into an RWKV-7 hybrid (ARWKV): the recipe (:func:`distill`,
:class:`DistillConfig`, ``rwkvkit distill``), its stage losses and the teacher loader."""

from rwkvkit.distill.losses import (
    alignment_loss,
    kd_loss,
    sft_loss,
    teacher_attention_io,
    trainable_for_stage,
)
from rwkvkit.distill.recipe import DistillConfig, DistillResult, SFTData, distill
from rwkvkit.distill.teacher import TeacherLM, load_teacher

__all__ = [
    "DistillConfig",
    "DistillResult",
    "SFTData",
    "TeacherLM",
    "alignment_loss",
    "distill",
    "kd_loss",
    "load_teacher",
    "sft_loss",
    "teacher_attention_io",
    "trainable_for_stage",
]
