"""Training, evaluation and prediction for the vision models (classification and promptable segmentation).

One loop for every model of :mod:`rwkvkit.vision`::

    cfg = VisionTrainConfig(model="vrwkv-t", task="classify", img_size=32, patch_size=4, epochs=10)
    result = train(cfg)                       # checkpoints and metrics.csv in cfg.out_dir
    metrics = evaluate(cfg.out_dir)           # top-1 accuracy (classify) or mIoU / boundary IoU (segment)

Models are named ``family-preset`` (:func:`build_model`): ``vrwkv-t|s|b``, ``vit-t|s|b``,
``ran-small|attention56|attention92``, ``sam-tiny|small``; ``overrides`` set config fields (e.g.
``{"qshift": False}``). A checkpoint folder holds ``model.safetensors`` (weights), ``model.json``
(model name, config overrides, task, image size) and ``metrics.csv`` (one row per epoch): loading it
never executes code.

Recipe (the papers' shape, scaled to a CPU): AdamW (no weight decay on norms, biases, position
embeddings and the WKV decay/bonus vectors), linear warm-up then cosine decay to 1 % of the peak,
gradient clipping, label smoothing for classification; Dice + BCE (+ IoU-head MSE) for segmentation.
Augmentation for classification: 2-pixel-padded random crops and horizontal flips.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from rwkvkit import optim, registry
from rwkvkit.errors import ConfigError
from rwkvkit.utils.model_folder import load_model_folder, save_model_folder
from rwkvkit.utils.runlog import format_row, write_csv
from rwkvkit.vision import data, metrics
from rwkvkit.vision.data import CLASS_NAMES
from rwkvkit.vision.sam import segmentation_loss

TASKS = ("classify", "segment")
FAMILIES = tuple(registry.names("vision"))  # vrwkv, vit, ran, sam


# ---- models --------------------------------------------------------------------------------------


def build_model(name: str, **overrides: Any) -> nn.Module:
    """A vision model from its name ``family-preset`` (:mod:`rwkvkit.registry`) and config overrides.

    Raises:
        ConfigError: unknown family or preset, or an override that is not a field of the config.
    """
    family, _, preset = name.partition("-")
    if family not in FAMILIES or not preset:
        raise ConfigError(
            f"unknown vision model {name!r}; use family-preset: {registry.preset_names('vision')}"
        )
    # JSON (model.json, --set) has no tuples: tuple-valued config fields arrive as lists
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    build = registry.builder(family, "vision")
    try:
        return build(preset, **overrides)
    except TypeError as e:  # an override that is not a config field
        raise ConfigError(f"bad option for {name}: {e}") from None
    except (KeyError, ValueError) as e:
        raise ConfigError(f"bad preset or option for {name}: {e}") from None


def task_of(name: str) -> str:
    """The task of a model ``family-preset``: ``segment`` (``sam-*``) or ``classify``."""
    family = name.partition("-")[0]
    return registry.family(family, "vision").task if family in FAMILIES else "classify"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- configuration -------------------------------------------------------------------------------


@dataclass
class VisionTrainConfig:
    """Everything a vision training run needs (also what ``rwkvkit vision train`` sets)."""

    model: str = "vrwkv-t"
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields of the model
    task: str = ""  # "" = from the model family
    data: str | None = None  # Fashion-MNIST folder (default: the Debian package's, or $RWKVKIT_FASHION_MNIST)
    img_size: int = 32  # classification: images resized to this; segmentation: the canvas size
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    augment: bool = True
    train_limit: int = 0  # use only the first N training examples (0 = all)
    test_limit: int = 0  # evaluate on the first N test examples (0 = all)
    seg_train: int = 4000  # segmentation: examples composed for training / testing
    seg_test: int = 500
    seed: int = 0
    threads: int = 0  # torch threads (0 = leave as is)
    out_dir: str = "runs/vision/run"
    progress: bool = True

    def resolved_task(self) -> str:
        task = self.task or task_of(self.model)
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if task == "segment" and task_of(self.model) != "segment":
            raise ConfigError(f"{self.model} is a classifier; segmentation needs a sam-* model")
        if task == "classify" and task_of(self.model) != "classify":
            raise ConfigError(f"{self.model} is a segmenter; use --task segment")
        return task


def _model_overrides(cfg: VisionTrainConfig, task: str) -> dict[str, Any]:
    """The overrides the data implies (image size, channels, classes), under the user's own."""
    implied: dict[str, Any] = {}
    family = cfg.model.split("-")[0]
    if task == "classify":
        implied["num_classes"] = 10
        implied["in_chans"] = 1
        if family in ("vrwkv", "vit"):
            implied["img_size"] = cfg.img_size
    else:
        implied["in_chans"] = 1
    return {**implied, **cfg.overrides}


