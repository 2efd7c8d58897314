"""The losses of ARWKV's three distillation stages (docs/seed-systems.md#arwkv).

Stage 1, attention alignment (teacher-forced): the teacher runs once; for every layer ``l`` its
attention input ``x_l = input_layernorm(h_l)`` and output ``o_l`` are recorded, and the student's
time mix of that layer gets the same ``x_l``::

    loss_1 = mean_l  mean_{b,t} ||TimeMix_l(x_l)[b,t] - o_l[b,t]||_2 / sqrt(C)

(the paper's code: a non-squared L2 norm over the hidden dimension, scaled by ``C^-1/2``).

Every layer sees the teacher's inputs, so the layers train in parallel and an error in one does not
reach the next. RWKV-7's value residual takes layer 0's values from layer 0's time mix on ``x_0``.

Stage 2, knowledge distillation on the logits (temperature ``tau``)::

    loss_2 = tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))   (mean over tokens)

Stage 3, supervised fine-tuning: cross-entropy on the answer tokens only (labels -100 elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError


def teacher_attention_io(teacher: nn.Module, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run a transformers Qwen2 / Llama causal LM on ``tokens [B, T]`` and return, per layer, the
    attention's input (after ``input_layernorm``) and output, both ``[B, T, C]``, detached."""
    layers = getattr(getattr(teacher, "model", None), "layers", None)
    if layers is None:
        raise ConfigError(f"{type(teacher).__name__} is not a Qwen2/Llama-style causal LM (model.layers)")
    io: list = [None] * len(layers)

    def hook(i):
        def record(module, args, kwargs, output):
            x = kwargs.get("hidden_states", args[0] if args else None)
            out = output[0] if isinstance(output, tuple) else output
            io[i] = (x.detach(), out.detach())

        return record

    handles = [
        layer.self_attn.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            teacher(input_ids=tokens, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return io


def alignment_loss(student, io: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Stage 1: the mean over layers of the scaled L2 distance between each student time mix on the
    teacher's attention input and the teacher's attention output (see the module docstring)."""
    if len(io) != len(student.blocks):
        raise ConfigError(f"teacher has {len(io)} layers, the student {len(student.blocks)}")
    B = io[0][0].shape[0]
    state = student.initial_state(B)
    v_first, total = None, 0.0
    for i, (block, (x, target)) in enumerate(zip(student.blocks, io, strict=True)):
        shift = state["att_shift"][i].to(x.dtype)
        out, _, _, v_first = block.att(x, shift, state["wkv"][i], v_first)
        total = total + (out.float() - target.float()).norm(dim=-1).mean() / out.shape[-1] ** 0.5
    return total / len(io)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Stage 2: ``tau^2 KL(teacher || student)`` of the softened distributions, mean over tokens."""
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; the student must share the teacher's vocabulary"
        )
    tau = float(temperature)
    s = F.log_softmax(student_logits.float().flatten(0, -2) / tau, dim=-1)
    t = F.log_softmax(teacher_logits.float().flatten(0, -2) / tau, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * tau * tau


def sft_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage 3: cross-entropy on the positions whose label is not -100 (the answer tokens)."""
    return F.cross_entropy(student_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def trainable_for_stage(
    student, stage: int, train_mlp: bool = True, train_embeddings: bool = False
) -> list[nn.Parameter]:
    """Stage 1: only the time mixes. Stage 2 and 3: the time mixes, plus the MLPs and norms unless
    ``train_mlp`` is False (the paper's frozen-MLP option), plus the embeddings, final norm and head
    if ``train_embeddings`` (the paper trains everything in stage 2; frozen by default here).
    Sets ``requires_grad`` accordingly and returns the trainable parameters."""
    if stage not in (1, 2, 3):
        raise ConfigError(f"distillation stages are 1, 2 and 3, got {stage!r}")
    student.requires_grad_(False)
    for block in student.blocks:
        block.att.requires_grad_(True)
        if block.layer_id == 0:  # layer 0 defines v_first: its v0..v2 are unused (and stay frozen)
            for unused in (block.att.v0, block.att.v1, block.att.v2):
                unused.requires_grad_(False)
        if stage > 1 and train_mlp:
            block.mlp.requires_grad_(True)
            block.ln1.requires_grad_(True)
            block.ln2.requires_grad_(True)
    if stage > 1 and train_embeddings:
        for module in (student.emb, student.ln_out, student.head):
            module.requires_grad_(True)
    return [p for p in student.parameters() if p.requires_grad]
