"""Classification and segmentation metrics on torch tensors, batched.

Masks are ``[..., H, W]`` tensors; bool masks are used as they are, other dtypes are binarised with
``> threshold`` (0.5 by default: probabilities or 0/1 floats; pass ``threshold=0`` for logits). Every
per-example metric returns a float tensor of the leading shape ``[...]``. An example whose
prediction and target are both empty has IoU 1 (nothing to find, nothing found).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from rwkvkit.errors import InputError


def accuracy(logits: torch.Tensor, labels: torch.Tensor, topk: int = 1) -> torch.Tensor:
    """Fraction of rows whose label is among the ``topk`` largest logits; logits [..., C], labels [...]."""
    if logits.shape[:-1] != labels.shape:
        raise InputError(f"accuracy: logits {tuple(logits.shape)} do not fit labels {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise InputError("accuracy of an empty batch is undefined")
    if topk == 1:
        hit = logits.argmax(-1) == labels
    else:
        hit = (logits.topk(topk, dim=-1).indices == labels.unsqueeze(-1)).any(-1)
    return hit.float().mean()


def _binary(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask > threshold


def _check_pair(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise InputError(f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() < 2:
        raise InputError(f"{name}: masks must be [..., H, W], got shape {tuple(pred.shape)}")


def _ratio(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    inter, union = inter.float(), union.float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou(pred_mask: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Intersection over union per mask: ``[..., H, W]`` -> ``[...]`` (1 where both are empty)."""
    _check_pair(pred_mask, target, "iou")
    p, t = _binary(pred_mask, threshold), _binary(target, threshold)
    return _ratio((p & t).sum((-2, -1)), (p | t).sum((-2, -1)))


def miou(
    pred,
    target,
    num_classes: int | None = None,
    threshold: float = 0.5,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Mean IoU over a set; ``pred`` and ``target`` are tensors or equal-length iterables of batches.

    - ``num_classes=None`` (binary masks ``[..., H, W]``): the mean of the per-mask :func:`iou`.
    - ``num_classes=K`` (label maps of ints in ``[0, K)``): the semantic-segmentation mIoU, i.e. per
      class the intersection and union summed over the whole set, then the mean over the classes
      that occur (union > 0) in prediction or target. Pixels whose target is ``ignore_index`` are skipped.
    """
    pairs = [(pred, target)] if isinstance(pred, torch.Tensor) else list(_zip_batches(pred, target))
    if not pairs:
        raise InputError("miou of an empty set is undefined")
    if num_classes is None:
        return torch.cat([iou(p, t, threshold).reshape(-1) for p, t in pairs]).mean()
    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    for p, t in pairs:
        _check_pair(p, t, "miou")
        p, t = p.reshape(-1).long(), t.reshape(-1).long()
        if ignore_index is not None:
            keep = t != ignore_index
            p, t = p[keep], t[keep]
        for x, what in ((p, "prediction"), (t, "target")):
            if x.numel() and (x.min() < 0 or x.max() >= num_classes):
                raise InputError(f"miou: {what} labels outside [0, {num_classes})")
        cp = torch.bincount(p, minlength=num_classes).double()
        ct = torch.bincount(t, minlength=num_classes).double()
        both = torch.bincount(p[p == t], minlength=num_classes).double()
        inter += both
        union += cp + ct - both
    present = union > 0
    if not present.any():
        raise InputError("miou: no class occurs in prediction or target")
    return (inter[present] / union[present]).mean().float()


def _zip_batches(pred: Iterable, target: Iterable):
    pred, target = list(pred), list(target)
    if len(pred) != len(target):
        raise InputError(f"miou: {len(pred)} prediction batches but {len(target)} target batches")
    return zip(pred, target)


def boundary_width(height: int, width: int, dilation: float | int = 0.02) -> int:
    """Boundary width d in pixels: an ``int`` is pixels; a ``float`` in (0, 1) is a fraction of the image
    diagonal, ``max(1, round(dilation * sqrt(H^2 + W^2)))`` (Cheng et al. use 0.02)."""
    if isinstance(dilation, bool) or dilation <= 0:
        raise InputError(
            f"boundary dilation must be > 0 (pixels, or a fraction of the diagonal), got {dilation}"
        )
    if isinstance(dilation, int):
        return dilation
    if dilation >= 1:
        raise InputError(
            f"a fractional boundary dilation must be in (0, 1), got {dilation}; pass an int for pixels"
        )
    return max(1, round(dilation * math.hypot(height, width)))


def mask_boundary(mask: torch.Tensor, d: int) -> torch.Tensor:
    """The pixels of a bool mask ``[..., H, W]`` within chessboard distance ``d`` of its contour.

    That is ``mask & ~erode(mask)``, eroding with a (2d+1)x(2d+1) square and treating everything
    outside the image as background (so pixels along the image border count as contour), exactly
    like Cheng et al.'s ``mask_to_boundary`` (zero padding, then ``d`` erosions with a 3x3 kernel).
    """
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-2:]).float()
    outside = F.pad(1.0 - m, (d, d, d, d), value=1.0)
    eroded = F.max_pool2d(outside, kernel_size=2 * d + 1, stride=1) < 0.5
    return (mask.reshape(m.shape) & ~eroded).reshape(shape)


def boundary_iou(
    pred: torch.Tensor, target: torch.Tensor, dilation: float | int = 0.02, threshold: float = 0.5
) -> torch.Tensor:
    """Boundary IoU (Cheng et al., CVPR 2021) per mask: ``[..., H, W]`` -> ``[...]``.

    ``|G_d & P_d| / |G_d | P_d|`` where ``X_d`` is the set of pixels of mask X within distance d of
    X's contour (:func:`mask_boundary`); d from :func:`boundary_width` (default 2% of the diagonal).
    1 where both masks are empty.
    """
    _check_pair(pred, target, "boundary_iou")
    d = boundary_width(pred.shape[-2], pred.shape[-1], dilation)
    p = mask_boundary(_binary(pred, threshold), d)
    t = mask_boundary(_binary(target, threshold), d)
    return _ratio((p & t).sum((-2, -1)), (p | t).sum((-2, -1)))
