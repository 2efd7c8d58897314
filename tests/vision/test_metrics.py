"""Metrics on hand-made cases where the answer is known exactly."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import InputError
from rwkvkit.vision.metrics import accuracy, boundary_iou, boundary_width, iou, mask_boundary, miou


def _square(size, y0, x0, y1, x1):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.2, 0.1], [1.0, 0.0, 3.0]])
    labels = torch.tensor([1, 0, 2, 1])
    assert accuracy(logits, labels).item() == 0.5
    assert accuracy(logits, labels, topk=2).item() == 0.75
    with pytest.raises(InputError):
        accuracy(logits, labels[:3])


def test_iou_exact():
    a = _square(10, 0, 0, 4, 4)  # 16 px
    b = _square(10, 2, 2, 6, 6)  # 16 px, 4 shared
    assert iou(a, b).item() == pytest.approx(4 / 28)
    assert iou(a, a).item() == 1.0
    empty = torch.zeros(10, 10, dtype=torch.bool)
    assert iou(empty, empty).item() == 1.0 and iou(a, empty).item() == 0.0
    batch = iou(torch.stack([a, a, empty]), torch.stack([b, a, a]))
    assert batch.shape == (3,) and torch.allclose(batch, torch.tensor([4 / 28, 1.0, 0.0]))
    probs = a.float() * 0.9 + 0.05  # thresholded at 0.5
    assert iou(probs, b.float()).item() == pytest.approx(4 / 28)
    assert miou(torch.stack([a, a]), torch.stack([b, a])).item() == pytest.approx((4 / 28 + 1) / 2)
    assert miou([a[None], a[None]], [b[None], a[None]]).item() == pytest.approx((4 / 28 + 1) / 2)


def test_semantic_miou():
    pred = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1]])
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2]])
    # class 0: inter 3 union 4; class 1: inter 2 union 3; class 2: inter 1 union 3; class 3 absent
    expect = (3 / 4 + 2 / 3 + 1 / 3) / 3
    assert miou(pred, target, num_classes=4).item() == pytest.approx(expect)
    # accumulated over a set of batches, not averaged per batch
    assert miou([pred[:1], pred[1:]], [target[:1], target[1:]], num_classes=4).item() == pytest.approx(expect)


def test_mask_boundary_and_width():
    assert boundary_width(64, 64, 0.02) == 2  # 0.02 * 90.5 = 1.81 -> 2
    assert boundary_width(10, 10, 0.001) == 1 and boundary_width(64, 64, 3) == 3
    sq = _square(8, 1, 1, 7, 7)  # 6x6 square
    b1 = mask_boundary(sq, 1)
    assert b1.sum().item() == 36 - 16 and not b1[2:6, 2:6].any()
    assert mask_boundary(sq, 2).sum().item() == 36 - 4
    # the image border counts as contour
    full = torch.ones(5, 5, dtype=torch.bool)
    assert mask_boundary(full, 1).sum().item() == 25 - 9


def test_boundary_iou_exact():
    g = _square(12, 2, 2, 10, 10)  # 8x8 at 2..9; boundary d=1: 64-36 = 28 px
    p = _square(12, 2, 2, 10, 9)  # 8 rows x 7 cols at cols 2..8; boundary: 56-30 = 26 px
    gb, pb = mask_boundary(g, 1), mask_boundary(p, 1)
    inter = (gb & pb).sum().item()
    union = (gb | pb).sum().item()
    # shared: rows 2 and 9 over cols 2..8 (14) + col 2 over rows 3..8 (6) = 20
    assert inter == 20 and union == 28 + 26 - 20
    assert boundary_iou(p, g, dilation=1).item() == pytest.approx(20 / 34)
    assert boundary_iou(g, g, dilation=1).item() == 1.0
    # a thick boundary (d >= half the side) is the whole mask: boundary IoU equals IoU
    assert boundary_iou(p, g, dilation=4).item() == pytest.approx(iou(p, g).item())
    batch = boundary_iou(torch.stack([p, g]).float(), torch.stack([g, g]).float(), dilation=1)
    assert torch.allclose(batch, torch.tensor([20 / 34, 1.0]))
    with pytest.raises(InputError):
        boundary_iou(p, g, dilation=0)
