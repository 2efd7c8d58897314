"""The ARWKV distillation recipe: :class:`DistillConfig` and :func:`distill`.

A transformers causal LM (Qwen2 or Llama) becomes an :class:`rwkvkit.models.arwkv.ARWKV` student
(the teacher's embeddings, norms, MLPs and head; an RWKV-7 time mix in place of every attention),
which then goes through the stages named in ``stages``, in order::

    stage 1  alignment: per layer, the time mix on the teacher's attention input imitates the
             teacher's attention output (teacher-forced); only the time mixes train
    stage 2  distillation: KL(teacher || student) on the logits, optionally from a larger teacher
             of the same vocabulary (``kd_teacher``), optionally with frozen MLPs (``train_mlp``)
    stage 3  supervised fine-tuning: cross-entropy on the answer tokens of ``sft_data``

Each stage is a loop of the trainer's parts (:mod:`rwkvkit.training`): AdamW with the official
parameter groups, the learning-rate schedule, gradient accumulation and clipping, bf16 autocast,
the validation pass, atomic checkpoints (``last.pt``, ``model.safetensors`` for ``rwkvkit.load``)
every ``save_every`` steps, exact resume (``resume=True``), a progress bar, and DDP under
``torchrun``. Every row of ``loss.csv`` counts the training tokens over all stages so far, so
students trained by different stage mixes compare at equal budgets.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rwkvkit.data import WindowSampler, open_tokens
from rwkvkit.data.binidx import DataError
from rwkvkit.distill.losses import (
    alignment_loss,
    kd_loss,
    sft_loss,
    teacher_attention_io,
    trainable_for_stage,
)
from rwkvkit.distill.teacher import TeacherLM, load_teacher
from rwkvkit.errors import ConfigError, Interrupted
from rwkvkit.formats import load as load_model
from rwkvkit.models.arwkv import ARWKV
from rwkvkit.training import checkpoint as ckpt
from rwkvkit.training import parallel
from rwkvkit.training.config import FlatConfig, TrainConfig
from rwkvkit.training.interrupt import StopOnSignal, resume_hint
from rwkvkit.training.loop import TrainingDiverged, evaluate
from rwkvkit.training.optim import build_optimizer, lr_schedule, set_lr
from rwkvkit.utils.precision import autocast
from rwkvkit.utils.runlog import (
    NO_VALIDATION,
    mark_no_validation,
    open_run_folder,
    pyplot,
    save_png,
    save_tokenizer_beside,
    write_csv,
)

log = logging.getLogger("rwkvkit.distill")

LOG_FIELDS = ["step", "stage", "stage_step", "tokens", "lr", "train_loss", "val_loss", "val_bpb",
              "val_answer_loss", "tokens_per_s", "elapsed_s"]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DistillConfig(FlatConfig):
    """Everything a distillation run needs. Field docstrings are the ``rwkvkit distill --help`` texts."""

    _kind = "distillation"
    _command = "distill"
    _resume_mutable = ("stage1_steps", "stage2_steps", "stage3_steps", "eval_every", "eval_tokens",
                       "save_every", "log_every", "progress", "threads", "device", "precision")  # fmt: skip
    _path_fields = ("teacher", "data", "out_dir", "student", "kd_teacher", "sft_data")

    # ---- models and data ----
    teacher: str = ""
    """transformers model directory to distil (Qwen2 or Llama, save_pretrained output, safetensors)"""
    data: str = ""
    """prepared token data in the teacher's vocabulary (`rwkvkit data prepare`), train and val splits"""
    out_dir: str = "runs/distill"
    """where checkpoints, the student (model.safetensors), loss.csv and loss.png go"""
    stages: str = "1,2"
    """stages to run, in order: 1 attention alignment, 2 logit distillation, 3 supervised fine-tuning"""
    student: str = ""
    """start from this ARWKV checkpoint (e.g. after stage 1) instead of a fresh student of the teacher"""
    kd_teacher: str = ""
    """stage 2 teacher, e.g. a larger model with the same vocabulary (empty = the teacher)"""
    sft_data: str = ""
    """stage 3 data: JSON lines with "prompt" and "answer" (or "instruction" and "output")"""

    # ---- the student ----
    head_size: int = 64
    """RWKV-7 head size of the time mixes (the paper: 64, at the teacher's full width)"""
    gate: bool = True
    """keep RWKV-7's output gate in the time mix (ARWKV's released 7B has none)"""
    group_norm: bool = True
    """keep the GroupNorm on the WKV output (ARWKV's released 7B has none)"""

    # ---- stages ----
    stage1_steps: int = 200
    """optimiser steps of stage 1"""
    stage2_steps: int = 400
    """optimiser steps of stage 2"""
    stage3_steps: int = 200
    """optimiser steps of stage 3"""
    stage1_lr: float = 1e-3
    """peak learning rate of stage 1 (only the fresh time mixes train)"""
    stage2_lr: float = 3e-4
    """peak learning rate of stage 2"""
    stage3_lr: float = 1e-4
    """peak learning rate of stage 3"""
    lr_final_ratio: float = 0.1
    """each stage decays its learning rate to this fraction of its peak"""
    warmup_steps: int = 20
    """linear warm-up steps at the start of each stage"""
    schedule: str = "cosine"
    """learning-rate decay after warm-up: cosine, exponential (the paper's) or constant"""
    temperature: float = 1.0
    """stage 2 softmax temperature (the loss is scaled by its square)"""
    train_mlp: bool = True
    """stages 2 and 3 also train the MLPs and norms (false: the paper's frozen-MLP option)"""
    train_embeddings: bool = False
    """stages 2 and 3 also train the embeddings, final norm and head (the paper trains everything)"""

    # ---- batches and optimiser ----
    ctx_len: int = 512
    """tokens per training window"""
    batch_size: int = 8
    """windows per micro-batch per process"""
    grad_accum: int = 1
    """micro-batches per optimiser step"""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.99
    """AdamW beta2"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""

    # ---- numerics, devices, bookkeeping ----
    precision: str = "bf16"
    """bf16 (autocast, fp32 master weights) or fp32"""
    device: str = "cpu"
    """cpu, cuda or cuda:N"""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)"""
    seed: int = 0
    """seeds the student's time mixes and the data order"""
    eval_every: int = 100
    """steps between validation passes (and at the end of each stage)"""
    eval_tokens: int = 0
    """validation tokens per pass (0 = the whole validation split)"""
    save_every: int = 100
    """steps between checkpoints (and at the end of each stage)"""
    log_every: int = 10
    """steps between log lines"""
    progress: bool = True
    """show a progress bar (off automatically when stderr is not a terminal)"""

    def __post_init__(self) -> None:
        stages = self.stage_list  # raises on a malformed list
        checks = [
            (self.ctx_len >= 1 and self.batch_size >= 1 and self.grad_accum >= 1,
             "ctx_len, batch_size and grad_accum must be >= 1"),
            (all(self.steps_of(s) >= 1 for s in stages), "every stage to run needs at least 1 step"),
            (all(self.lr_of(s) > 0 for s in stages), "every stage to run needs a learning rate > 0"),
            (0 <= self.lr_final_ratio <= 1, "lr_final_ratio must be in [0, 1]"),
            (self.schedule in ("cosine", "exponential", "constant"), f"unknown schedule {self.schedule!r}"),
            (self.precision in ("bf16", "fp32"), f"precision must be bf16 or fp32, got {self.precision!r}"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.eval_every >= 1 and self.save_every >= 1 and self.log_every >= 1,
             "eval_every, save_every and log_every must be >= 1"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def check_sources(self) -> None:
        """The inputs the stages need (checked when the run starts, so a TOML file and options may
        each supply part of them)."""
        stages = self.stage_list
        teacherless = bool(self.student) and 1 not in stages and (2 not in stages or bool(self.kd_teacher))
        if not self.teacher and not teacherless:
            raise ConfigError(
                "no teacher: pass --teacher DIR (a transformers Qwen2 or Llama model directory)"
            )
        if 3 in stages and not self.sft_data:
            raise ConfigError("stage 3 needs instruction data: pass --sft-data FILE.jsonl")
        if not self.data:
            raise ConfigError(
                "no data: pass --data DIR (made by `rwkvkit data prepare` with the teacher's tokenizer)"
            )

    @property
    def stage_list(self) -> list[int]:
        try:
            stages = [int(s) for s in str(self.stages).replace(" ", "").split(",") if s]
        except ValueError:
            raise ConfigError(
                f"stages must be a comma-separated list of 1, 2, 3; got {self.stages!r}"
            ) from None
        if not stages or any(s not in (1, 2, 3) for s in stages) or stages != sorted(set(stages)):
            raise ConfigError(
                f"stages must be distinct, in order, from 1, 2, 3 (e.g. '1,2'); got {self.stages!r}"
            )
        return stages

    def steps_of(self, stage: int) -> int:
        return {1: self.stage1_steps, 2: self.stage2_steps, 3: self.stage3_steps}[stage]

    def lr_of(self, stage: int) -> float:
        return {1: self.stage1_lr, 2: self.stage2_lr, 3: self.stage3_lr}[stage]

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.ctx_len


@dataclass
class DistillResult:
    step: int  # optimiser steps over all stages
    tokens: int  # training tokens over all stages (per process times processes)
    val_loss: float | None  # the student's, nats per token
    val_bpb: float | None
    teacher_val_loss: float | None
    out_dir: Path
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    student: nn.Module | None = None  # the trained student (also in out_dir/model.safetensors)


# ---- stage 3 data ---------------------------------------------------------------------------------


class SFTData:
    """Instruction data for stage 3: JSON lines ``{"prompt": ..., "answer": ...}`` (or ``instruction``
    / ``output``; an ``input`` field is appended to the instruction). Each example becomes one window
    of ``ctx_len + 1`` tokens, ``prompt + answer + eos``, truncated and padded with eos; the labels
    are the answer and eos tokens, -100 elsewhere. Every 20th example (from 20 on) is held out for
    validation. Batches follow a seeded permutation per epoch; the position is checkpointed."""

    def __init__(self, path: str | Path, tokenizer, ctx_len: int, seed: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"instruction data not found: {path} (JSON lines with prompt and answer)")
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        rows, labels = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n} is not JSON: {e}") from None
            prompt = ex.get("prompt", ex.get("instruction"))
            answer = ex.get("answer", ex.get("output"))
            if not isinstance(prompt, str) or not isinstance(answer, str):
                raise DataError(
                    f'{path}:{n} needs string fields "prompt" and "answer" (or "instruction" and "output")'
                )
            if ex.get("input"):
                prompt = prompt + "\n" + str(ex["input"])
            p, a = tokenizer.encode(prompt), tokenizer.encode(answer) + [eos]
            ids = (p + a)[: ctx_len + 1]
            lab = ([-100] * len(p) + a)[1 : ctx_len + 1]
            if all(t == -100 for t in lab):
                continue  # the prompt fills the window: nothing to learn from
            pad = ctx_len + 1 - len(ids)
            rows.append(ids + [eos] * pad)
            labels.append(lab + [-100] * (ctx_len - len(lab)))
        if not rows:
            raise DataError(f"{path} has no usable examples (each needs answer tokens within ctx_len)")
        tokens, labels_t = torch.tensor(rows, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
        held = torch.zeros(len(rows), dtype=torch.bool)
        if len(rows) >= 20:
            held[19::20] = True
        self.x, self.y = tokens[~held, :-1], labels_t[~held]
        self.val_x, self.val_y = tokens[held, :-1], labels_t[held]
        self.seed, self.epoch, self.cursor = seed, 0, 0
        self._order = self._perm()

    def __len__(self) -> int:
        return len(self.x)

    def _perm(self) -> torch.Tensor:
        return torch.randperm(
            len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        )

    def next_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = []
        while len(idx) < n:
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._perm()
            take = min(n - len(idx), len(self._order) - self.cursor)
            idx += self._order[self.cursor : self.cursor + take].tolist()
            self.cursor += take
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._perm()


class _WindowBatches:
    """Stages 1 and 2: ``(x, None)`` windows of the training split (the trainer's sampler)."""

    def __init__(self, tokens, ctx_len: int, seed: int) -> None:
        self.sampler = WindowSampler(tokens, ctx_len, seed=seed)

    def next_batch(self, n: int) -> tuple[torch.Tensor, None]:
        return self.sampler.next_batch(n)[:, :-1], None

    def state_dict(self):
        return self.sampler.state_dict()

    def load_state_dict(self, state) -> None:
        self.sampler.load_state_dict(state)


# ---- one stage's loss, as a module (so DDP sees a forward) ---------------------------------------


class StageLoss(nn.Module):
    """``loss = module(x, labels)`` for one stage; the teachers are held outside the module tree."""

    def __init__(
        self, student: nn.Module, stage: int, teacher=None, kd_teacher=None, temperature=1.0
    ) -> None:
        super().__init__()
        self.student, self.stage, self.temperature = student, stage, temperature
        self._teachers = (teacher, kd_teacher or teacher)  # a tuple: not registered as submodules

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        teacher, kd_teacher = self._teachers
        if self.stage == 1:
            return alignment_loss(self.student, teacher_attention_io(teacher, x))
        logits, _ = self.student(x)
        if self.stage == 3:
            return sft_loss(logits, labels)
        with torch.no_grad():
            t = kd_teacher(input_ids=x, use_cache=False).logits
        V = logits.shape[-1]
        if t.shape[-1] < V:
            raise ConfigError(
                f"the stage 2 teacher has {t.shape[-1]} logits, the student {V}: vocabularies differ"
            )
        return kd_loss(
            logits, t[..., :V], self.temperature
        )  # padded teacher vocabularies are cut (the paper's rule)


# ---- the recipe -----------------------------------------------------------------------------------


def build_student(cfg: DistillConfig, teacher) -> nn.Module:
    """The student: ``cfg.student`` if given (an ARWKV checkpoint), else a fresh one of the teacher."""
    if cfg.student:
        student = load_model(cfg.student, dtype=torch.float32)
        if not isinstance(student, ARWKV):
            raise ConfigError(f"{cfg.student} is a {type(student).__name__}, not an ARWKV student")
        return student.train()
    return ARWKV.from_transformers(
        teacher, cfg.head_size, cfg.seed, gate=cfg.gate, group_norm=cfg.group_norm
    ).train()


def distill(cfg: DistillConfig, resume: bool = False, stop_at: int | None = None) -> DistillResult:
    """Run the stages of ``cfg``; returns the student's final validation loss and the history.

    ``resume=True`` continues exactly from ``out_dir/last.pt``; ``stop_at`` stops (and checkpoints)
    after that many optimiser steps over all stages, as an interrupted run would.
    """
    owns_group = not (dist.is_available() and dist.is_initialized())
    try:
        with StopOnSignal() as stop:
            result = _distill(cfg, resume, stop_at, stop)
    except BaseException:
        if owns_group:
            parallel.shutdown(barrier=False)
        raise
    if owns_group:
        parallel.shutdown()
    return result


def _distill(cfg: DistillConfig, resume: bool, stop_at: int | None, stop: StopOnSignal) -> DistillResult:
    cfg.check_sources()
    rank, world_size = parallel.init_distributed(cfg.device)
    is_main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    out_dir = Path(cfg.out_dir)
    payload = ckpt.load_for_resume(out_dir, cfg, log, is_main) if resume else None
    train_data, val_data = open_tokens(cfg.data, split="train"), open_tokens(cfg.data, split="val")
    stages = cfg.stage_list

    teacher = load_teacher(cfg.teacher, device=device) if cfg.teacher else None
    kd_teacher = load_teacher(cfg.kd_teacher, device=device) if cfg.kd_teacher and 2 in stages else None
    torch.manual_seed(cfg.seed)
    student = build_student(cfg, teacher).to(device)
    V = student.config.vocab_size
    if train_data.tokenizer.vocab_size > V:
        raise ConfigError(
            f"the data's tokenizer has {train_data.tokenizer.vocab_size} ids, the teacher's vocabulary {V}: "
            "prepare the data with the teacher's tokenizer"
        )
    if teacher is not None and 1 in stages:
        n_teacher = len(teacher.model.layers)
        if n_teacher != student.config.n_layer or teacher.config.hidden_size != student.config.n_embd:
            raise ConfigError(
                f"stage 1 aligns layer by layer: the teacher has {n_teacher} layers of width "
                f"{teacher.config.hidden_size}, the student "
                f"{student.config.n_layer} of {student.config.n_embd}"
            )
    bytes_table = torch.as_tensor(train_data.token_bytes_table(), dtype=torch.long)
    bytes_table = torch.nn.functional.pad(bytes_table, (0, V - len(bytes_table))).to(device)
    eval_cfg = TrainConfig(ctx_len=cfg.ctx_len, batch_size=cfg.batch_size, eval_tokens=cfg.eval_tokens,
                           precision=cfg.precision)  # fmt: skip
    sft = None
    if 3 in stages:
        sft = SFTData(cfg.sft_data, train_data.tokenizer, cfg.ctx_len, seed=cfg.seed)
    if is_main:  # the models and the data have passed their checks
        open_run_folder(out_dir, cfg, val_data, log)

    rows: list[dict[str, Any]] = []
    step, tokens, first_index, stage_step = 0, 0, 0, 0
    if payload is not None:
        student.load_state_dict(payload["model"])
        rows, step, tokens = payload["rows"], payload["step"], payload["tokens"]
        first_index, stage_step = payload["stage_index"], payload["stage_step"]
        if is_main:
            log.info(
                "resumed from %s: stage %d, step %d",
                out_dir / ckpt.CHECKPOINT,
                stages[first_index],
                stage_step,
            )

    teacher_val = None
    if teacher is not None:
        teacher_val = payload.get("teacher_val_loss") if payload else None
        if teacher_val is None:
            with torch.no_grad():
                teacher_val = evaluate(TeacherLM(teacher), val_data, eval_cfg, bytes_table, device)[0]
            if is_main and teacher_val is not None:
                log.info("teacher: val loss %.4f", teacher_val)

    show_bar = cfg.progress and is_main and sys.stderr.isatty()
    t_start = time.perf_counter()
    last_val: tuple[float | None, float | None] = (None, None)
    end = stop_at if stop_at else math.inf
    for index, stage in enumerate(stages):
        if index < first_index:
            continue
        total = cfg.steps_of(stage)
        resumed_here = payload is not None and index == first_index
        if not resumed_here:
            stage_step = 0
        if stage_step >= total:
            continue  # the checkpoint was written at this stage's end
        if step >= end:
            break
        trainable = trainable_for_stage(student, stage, cfg.train_mlp, cfg.train_embeddings)
        module = StageLoss(student, stage, teacher, kd_teacher, cfg.temperature)
        wrapped = module
        if world_size > 1:
            wrapped = DistributedDataParallel(module)
        mode = "ddp" if world_size > 1 else "none"
        lr_peak = cfg.lr_of(stage)
        optimizer = build_optimizer(
            student, lr=lr_peak, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2)
        )
        batches = (
            sft
            if stage == 3
            else _WindowBatches(train_data.tokens, cfg.ctx_len, seed=cfg.seed + 1000 * stage)
        )
        if resumed_here:
            optimizer.load_state_dict(payload["optimizer"])
            batches.load_state_dict(payload["batches"])
            ckpt.set_rng_state(payload["rng"])

        bar = None
        if show_bar:
            bar = tqdm(
                total=total, initial=stage_step, desc=f"stage {stage}", unit="step", dynamic_ncols=True
            )
        t_last, tokens_since = time.perf_counter(), 0
        if is_main:
            n_train = sum(p.numel() for p in trainable)
            log.info("stage %d: %d steps at lr %.2e, %d trainable parameters", stage, total, lr_peak, n_train)
        while stage_step < total and step < end:
            lr = lr_schedule(stage_step, lr=lr_peak, lr_final=lr_peak * cfg.lr_final_ratio,
                             warmup_steps=min(cfg.warmup_steps, total - 1), total_steps=total,
                             kind=cfg.schedule)  # fmt: skip
            set_lr(optimizer, lr)
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                x, labels = batches.next_batch(cfg.batch_size * world_size)
                x = x[rank * cfg.batch_size : (rank + 1) * cfg.batch_size].to(device)
                if labels is not None:
                    labels = labels[rank * cfg.batch_size : (rank + 1) * cfg.batch_size].to(device)
                with parallel.gradient_sync(wrapped, mode, sync=micro == cfg.grad_accum - 1):
                    with autocast(cfg.precision, device):
                        loss = wrapped(x, labels)
                    (loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
            step_loss = parallel.all_reduce_mean(step_loss)
            if not math.isfinite(step_loss):
                if bar is not None:
                    bar.close()
                raise TrainingDiverged(
                    f"the stage {stage} loss became {step_loss} at its step {stage_step + 1}; "
                    f"stopped without saving. The last good checkpoint is {out_dir / ckpt.CHECKPOINT} "
                    f"(--resume, perhaps a lower --stage{stage}-lr)"
                )
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, stage_step = step + 1, stage_step + 1
            tokens += cfg.tokens_per_step * world_size
            tokens_since += cfg.tokens_per_step * world_size
            row: dict[str, Any] = {"step": step, "stage": stage, "stage_step": stage_step, "tokens": tokens,
                                   "lr": lr, "train_loss": step_loss}  # fmt: skip
            now = time.perf_counter()
            if stage_step % cfg.log_every == 0 or stage_step == total:
                tps = tokens_since / (now - t_last)
                row["tokens_per_s"] = round(tps, 1)
                t_last, tokens_since = now, 0
                if bar is not None:
                    bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tps:,.0f}")
                elif is_main:
                    log.info("stage %d step %d/%d loss %.4f lr %.2e %.0f tok/s", stage, stage_step, total,
                             step_loss, lr, tps)  # fmt: skip
            if stage_step % cfg.eval_every == 0 or stage_step == total:
                last_val = evaluate(student, val_data, eval_cfg, bytes_table, device)
                row |= {"val_loss": last_val[0], "val_bpb": last_val[1]}  # None, None: no validation data
                msg = f"stage {stage} step {stage_step}: " + (
                    f"val loss {last_val[0]:.4f} ({last_val[1]:.4f} bits/byte)"
                    if last_val[0] is not None
                    else NO_VALIDATION
                )
                if sft is not None and len(sft.val_x):
                    row["val_answer_loss"] = answer_loss(student, sft, cfg, device)
                    msg += f", answer loss {row['val_answer_loss']:.4f}"
                if is_main:
                    (bar.write(msg) if bar is not None else log.info(msg))
                t_last, tokens_since = time.perf_counter(), 0
            row["elapsed_s"] = round(now - t_start, 2)
            rows.append(row)
            if bar is not None:
                bar.update(1)
            stopping = stop.requested()  # a SIGTERM / SIGINT arrived (in any process): save and stop
            if stage_step % cfg.save_every == 0 or stage_step == total or step == end or stopping:
                if is_main:
                    meta = {"stage_index": index, "stage_step": stage_step, "step": step, "tokens": tokens,
                            "teacher_val_loss": teacher_val, "config": cfg.to_dict()}  # fmt: skip
                    _save(out_dir, student, optimizer, batches, rows, meta, train_data)
                t_last, tokens_since = time.perf_counter(), 0
            if stopping:
                if bar is not None:
                    bar.close()
                raise Interrupted(
                    f"interrupted by {stop.name} in stage {stage} after its step {stage_step}/{total} "
                    f"(step {step} in all); checkpoint saved to {out_dir / ckpt.CHECKPOINT}; continue with: "
                    f"{resume_hint('distill', out_dir, world_size)}",
                    stop.signum,
                    step,
                )
        if bar is not None:
            bar.close()
    student.requires_grad_(True)
    return DistillResult(step, tokens, last_val[0], last_val[1], teacher_val, out_dir,
                         time.perf_counter() - t_start, rows, student.eval())  # fmt: skip


def _save(out_dir: Path, student, optimizer, batches, rows, meta: dict[str, Any], train_data) -> None:
    """The checkpoint (exact resume), the student for ``rwkvkit.load``, the tokenizer, log and plot."""
    payload = {"model": parallel.full_state_dict(student, "none"), "optimizer": optimizer.state_dict(),
               "batches": batches.state_dict(),
               "rows": rows, "rng": ckpt.rng_state(), **meta}  # fmt: skip
    ckpt.save_training_checkpoint(out_dir / ckpt.CHECKPOINT, payload)
    student.save(out_dir / "model.safetensors")
    save_tokenizer_beside(train_data, out_dir)
    write_csv(out_dir / "loss.csv", rows, LOG_FIELDS)
    plot_rows(out_dir, rows, meta.get("teacher_val_loss"))


@torch.no_grad()
def answer_loss(student: nn.Module, sft: SFTData, cfg: DistillConfig, device) -> float:
    """Mean cross-entropy on the answer tokens of the held-out instruction examples."""
    was = student.training
    student.eval()
    total, count = 0.0, 0
    for i in range(0, len(sft.val_x), cfg.batch_size):
        x, y = sft.val_x[i : i + cfg.batch_size].to(device), sft.val_y[i : i + cfg.batch_size].to(device)
        logits, _ = student(x)
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100,
                                               reduction="sum")  # fmt: skip
        total, count = total + float(ce), count + int((y != -100).sum())
    student.train(was)
    return parallel.all_reduce_mean(total / max(count, 1))


def plot_rows(out_dir: Path, rows: list[dict[str, Any]], teacher_val: float | None) -> None:
    """``loss.png``: the student's validation loss against training tokens, stage boundaries marked,
    the teacher's validation loss as a line."""
    plt = pyplot()
    if plt is None:
        return
    val = [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") not in (None, "")]
    fig, ax = plt.subplots(figsize=(7, 4))
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, label="student validation loss")
    elif any("val_loss" in r for r in rows):
        mark_no_validation(ax)
    if teacher_val is not None:
        ax.axhline(teacher_val, color="k", ls="--", lw=1, label=f"teacher {teacher_val:.3f}")
    for x in [rows[i - 1]["tokens"] for i in range(1, len(rows)) if rows[i]["stage"] != rows[i - 1]["stage"]]:
        ax.axvline(x, color="grey", lw=0.8, ls=":")
    stages = sorted({r["stage"] for r in rows})
    ax.set_title(f"ARWKV distillation, stages {', '.join(map(str, stages))}")
    ax.set_xlabel("training tokens (all stages)")
    ax.set_ylabel("validation loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, out_dir / "loss.png")


__all__ = ["DistillConfig", "DistillResult", "SFTData", "StageLoss", "build_student", "distill"]
