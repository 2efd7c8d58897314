"""The RWKV-SAM-style promptable segmenter: shapes, gradients, shared encoder, overfitting, input checks.

Parameter counts of the presets (fusion on; whole segmenter / backbone alone) are in the docstring of
``rwkvkit.vision.sam``; ``test_tiny_param_counts_match`` keeps the rwkv and vit variants within 10%.
"""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import ConfigError
from rwkvkit.vision.sam import (
    PromptableSegmenter,
    SegmenterConfig,
    backbone_only,
    count_parameters,
    segmentation_loss,
)

S = 64  # canvas side


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second thread gains nothing and, on a shared CPU, costs a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(**kw) -> PromptableSegmenter:
    return PromptableSegmenter(SegmenterConfig.preset("tiny", **kw))


def _synthetic(n: int, in_chans: int = 3, seed: int = 0):
    """Ellipses brighter than textured noise; the prompt is the centre (positive) and a corner (negative)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")
    images, masks, points = [], [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * (S / 2) + S / 4).tolist()
        ry, rx = (torch.rand(2, generator=g) * (S / 6) + S / 10).tolist()
        m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()
        img = 0.3 * torch.rand(in_chans, S, S, generator=g) + 0.6 * m
        images.append(img)
        masks.append(m[None])
        points.append(torch.tensor([[cy, cx], [1.0, 1.0]]))
    labels = torch.tensor([[1, 0]] * n)
    return torch.stack(images), torch.stack(points), labels, torch.stack(masks)


@pytest.mark.parametrize("backbone", ["rwkv", "vit"])
@pytest.mark.parametrize("fusion", [True, False])
def test_output_shapes(backbone, fusion):
    model = _model(backbone=backbone, fusion=fusion).eval()
    images, points, labels, _ = _synthetic(2)
    with torch.no_grad():
        feats = model.forward_features(images)
        logits, iou = model(images, points, labels)
    assert feats["hr"].shape == (2, 32, S // 4, S // 4)
    assert feats["mr"].shape == (2, 64, S // 8, S // 8)
    assert feats["emb"].shape == (2, 64, S // 16, S // 16)
    assert feats["hw"] == (S // 16, S // 16)
    assert logits.shape == (2, 1, S, S) and iou.shape == (2, 1)
    assert torch.isfinite(logits).all() and torch.isfinite(iou).all()
    assert hasattr(model.decoder, "hr_proj") == fusion


def test_grey_input_and_rectangular_canvas():
    model = _model(in_chans=1, backbone="rwkv").eval()
    images = torch.rand(1, 1, 32, 80)
    with torch.no_grad():
        logits, iou = model(images, torch.tensor([[[5.0, 70.0]]]), torch.tensor([[1]]))
    assert logits.shape == (1, 1, 32, 80) and iou.shape == (1, 1)
    out = backbone_only("tiny")(torch.rand(1, 3, 32, 80))
    assert out["emb"].shape == (1, 192, 2, 5) and out["hw"] == (2, 5)


@pytest.mark.parametrize("backbone", ["rwkv", "vit"])
def test_every_parameter_gets_a_gradient(backbone):
    # labels 1, 0 and -1 so that both label embeddings and the padding embedding are used
    model = _model(backbone=backbone, fusion=True)
    images, points, _, masks = _synthetic(2)
    labels = torch.tensor([[1, 0], [1, -1]])
    logits, iou = model(images, points, labels)
    segmentation_loss(logits, masks, iou)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradient: {zero}"


def test_encoder_once_for_two_prompts_equals_two_forwards():
    model = _model().eval()
    images, points, labels, _ = _synthetic(2)
    image = images[:1]
    with torch.no_grad():
        feats = model.forward_features(image)
        shared_logits, shared_iou = model.decode(feats, points, labels)  # one image, 2 prompts
        for i in range(2):
            ref_logits, ref_iou = model(image, points[i : i + 1], labels[i : i + 1])
            single_logits, _ = model.decode(feats, points[i : i + 1], labels[i : i + 1])
            torch.testing.assert_close(shared_logits[i : i + 1], ref_logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(shared_iou[i : i + 1], ref_iou, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(single_logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shared_logits[0], shared_logits[1])  # the prompt matters


def test_tiny_model_overfits_one_batch():
    model = _model(n_blocks=2)
    images, points, labels, masks = _synthetic(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        logits, iou = model(images, points, labels)
        out = segmentation_loss(logits, masks, iou)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert out["iou"].mean() > 0.5, out["iou"]


def test_loss_terms():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    perfect = (target * 2 - 1) * 20
    out = segmentation_loss(perfect, target, torch.ones(2, 1))
    assert out["dice"] < 1e-3 and out["bce"] < 1e-6 and out["iou_mse"] == 0
    torch.testing.assert_close(out["iou"], torch.ones(2))
    out = segmentation_loss(-perfect, target[:, 0])  # [B, H, W] target, no IoU head
    assert out["iou"].max() == 0 and out["iou_mse"] == 0 and out["loss"] > 1


def test_bad_inputs_raise_value_error():
    model = _model().eval()
    images, points, labels, _ = _synthetic(2)
    bad = {
        "point outside (y = H)": (images, points.clone().index_fill_(2, torch.tensor([0]), S), labels),
        "negative x": (images, points - torch.tensor([0.0, 100.0]), labels),
        "points not [B, P, 2]": (images, points[..., :1], labels),
        "labels wrong shape": (images, points, labels[:, :1]),
        "labels out of range": (images, points, labels + 1),
        "float labels": (images, points, labels.float()),
        "batch mismatch": (images, points[:1], labels[:1]),
        "image not a multiple of 16": (images[..., :60, :60], points.clamp(max=50), labels),
        "wrong channel count": (images[:, :1], points, labels),
        "image not 4D": (images[0], points, labels),
    }
    for name, args in bad.items():
        with pytest.raises(ValueError):
            model(*args)
            pytest.fail(name)
    # a padding point (-1) may sit anywhere
    far = points.clone()
    far[:, 1] = -1e6
    model(images, far, torch.tensor([[1, -1], [1, -1]]))
    with pytest.raises(ValueError, match="target"):
        segmentation_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 4))


def test_bad_config_raises():
    with pytest.raises(ConfigError):
        SegmenterConfig.preset("huge")
    with pytest.raises(ConfigError):
        SegmenterConfig.preset("tiny", backbone="mamba")
    with pytest.raises(ConfigError):
        SegmenterConfig.preset("tiny", in_chans=4)
    with pytest.raises(ConfigError):
        SegmenterConfig.preset("tiny", not_a_field=1)


def test_tiny_param_counts_match():
    counts = {}
    for backbone in ("rwkv", "vit"):
        model = _model(backbone=backbone)
        counts[backbone] = (count_parameters(model), count_parameters(model.backbone))
    for i in range(2):
        r, v = counts["rwkv"][i], counts["vit"][i]
        assert abs(r - v) / r < 0.10, counts
    assert 1_000_000 < counts["rwkv"][0] < 3_000_000, counts
