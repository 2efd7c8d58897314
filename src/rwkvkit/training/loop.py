"""The training loop: one readable function, :func:`train`.

Per optimiser step::

    for each of grad_accum micro-batches:          # windows of ctx_len + 1 tokens, B per process
        state = None
        for each chunk of chunk_len tokens:        # long windows: the state carries across chunks,
            logits, state = model(x_chunk, state)  # so memory is bounded by chunk_len, not ctx_len
            (loss_chunk * share).backward()        # gradients accumulate; the state is detached
            state = state.detach()                 # (truncated back-propagation through time)
    clip, AdamW step with the scheduled learning rate

With ``fused_loss`` (the default) the model returns its hidden states instead of the logits, and
:func:`~rwkvkit.training.loss.fused_lm_loss` applies the output head and the loss a few hundred MiB
of logits at a time: the ``[B, T, V]`` fp32 logits of a chunk never exist whole (nor are they kept
for the backward pass); validation is computed the same way.

Every ``eval_every`` steps: validation loss and bits per byte over the validation split. Every
``save_every`` steps: an atomic checkpoint (``last.pt``: model, optimiser, step, sampler position,
RNG; ``model.safetensors``: the weights for ``rwkvkit.load``). ``resume=True`` continues from
``last.pt`` exactly: the losses after a resume equal those of an uninterrupted run (tested).
A NaN/inf loss stops the run with a clear message; the last good checkpoint stays on disk.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch import distributed as dist
from tqdm import tqdm

from rwkvkit import registry
from rwkvkit.data import WindowSampler, iter_eval_windows, open_tokens
from rwkvkit.errors import ConfigError, Interrupted, RWKVKitError
from rwkvkit.formats import load as load_model
from rwkvkit.formats import save as save_weights
from rwkvkit.models.gpt.config import GPTConfig
from rwkvkit.models.gpt.model import GPT
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.training import checkpoint as ckpt
from rwkvkit.training import loss as losses  # losses.lm_loss: looked up per call, so tests can wrap it
from rwkvkit.training import parallel
from rwkvkit.training.config import TrainConfig, parse_lora_ranks
from rwkvkit.training.init import official_init_
from rwkvkit.training.interrupt import StopOnSignal, resume_hint
from rwkvkit.training.optim import build_optimizer, lr_schedule, set_lr
from rwkvkit.utils.meta import on_meta
from rwkvkit.utils.perf import matmul_peak, train_flops_per_token
from rwkvkit.utils.precision import autocast
from rwkvkit.utils.runlog import (
    NO_VALIDATION,  # noqa: F401  (re-exported)
    open_run_folder,
    plot_log,
    save_tokenizer_beside,
    write_csv,
)

log = logging.getLogger("rwkvkit.train")

LOG_FIELDS = ["step", "tokens", "lr", "train_loss", "val_loss", "val_bpb", "tokens_per_s", "mfu", "elapsed_s"]


class TrainingDiverged(RWKVKitError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    step: int
    train_losses: list[float]  # one per optimiser step, averaged over processes
    val_loss: float | None
    val_bpb: float | None
    out_dir: Path
    seconds: float


# ---- model construction -------------------------------------------------------------------------


class Adaptation(Protocol):
    """How a fine-tuning method changes a training run (:mod:`rwkvkit.finetune` implements it).

    :func:`train` calls, in order: :meth:`prepare` on the built (or ``init_from``-loaded) model, before
    it is parallelised; :meth:`parameters` for trainable tensors that live outside the model (an
    initial state); :meth:`initial_state` at the start of every training and validation window;
    :meth:`checkpoint_state` / :meth:`load_checkpoint_state` instead of the whole model's state dict
    (a checkpoint keeps only what training changes: the base is reloaded from ``init_from``); and
    :meth:`save_outputs` instead of writing ``model.safetensors``.
    """

    def prepare(self, model: nn.Module) -> nn.Module: ...

    def parameters(self) -> list[nn.Parameter]: ...

    def initial_state(self, batch_size: int) -> Any: ...

    def checkpoint_state(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]: ...

    def load_checkpoint_state(self, model: nn.Module, saved: dict[str, torch.Tensor]) -> None: ...

    def save_outputs(self, model: nn.Module, out_dir: Path) -> None: ...


def head_weight(model: nn.Module) -> torch.Tensor | None:
    """The ``[V, C]`` output-head weight of a model whose forward takes ``return_hidden=True`` (RWKV:
    ``head``, GPT: ``lm_head``), for :func:`~rwkvkit.training.loss.fused_lm_loss`; None for any other
    model (the loss then takes its logits). Read it after each forward: FSDP2 swaps the unsharded
    parameters in for the forward (the root's stay unsharded until its backward)."""
    model = parallel.unwrap(model)
    if isinstance(model, RWKV):
        return model.head.weight
    if isinstance(model, GPT):
        return model.lm_head.weight
    return None


def model_loss(
    model: nn.Module, wrapped: nn.Module, x: torch.Tensor, y: torch.Tensor, state, cfg: TrainConfig,
    device, mask: torch.Tensor | None = None, l2wrap: bool | None = None,
) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """``(loss, state)`` of ``wrapped`` (``model``, or its DDP / FSDP wrapper) on tokens ``x`` with
    targets ``y``: the fused head and loss where ``cfg.fused_loss`` and the model allows it, else
    :func:`~rwkvkit.training.loss.lm_loss` of the logits. ``l2wrap`` defaults to ``cfg.l2wrap``."""
    l2wrap = cfg.l2wrap if l2wrap is None else l2wrap
    fused = cfg.fused_loss and head_weight(model) is not None
    kw = {"return_hidden": True} if fused else {}
    with autocast(cfg.precision, device):
        out, state = wrapped(x, state, **kw) if state is not None else wrapped(x, **kw)
        if fused:  # inside autocast: the head's products in bf16, as the plain head's
            loss = losses.fused_lm_loss(out, head_weight(model), y, mask, l2wrap, chunk_size=cfg.loss_chunk)
    if not fused:
        loss = losses.lm_loss(out, y, mask, l2wrap=l2wrap)
    return loss, state


def model_vocab(cfg: TrainConfig, tokenizer_vocab: int) -> int:
    if cfg.vocab_size:
        if cfg.vocab_size < tokenizer_vocab:
            raise ConfigError(
                f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} ids"
            )
        return cfg.vocab_size
    return -(-tokenizer_vocab // 64) * 64  # round up: matrix shapes friendly to every backend


def build_model(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """The model of ``cfg.arch`` (``rwkv`` or ``gpt``, :mod:`rwkvkit.registry`) for ``vocab_size``."""
    return registry.build_model(cfg.arch, cfg, vocab_size, domain="language")


def build_gpt(cfg: TrainConfig, vocab_size: int) -> GPT:
    """The transformer baseline: a GPT of the run's layers and width (heads of ``head_size``)."""
    gcfg = GPTConfig(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=max(1, cfg.n_embd // cfg.head_size),
                     vocab_size=vocab_size, block_size=cfg.ctx_len)  # fmt: skip
    model = GPT(gcfg)
    model.init_weights(cfg.seed)
    return model


def build_rwkv(cfg: TrainConfig, vocab_size: int) -> RWKV:
    """A fresh RWKV of ``cfg.version`` (official initialisation), or the weights of ``cfg.init_from``."""
    if cfg.init_from:
        model = load_model(cfg.init_from, dtype=torch.float32)
        if model.config.vocab_size < vocab_size:
            raise ConfigError(
                f"{cfg.init_from} has a vocabulary of {model.config.vocab_size}, the data needs {vocab_size}"
            )
        return model.train()
    mcfg = RWKVConfig(
        version=cfg.version,
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        vocab_size=vocab_size,
        head_size=cfg.head_size,
        dim_ffn=cfg.dim_ffn,
        **parse_lora_ranks(cfg.version, cfg.lora_ranks, cfg.n_embd),
    )
    model = RWKV(mcfg)
    official_init_(model, seed=cfg.seed)
    return model


# ---- data ---------------------------------------------------------------------------------------


def _open_data(cfg: TrainConfig):
    if not cfg.data:
        raise ConfigError("no training data: pass --data DIR (made by `rwkvkit data prepare`)")
    return open_tokens(cfg.data, split="train"), open_tokens(cfg.data, split="val")


@torch.no_grad()
def evaluate(
    model: nn.Module, val, cfg: TrainConfig, bytes_table: torch.Tensor, device, adaptation=None
) -> tuple[float, float] | tuple[None, None]:
    """(mean loss per token in nats, bits per byte) over the validation split (or its first
    ``eval_tokens`` tokens): non-overlapping windows of ctx_len, each from a fresh state, so every
    validation token is predicted exactly once, by RWKV and by the transformer baseline alike.
    ``(None, None)`` when the split has no tokens."""
    was_training = model.training
    model.eval()
    nats, tokens, nbytes = 0.0, 0, 0
    limit = cfg.eval_tokens or None
    loss_mask = getattr(val, "loss_mask", None)  # fine-tuning data: only the answers' tokens count
    for x, y, mask in iter_eval_windows(
        val.tokens, cfg.ctx_len, cfg.batch_size, limit=limit, loss_mask=loss_mask
    ):
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        if not mask.any():  # a window with no target that counts (e.g. only prompts): nothing to add
            continue
        state = adaptation.initial_state(x.shape[0]) if adaptation is not None else None
        # the training step's loss (fused or not) without L2Wrap: the mean over the mask, times its count
        loss, _ = model_loss(model, model, x, y, state, cfg, device, mask=mask, l2wrap=False)
        nats += float(loss) * int(mask.sum())
        tokens += int(mask.sum())
        nbytes += int((bytes_table[y] * mask).sum())
    model.train(was_training)
    if tokens == 0:  # an empty validation split: no figure rather than a made-up 0.0
        return None, None
    nats = parallel.all_reduce_mean(nats)  # every rank evaluates the same windows
    loss = nats / tokens
    return loss, nats / math.log(2) / max(nbytes, 1)


def _cpu_peak(cfg: TrainConfig, warn: bool) -> float:
    """This CPU's matrix-product peak at the run's precision (the MFU denominator); warns when bf16
    is the slower precision here (no native bf16 instructions)."""
    if cfg.precision != "bf16":
        return matmul_peak(torch.float32, seconds=0.3)
    peak, fp32 = matmul_peak(torch.bfloat16, seconds=0.3), matmul_peak(torch.float32, seconds=0.2)
    if warn and fp32 > peak:
        log.warning(
            "this CPU multiplies bf16 matrices at %.0f GFLOP/s and fp32 at %.0f GFLOP/s (it has no native "
            "bf16 instructions): --precision fp32 trains faster here", peak / 1e9, fp32 / 1e9,
        )  # fmt: skip
    return peak


# ---- the loop -----------------------------------------------------------------------------------


def train(
    cfg: TrainConfig, resume: bool = False, stop_at: int | None = None, adaptation: Adaptation | None = None
) -> TrainResult:
    """Train (or continue training) a model as ``cfg`` says; returns the loss history.

    ``stop_at``: stop (and checkpoint) after this step although the schedule spans ``max_steps``,
    as an interrupted run would; ``resume=True`` later continues it exactly. ``adaptation``: a
    fine-tuning method (:class:`Adaptation`, from :mod:`rwkvkit.finetune`); None trains every weight.
    """
    owns_group = not (dist.is_available() and dist.is_initialized())  # torchrun: _train creates it
    try:
        with StopOnSignal() as stop:
            result = _train(cfg, resume, stop_at, stop, adaptation)
    except BaseException:
        if owns_group:
            parallel.shutdown(barrier=False)  # the other ranks may never reach a barrier
        raise
    if owns_group:
        parallel.shutdown()
    return result


def _train(
    cfg: TrainConfig, resume: bool, stop_at: int | None, stop: StopOnSignal, adaptation: Adaptation | None
) -> TrainResult:
    """The body of :func:`train` (which also leaves the process group it joined)."""
    rank, world_size = parallel.init_distributed(cfg.device)
    mode = cfg.parallel if cfg.parallel != "auto" else ("ddp" if world_size > 1 else "none")
    if world_size == 1:
        mode = "none"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    out_dir = Path(cfg.out_dir)
    is_main = rank == 0
    payload = ckpt.load_for_resume(out_dir, cfg, log, is_main) if resume else None

    train_data, val_data = _open_data(cfg)
    tok_vocab = train_data.tokenizer.vocab_size
    vocab = model_vocab(cfg, tok_vocab)
    bytes_table = torch.as_tensor(train_data.token_bytes_table(), dtype=torch.long)
    bytes_table = torch.nn.functional.pad(bytes_table, (0, vocab - len(bytes_table))).to(device)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, vocab).to(device).train()
    if adaptation is not None:
        model = adaptation.prepare(model).to(device).train()
    if payload is not None:
        if adaptation is not None:
            adaptation.load_checkpoint_state(model, payload["model"])
        else:
            model.load_state_dict(payload["model"])
    flops_per_token = train_flops_per_token(model, cfg.ctx_len)
    wrapped = parallel.parallelize(model, mode, cfg.activation_checkpointing, cfg.compile)
    extra = list(adaptation.parameters()) if adaptation is not None else []
    betas = (cfg.beta1, cfg.beta2)
    if any(p.requires_grad for p in model.parameters()):
        optimizer = build_optimizer(
            model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas, eps=cfg.adam_eps
        )
        if extra:  # trainable tensors outside the model (an initial state): their own group, no decay
            optimizer.add_param_group({"params": extra, "lr": cfg.lr, "lr_scale": 1.0, "weight_decay": 0.0})
    elif extra:  # the model is frozen (state tuning): only the adaptation's tensors train
        group = {"params": extra, "lr": cfg.lr, "lr_scale": 1.0, "weight_decay": 0.0}
        optimizer = torch.optim.AdamW([group], lr=cfg.lr, betas=betas, eps=cfg.adam_eps, weight_decay=0.0)
    else:
        raise ConfigError("nothing to train: every parameter is frozen")
    sampler = WindowSampler(train_data.tokens, cfg.ctx_len, seed=cfg.seed)
    loss_mask = getattr(train_data, "loss_mask", None)  # fine-tuning data: the loss on answers only
    step, rows, train_losses = 0, [], []
    if payload is not None:
        parallel.load_optimizer_state(wrapped, optimizer, payload["optimizer"], mode)
        sampler.load_state_dict(payload["sampler"])
        ckpt.set_rng_state(payload["rng"])
        step, rows, train_losses = payload["step"], payload["rows"], payload["train_losses"]
        if is_main:
            log.info("resumed from %s at step %d", out_dir / ckpt.CHECKPOINT, step)
    if is_main:
        open_run_folder(out_dir, cfg, val_data, log)

    peak = _cpu_peak(cfg, warn=is_main) if device.type == "cpu" else None
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.ctx_len * world_size
    chunk = cfg.effective_chunk
    show_bar = cfg.progress and is_main and sys.stderr.isatty()
    bar = None
    if show_bar:
        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def save(val_loss=None) -> None:
        state_dict = parallel.full_state_dict(wrapped, mode)
        opt_state = parallel.optimizer_state(wrapped, optimizer, mode)
        if not is_main:
            return
        if adaptation is not None:  # only what training changes; the base comes from init_from
            state_dict = adaptation.checkpoint_state(model, state_dict)
        ckpt.save_training_checkpoint(
            out_dir / ckpt.CHECKPOINT,
            {"model": state_dict, "optimizer": opt_state, "sampler": sampler.state_dict(), "step": step,
             "rng": ckpt.rng_state(), "rows": rows, "train_losses": train_losses, "config": cfg.to_dict()},
        )  # fmt: skip
        if adaptation is not None:
            adaptation.save_outputs(parallel.unwrap(model), out_dir)
            save_tokenizer_beside(train_data, out_dir)
        elif cfg.arch == "rwkv":
            save_weights(unwrap_for_save(model, state_dict), out_dir / "model.safetensors", format="rwkvkit")
            save_tokenizer_beside(train_data, out_dir)
        write_csv(out_dir / "loss.csv", rows, LOG_FIELDS)
        plot_log(out_dir, rows, f"{cfg.arch} {cfg.version if cfg.arch == 'rwkv' else ''} on {cfg.data}")

    t_start = time.perf_counter()
    t_last, tokens_since = t_start, 0
    last_val = (None, None)
    end = min(cfg.max_steps, stop_at) if stop_at else cfg.max_steps
    while step < end:
        lr = lr_schedule(step, lr=cfg.lr, lr_final=cfg.lr_final, warmup_steps=cfg.warmup_steps,
                         total_steps=cfg.max_steps, kind=cfg.schedule)  # fmt: skip
        set_lr(optimizer, lr)
        step_loss = 0.0
        n_chunks = -(-cfg.ctx_len // chunk)
        for micro in range(cfg.grad_accum):
            mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
            if loss_mask is None:
                batch = sampler.next_batch(cfg.batch_size * world_size)  # the same global batch everywhere
                masks = None
            else:
                batch, masks = sampler.next_batch_with_mask(cfg.batch_size * world_size, loss_mask)
                masks = masks[mine].to(device)
            batch = batch[mine].to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            state = adaptation.initial_state(x.shape[0]) if adaptation is not None else None
            for c in range(n_chunks):
                xs, ys = x[:, c * chunk : (c + 1) * chunk], y[:, c * chunk : (c + 1) * chunk]
                ms = None if masks is None else masks[:, c * chunk : (c + 1) * chunk]
                share = xs.shape[1] / cfg.ctx_len / cfg.grad_accum  # chunks and micro-batches average
                last = micro == cfg.grad_accum - 1 and c == n_chunks - 1
                with parallel.gradient_sync(wrapped, mode, sync=last):
                    loss, state = model_loss(model, wrapped, xs, ys, state, cfg, device, mask=ms)
                    if loss.requires_grad:  # else nothing trainable reached it (a tuned start state,
                        (loss * share).backward()  # detached after the window's first chunk)
                step_loss += float(loss.detach()) * share
                state = state.detach() if state is not None else None
        step_loss = parallel.all_reduce_mean(step_loss)
        if not math.isfinite(step_loss):
            if bar is not None:
                bar.close()
            raise TrainingDiverged(
                f"the loss became {step_loss} at step {step + 1}; stopped without saving. The last good "
                f"checkpoint is {out_dir / ckpt.CHECKPOINT} (continue with --resume, perhaps a lower --lr)"
            )
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_losses.append(step_loss)
        tokens_since += tokens_per_step

        row: dict[str, Any] = {
            "step": step,
            "tokens": step * tokens_per_step,
            "lr": lr,
            "train_loss": step_loss,
        }
        now = time.perf_counter()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            tps = tokens_since / (now - t_last)
            mfu = tps * flops_per_token / peak / world_size if peak else None
            row |= {"tokens_per_s": round(tps, 1), "mfu": None if mfu is None else round(mfu, 4)}
            t_last, tokens_since = now, 0
            if bar is not None:
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tps:,.0f}",
                                mfu=f"{100 * mfu:.1f}%" if mfu else "-")  # fmt: skip
            elif is_main:
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", step, cfg.max_steps, step_loss, lr, tps)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            last_val = evaluate(model, val_data, cfg, bytes_table, device, adaptation)  # FSDP2: in place
            row |= {"val_loss": last_val[0], "val_bpb": last_val[1]}  # None, None: no validation data
            if is_main and last_val[0] is not None:
                msg = f"step {step}: val loss {last_val[0]:.4f}, {last_val[1]:.4f} bits/byte"
                (bar.write(msg) if bar is not None else log.info(msg))
        row["elapsed_s"] = round(now - t_start, 2)
        rows.append(row)
        if bar is not None:
            bar.update(1)
        stopping = stop.requested()  # a SIGTERM / SIGINT arrived (in any process): save and stop
        if step % cfg.save_every == 0 or step == end or stopping:
            save()
        if stopping:
            if bar is not None:
                bar.close()
            raise Interrupted(
                f"interrupted by {stop.name} after step {step}/{cfg.max_steps}; checkpoint saved to "
                f"{out_dir / ckpt.CHECKPOINT}; continue with: {resume_hint('train', out_dir, world_size)}",
                stop.signum,
                step,
            )
        if step % cfg.eval_every == 0 or step % cfg.save_every == 0:
            t_last, tokens_since = time.perf_counter(), 0  # keep evaluation and saving out of tokens/s
    if bar is not None:
        bar.close()
    return TrainResult(step, train_losses, last_val[0], last_val[1], out_dir, time.perf_counter() - t_start)


def unwrap_for_save(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain CPU copy of ``model`` holding ``state_dict`` (FSDP-gathered or local), for saving."""
    with on_meta():
        plain = RWKV(model.config)
    plain.load_state_dict({k: v.detach().cpu() for k, v in state_dict.items()}, assign=True)
    return plain
