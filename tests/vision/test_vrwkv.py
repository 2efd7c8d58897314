"""Vision-RWKV and the ViT baseline: shapes, paper sizes, variants, resizing, matching, a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.vision.vit import ViT, ViTConfig, matched_vit, vit_param_count
from rwkvkit.vision.vrwkv import VisionRWKV, VRWKVBlock, VRWKVConfig, vrwkv_param_count


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(**kw) -> VRWKVConfig:
    base = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2)
    return VRWKVConfig.preset("T", **{**base, **kw})


# ---- sizes ---------------------------------------------------------------------------------------------

# Paper table (README of OpenGVLab/Vision-RWKV): T 6.2M, S 23.8M, B 93.7M at 224 px, 1000 classes.
# Measured here: T 6,155,176, S 23,820,136, B 93,645,544.
PAPER = {"T": 6.2e6, "S": 23.8e6, "B": 93.7e6}


@pytest.mark.parametrize("name", ["T", "S", "B"])
def test_preset_parameter_counts(name):
    cfg = VRWKVConfig.preset(name)
    with torch.device("meta"):  # no memory, no init cost
        model = VisionRWKV(cfg)
    n = n_params(model)
    assert n == vrwkv_param_count(cfg)
    assert abs(n - PAPER[name]) / PAPER[name] < 0.01, n


def test_presets_follow_the_paper_table():
    t, s, b = (VRWKVConfig.preset(n) for n in "TSB")
    assert (t.embed_dim, t.post_norm, t.layer_scale_init, t.drop_path) == (192, False, None, 0.0)
    assert (s.embed_dim, s.post_norm, s.layer_scale_init, s.drop_path) == (384, True, 1.0, 0.3)
    assert (b.embed_dim, b.post_norm, b.layer_scale_init, b.drop_path) == (768, True, 1e-5, 0.5)
    for c in (t, s, b):
        assert (c.depth, c.patch_size, c.img_size, c.hidden_ratio) == (12, 16, 224, 4)
    assert VRWKVConfig.preset("s", num_classes=10).num_classes == 10
    with pytest.raises(ConfigError, match="unknown VRWKV preset"):
        VRWKVConfig.preset("L")
    with pytest.raises(ConfigError, match="unknown VRWKVConfig fields"):
        VRWKVConfig.preset("T", width=3)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        VRWKVConfig(img_size=30, patch_size=16)


@pytest.mark.parametrize("name", ["T", "S", "B"])
def test_matched_vit_within_5_percent(name):
    cfg = VRWKVConfig.preset(name)
    vit = matched_vit(cfg)
    target = vrwkv_param_count(cfg)
    assert abs(vit_param_count(vit) - target) / target <= 0.05
    assert (vit.embed_dim, vit.depth) == (cfg.embed_dim, 13)  # same width, one more block
    with torch.device("meta"):
        assert n_params(ViT(vit)) == vit_param_count(vit)


def test_matched_vit_small_configs():
    for cfg in (tiny(), tiny(embed_dim=96, depth=6, img_size=32), tiny(embed_dim=36, depth=1, qshift=False)):
        vit = matched_vit(cfg)
        target = vrwkv_param_count(cfg)
        assert abs(vit_param_count(vit) - target) / target <= 0.05, (cfg, vit)
        assert vit.embed_dim % vit.num_heads == 0


def test_vit_presets():
    for name, (C, H) in {"T": (192, 3), "S": (384, 6), "B": (768, 12)}.items():
        c = ViTConfig.preset(name)
        assert (c.embed_dim, c.num_heads, c.depth, c.mlp_ratio) == (C, H, 12, 4.0)
    assert vit_param_count(ViTConfig.preset("T")) == 5_717_032  # DeiT-T 5.7M (it has a class token more)


# ---- forward / backward --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},  # T: pre-norm, no layer scale
        {"post_norm": True, "layer_scale_init": 1.0, "drop_path": 0.3},  # S-like
        {"post_norm": True, "layer_scale_init": 1e-5, "drop_path": 0.5},  # B-like
        {"key_norm": True},
        {"qshift": False},  # ablation: no Q-Shift
        {"bidirectional": False},  # ablation: causal WKV
    ],
    ids=["pre", "post-ls1", "post-ls1e-5", "key_norm", "no_qshift", "causal"],
)
def test_variants_forward_backward(kw):
    cfg = tiny(**kw)
    model = VisionRWKV(cfg).train()
    assert n_params(model) == vrwkv_param_count(cfg)
    x = torch.randn(3, 1, 16, 16)
    feats, hw = model.forward_features(x)
    assert feats.shape == (3, 16, 32) and hw == (4, 4)
    logits = model.forward_head(feats)
    assert logits.shape == (3, 10)
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no drop path in eval


def test_block_signature_used_by_the_segmenter():
    block = VRWKVBlock(
        48, layer_id=1, n_layer=4, hidden_ratio=2.0, post_norm=False, layer_scale_init=1e-2,
        drop_path=0.1, key_norm=False,
    )  # fmt: skip
    x = torch.randn(2, 6 * 5, 48)
    y = block(x, (6, 5))
    assert y.shape == x.shape
    assert block.ffn.key.out_features == 96
    with pytest.raises(ValueError, match="hw"):
        block(x, (5, 5))
    with pytest.raises(ConfigError, match="layer_id"):
        VRWKVBlock(8, layer_id=4, n_layer=4)


def test_fancy_init():
    L, C = 12, 192
    first, last = VRWKVBlock(C, 0, L), VRWKVBlock(C, L - 1, L)
    for b in (first, last):
        d = b.att.spatial_decay
        assert d[0].item() == pytest.approx(-5) and d[-1].item() == pytest.approx(3)
        assert b.att.spatial_first[:3].tolist() == pytest.approx(
            [math.log(0.3) + z for z in (0, 0.5, -0.5)]
        )  # zigzag
    # mu_k = (i / C)^(1 - l / L); mu_v adds 0.3 l / (L - 1); mu_r = (i / C)^(0.5 (1 - l / L))
    i = torch.arange(C) / C
    assert torch.allclose(first.att.spatial_mix_k, i)
    assert torch.allclose(last.att.spatial_mix_v, i ** (1 / 12) + 0.3)
    assert torch.allclose(last.att.spatial_mix_r, i ** (0.5 / 12))
    w = first.att.key.weight
    assert w.abs().max() <= 0.04 and 0.015 < w.std() < 0.02  # trunc normal 0.02, cut at 2 std


def test_input_size_change_resizes_pos_embed():
    model = VisionRWKV(tiny()).eval()
    x = torch.randn(2, 1, 24, 32)  # 6 x 8 grid instead of 4 x 4
    feats, hw = model.forward_features(x)
    assert hw == (6, 8) and feats.shape == (2, 48, 32)
    assert model(x).shape == (2, 10)
    vit = ViT(matched_vit(tiny())).eval()
    assert vit(x).shape == (2, 10)
    with pytest.raises(InputError, match="expected images"):
        model(torch.randn(2, 3, 16, 16))


def test_vit_forward_backward():
    cfg = ViTConfig(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
    model = ViT(cfg)
    feats, hw = model.forward_features(torch.randn(2, 1, 16, 16))
    assert feats.shape == (2, 16, 32) and hw == (4, 4)
    model.forward_head(feats).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ConfigError, match="num_heads"):
        ViTConfig(embed_dim=30, num_heads=4)


def test_tiny_model_overfits_a_batch():
    torch.manual_seed(0)
    model = VisionRWKV(tiny())
    x = torch.randn(16, 1, 16, 16)
    y = torch.arange(16) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