# ---- data ----------------------------------------------------------------------------------------


def make_datasets(cfg: VisionTrainConfig, task: str):
    """(train, test) datasets for the task."""
    if task == "classify":
        train = data.ClassificationDataset("train", root=cfg.data, augment=cfg.augment, resize=cfg.img_size)
        test = data.ClassificationDataset("test", root=cfg.data, augment=False, resize=cfg.img_size)
    else:
        train = data.SegmentationDataset(
            "train", n=cfg.seg_train, canvas=cfg.img_size, seed=cfg.seed, root=cfg.data
        )
        test = data.SegmentationDataset(
            "test", n=cfg.seg_test, canvas=cfg.img_size, seed=cfg.seed + 1, root=cfg.data
        )
    if cfg.train_limit:
        train = torch.utils.data.Subset(train, range(min(cfg.train_limit, len(train))))
    if cfg.test_limit:
        test = torch.utils.data.Subset(test, range(min(cfg.test_limit, len(test))))
    return train, test


def _batches(dataset, batch_size: int, shuffle: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=False, num_workers=0
    )


# ---- optimisation --------------------------------------------------------------------------------


_NO_DECAY_NAMES = ("pos_embed", "spatial_decay", "spatial_first", "decay", "first", "mu", "gamma", "token")


def decayed(name: str, p: torch.Tensor) -> bool:
    """The vision weight-decay rule: matrices and convolution kernels only (not norms, biases,
    position embeddings, WKV decay/bonus vectors, token-shift mixes, layer scales, learned tokens)."""
    leaf = name.rsplit(".", 1)[-1]
    return p.dim() >= 2 and not any(t in leaf for t in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float, lr: float = 1e-3) -> list[dict[str, Any]]:
    """AdamW groups of :func:`rwkvkit.optim.param_groups` with the vision rule :func:`decayed`."""
    return optim.param_groups(model, weight_decay, lr, decayed=decayed)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` (step ``s`` takes ``peak (s + 1) / warmup``), then cosine decay to
    1 % of it: :func:`rwkvkit.optim.lr_schedule` with these settings. A warm-up longer
    than the run never reaches the peak."""
    return optim.lr_schedule(
        step, lr=peak, lr_final=0.01 * peak, warmup_steps=warmup, total_steps=max(total, warmup),
        warmup_init=0.0, warmup_counts_step=True,
    )  # fmt: skip


# ---- steps ---------------------------------------------------------------------------------------


def _seg_batch(batch):
    image, point, mask = batch[0], batch[1], batch[2]
    points = point.view(-1, 1, 2).float()
    labels = torch.ones(points.shape[:2], dtype=torch.long)
    return image, points, labels, mask


def _loss(model: nn.Module, batch, task: str, label_smoothing: float) -> torch.Tensor:
    if task == "classify":
        images, labels = batch[0], batch[1]
        return F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    image, points, labels, mask = _seg_batch(batch)
    mask_logits, iou_pred = model(image, points, labels)
    return segmentation_loss(mask_logits, mask, iou_pred)["loss"]


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, task: str, batch_size: int = 128) -> dict[str, float]:
    """Classification: ``accuracy`` (top-1) and ``loss``; segmentation: ``miou``, ``boundary_iou``."""
    model.eval()
    n, total_loss, correct = 0, 0.0, 0
    ious, bious = [], []
    for batch in _batches(dataset, batch_size, shuffle=False, seed=0):
        if task == "classify":
            logits = model(batch[0])
            total_loss += float(F.cross_entropy(logits, batch[1], reduction="sum"))
            correct += int((logits.argmax(-1) == batch[1]).sum())
            n += batch[1].shape[0]
        else:
            image, points, labels, mask = _seg_batch(batch)
            mask_logits, _ = model(image, points, labels)
            pred = mask_logits > 0
            ious.append(metrics.iou(pred, mask > 0.5))
            bious.append(metrics.boundary_iou(pred, mask > 0.5))
            n += image.shape[0]
    if task == "classify":
        return {"accuracy": correct / max(1, n), "loss": total_loss / max(1, n)}
    return {"miou": float(torch.cat(ious).mean()), "boundary_iou": float(torch.cat(bious).mean())}


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(out_dir: str | Path, model: nn.Module, cfg: VisionTrainConfig, task: str) -> Path:
    meta = {
        "model": cfg.model,
        "overrides": _model_overrides(cfg, task),
        "task": task,
        "img_size": cfg.img_size,
        "train_config": dataclasses.asdict(cfg),
    }
    return save_model_folder(out_dir, model, meta)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, its model.json)`` from a checkpoint folder written by :func:`train`."""
    return load_model_folder(
        path, lambda meta: build_model(meta["model"], **meta["overrides"]), "rwkvkit vision train"
    )


# ---- the loop ------------------------------------------------------------------------------------


def train(cfg: VisionTrainConfig) -> dict[str, Any]:
    """Train, evaluate after every epoch, keep the last weights; returns the final metrics and history."""
    task = cfg.resolved_task()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **_model_overrides(cfg, task))
    train_set, test_set = make_datasets(cfg, task)
    opt = optim.build_optimizer(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), decayed=decayed
    )
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    step, t0 = 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        running, seen = 0.0, 0
        batches = _batches(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        for batch in bar:
            optim.set_lr(opt, lr_at(step, total, warmup, cfg.lr))
            loss = _loss(model, batch, task, cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            running += float(loss.detach()) * batch[0].shape[0]
            seen += batch[0].shape[0]
            bar.set_postfix(loss=f"{running / seen:.4f}")
        row = {"epoch": epoch + 1, "step": step, "train_loss": running / max(1, seen)}
        row.update(evaluate_model(model, test_set, task))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        history.append(row)
        if cfg.progress:
            print(format_row(row))
        save_checkpoint(out, model, cfg, task)
        write_csv(out / "metrics.csv", history, fields=list(history[0]))
    return {"final": history[-1] if history else {}, "history": history, "params": count_params(model)}


def evaluate(path: str | Path, data: str | None = None, limit: int = 0) -> dict[str, float]:
    """Metrics of a checkpoint folder on its task's test split."""
    model, meta = load_checkpoint(path)
    tc = VisionTrainConfig(**{**meta["train_config"], "data": data or meta["train_config"].get("data")})
    if limit:
        tc.test_limit = limit
    _, test_set = make_datasets(tc, meta["task"])
    return evaluate_model(model, test_set, meta["task"])


# ---- prediction ----------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    path: str | Path,
    out: str | Path,
    index: int = 0,
    point: tuple[int, int] | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """Run a checkpoint on test example ``index`` and write a PNG: the input with the predicted mask
    over it (segmentation; the prompt point is drawn, ``point`` = (y, x) replaces the example's) or
    with the predicted class (classification). Returns what was predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, meta = load_checkpoint(path)
    tc = VisionTrainConfig(**{**meta["train_config"], "data": data or meta["train_config"].get("data")})
    tc.augment = False
    _, test_set = make_datasets(tc, meta["task"])
    if not 0 <= index < len(test_set):
        raise ConfigError(f"--index must be in [0, {len(test_set)}), got {index}")
    example = test_set[index]
    image = example[0]
    fig, axes = plt.subplots(
        1, 2 if meta["task"] == "segment" else 1, figsize=(8 if meta["task"] == "segment" else 4, 4)
    )
    result: dict[str, Any] = {"index": index}
    if meta["task"] == "segment":
        y, x = (
            (int(point[0]), int(point[1])) if point is not None else (int(example[1][0]), int(example[1][1]))
        )
        H, W = image.shape[-2:]
        if not (0 <= y < H and 0 <= x < W):
            raise ConfigError(f"--point {y},{x} is outside the {H}x{W} image")
        points = torch.tensor([[[y, x]]], dtype=torch.float32)
        logits, iou_pred = model(image[None], points, torch.ones(1, 1, dtype=torch.long))
        pred = (logits[0, 0] > 0).float()
        target = example[2][0]
        result.update(
            point=(y, x),
            iou=float(metrics.iou(pred[None] > 0.5, target[None] > 0.5)[0]) if point is None else None,
            predicted_iou=float(iou_pred.reshape(-1)[0]),
            mask_pixels=int(pred.sum()),
        )
        for ax, mask, title in ((axes[0], target, "target"), (axes[1], pred, "prediction")):
            ax.imshow(image[0].numpy(), cmap="gray")
            overlay = torch.stack([mask, torch.zeros_like(mask), torch.zeros_like(mask), 0.45 * mask], -1)
            ax.imshow(overlay.numpy())
            ax.plot([x], [y], marker="*", color="lime", markersize=14, markeredgecolor="black")
            ax.set_title(
                title
                if title == "target"
                else f"prediction (IoU {result['iou']:.2f})"
                if result["iou"] is not None
                else title
            )
            ax.axis("off")
    else:
        probs = model(image[None]).softmax(-1)[0]
        k = int(probs.argmax())
        result.update(
            predicted=CLASS_NAMES[k], probability=float(probs[k]), label=CLASS_NAMES[int(example[1])]
        )
        axes.imshow(image[0].numpy(), cmap="gray")
        axes.set_title(f"{result['predicted']} ({result['probability']:.0%}); true: {result['label']}")
        axes.axis("off")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    result["image"] = str(out)
    return result
