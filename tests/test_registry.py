"""The model registry: every family builds by name, unknown names fail with the known ones listed,
the table agrees with the configs' presets, and importing it imports no application."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch.nn as nn

from rwkvkit import registry
from rwkvkit.errors import ConfigError
from rwkvkit.training.config import TrainConfig

# the smallest arguments each builder takes
SMALL = {
    "rwkv": ((TrainConfig(n_layer=1, n_embd=32, head_size=16, ctx_len=16), 64), {}),
    "gpt": ((TrainConfig(arch="gpt", n_layer=1, n_embd=32, head_size=16, ctx_len=16), 64), {}),
    "vrwkv": (("t",), {"embed_dim": 32, "depth": 1, "img_size": 28, "patch_size": 7, "in_chans": 1}),
    "vit": (("t",), {"embed_dim": 24, "depth": 1, "img_size": 28, "patch_size": 7, "in_chans": 1}),
    "ran": (("small",), {"in_chans": 1}),
    "sam": (("tiny",), {"n_blocks": 1}),
    "rimer": ((), {"lookback": 32, "seed": 0, "d_model": 16, "n_layers": 1, "patch_len": 8, "head_size": 16}),
    "timer": ((), {"lookback": 32, "seed": 0, "d_model": 16, "n_layers": 1, "patch_len": 8, "n_heads": 2}),
    "dlinear": ((), {"lookback": 32, "horizon": 8}),
    "naive": ((), {"lookback": 32, "horizon": 8, "period": 12}),
}
CLASSES = {"rwkv": "RWKV", "gpt": "GPT", "vrwkv": "VisionRWKV", "vit": "ViT", "ran": "ResidualAttentionNet",
           "sam": "PromptableSegmenter", "rimer": "Rimer", "timer": "Timer", "dlinear": "DLinear",
           "naive": "SeasonalNaive"}  # fmt: skip


def test_the_table():
    assert registry.names() == list(SMALL)
    assert registry.names("language") == ["rwkv", "gpt"]
    assert registry.names("vision") == ["vrwkv", "vit", "ran", "sam"]
    assert registry.names("timeseries") == ["rimer", "timer", "dlinear", "naive"]
    assert {f.domain for f in registry.FAMILIES.values()} == set(registry.DOMAINS)
    assert (
        registry.preset_names("vision")
        == "vrwkv-t|s|b, vit-t|s|b, ran-small|attention56|attention92, sam-tiny|small"
    )


@pytest.mark.parametrize("name", list(SMALL))
def test_every_family_builds_by_name(name):
    args, kwargs = SMALL[name]
    model = registry.build_model(name, *args, domain=registry.family(name).domain, **kwargs)
    assert isinstance(model, nn.Module) and type(model).__name__ == CLASSES[name]


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'.*vision: vrwkv, vit, ran, sam"):
        registry.build_model("resnet")
    with pytest.raises(ConfigError, match=r"unknown vision model 'rimer' \(rimer is a timeseries model\)"):
        registry.builder("rimer", "vision")
    with pytest.raises(ConfigError, match="unknown model domain 'audio'"):
        registry.names("audio")


def test_presets_match_the_configs():
    from rwkvkit.vision import ran, vit, vrwkv
    from rwkvkit.vision.sam import SegmenterConfig

    table = {f.name: f.presets for f in registry.FAMILIES.values()}
    assert table["vrwkv"] == tuple(k.lower() for k in vrwkv.PRESETS)
    assert table["vit"] == tuple(k.lower() for k in vit.PRESETS)
    assert set(table["ran"]) == set(ran.PRESETS)
    for name in table["sam"]:
        SegmenterConfig.preset(name)
    with pytest.raises((ConfigError, KeyError, ValueError)):
        SegmenterConfig.preset("huge")
    assert all(not f.presets for f in registry.FAMILIES.values() if f.domain != "vision")


def test_importing_the_registry_imports_no_model_or_application():
    code = (
        "import sys, rwkvkit.registry as r; r.names(); r.preset_names('vision'); "
        "print(sorted(m for m in sys.modules if m.startswith(('rwkvkit.', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['rwkvkit.errors', 'rwkvkit.registry']"
