"""Residual Attention Network: shapes per preset, ARL/NAL/none, soft masks, gradients, sizes.

Parameter counts at these presets (this implementation; the paper's figures in brackets):
attention56 (1000 classes) 31,812,520 [31.9M]; attention92 52,470,696 [51.3M];
attention56 with attention="none" 24,853,160; small (10 classes, 1 channel) 122,058.
"""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.vision.ran import RANConfig, ResidualAttentionNet, count_parameters


def _check_masks(ms, trunk_shapes):
    """Shapes, and values strictly inside (0, 1). Checked in train mode: with untrained BN running
    statistics (eval mode) the fresh network's activations are large and the sigmoid saturates."""
    assert [tuple(m.shape) for m in ms] == trunk_shapes
    for m in ms:
        assert m.min() > 0 and m.max() < 1


@pytest.mark.parametrize("attention", ["arl", "nal", "none"])
def test_small_forward_backward(attention):
    model = ResidualAttentionNet(
        RANConfig.from_name("small", attention=attention, modules_per_stage=(1, 2, 1))
    )
    x = torch.randn(2, 1, 28, 28)
    logits, ms = model(x, masks=True)
    assert logits.shape == (2, 10)
    if attention == "none":
        assert ms == []
    else:
        _check_masks(ms, [(2, 16, 28, 28), (2, 32, 14, 14), (2, 32, 14, 14), (2, 64, 7, 7)])
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 7, 7)
    assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if attention != "none":
        assert model.attention_modules()[0].mask.head[-2].weight.grad.abs().sum() > 0


def test_small_at_32_and_arl_nal_differ():
    torch.manual_seed(0)
    arl = ResidualAttentionNet(RANConfig.from_name("small", in_chans=3))
    nal = ResidualAttentionNet(RANConfig.from_name("small", in_chans=3, attention="nal"))
    nal.load_state_dict(arl.state_dict())  # same weights, different combination
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, ms = arl(x, masks=True)
        n = nal(x)
    _check_masks(ms, [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)])
    assert a.shape == n.shape == (1, 10) and not torch.allclose(a, n)
    assert arl.attention_modules()[0].last_mask is not None
    arl(x)  # masks=False does not keep them
    assert arl.attention_modules()[0].last_mask is None


def test_attention56_at_224():
    model = ResidualAttentionNet("attention56")
    assert count_parameters(model) == 31_812_520  # paper: 31.9M
    with torch.no_grad():
        logits, ms = model(torch.randn(1, 3, 224, 224), masks=True)
    assert logits.shape == (1, 1000)
    _check_masks(ms, [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14)])


def test_attention92_small_input():
    cfg = RANConfig.from_name("attention92", num_classes=7)
    model = ResidualAttentionNet(cfg).eval()
    assert count_parameters(model) == 52_470_696 - 993 * 2049  # fc 2048 -> 7 instead of 1000
    with torch.no_grad():
        logits, ms = model(torch.randn(1, 3, 64, 64), masks=True)
    assert logits.shape == (1, 7) and len(ms) == 6
    assert [m.shape[-1] for m in ms] == [16, 8, 8, 4, 4, 4]


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown attention"):
        RANConfig(attention="spatial")
    with pytest.raises(ConfigError, match="equal length"):
        RANConfig(modules_per_stage=(1, 1))
    with pytest.raises(ConfigError, match="unknown RAN preset"):
        RANConfig.from_name("attention128")
    cfg = RANConfig.from_name("small")
    assert RANConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError):
        ResidualAttentionNet(cfg)(torch.randn(1, 3, 28, 28))
