"""Adapter files (rwkvkit.finetune.adapter): only the LoRA tensors, a fingerprint of the base model,
and a round trip that gives the fine-tuned model back (LoRA and PiSSA)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from rwkvkit.errors import CheckpointError, ConfigError
from rwkvkit.finetune import apply_lora, load_adapter, lora_modules, merge_lora, read_adapter, save_adapter
from rwkvkit.models.rwkv.init import random_model
from tests.finetune.test_lora import tokens, train_steps
from tests.models.configs import ONE_PER_VERSION

V7 = ONE_PER_VERSION["v7"]


def tuned(cfg, init="lora", seed=1, **kwargs):
    model = random_model(cfg, seed=seed)
    apply_lora(model, r=4, alpha=8, init=init, **kwargs)
    train_steps(model, cfg)
    return model


@pytest.mark.parametrize("init", ["lora", "pissa", "pissa_niter_2"])
@pytest.mark.parametrize("version", ["v5.2", "v7"])
def test_round_trip_gives_the_fine_tuned_model(tmp_path, version, init):
    cfg = ONE_PER_VERSION[version]
    model = tuned(cfg, init, targets=["att", "ffn.key"])
    path = save_adapter(model, tmp_path / "a.safetensors", base="random seed 1")
    x = tokens(cfg, seed=5)
    with torch.no_grad():
        want, _ = model(x)
    fresh = random_model(cfg, seed=1)  # the original base
    names = load_adapter(fresh, path)
    assert names == [n for n, _ in lora_modules(model)]
    with torch.no_grad():
        got, _ = fresh(x)
    assert torch.equal(got, want)  # PiSSA: the residual recomputed bit for bit from A0, B0
    assert fresh.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    # only the adapter's tensors are in the file, and what it says about itself
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    per_module = 4 if init != "lora" else 2
    assert len(keys) == per_module * len(names) and all(".lora_" in k for k in keys)
    _, info = read_adapter(path)
    assert (info["init"], info["r"], info["alpha"], info["dropout"]) == (init, 4, 8.0, 0.0)
    assert info["targets"] == ["att", "ffn.key"] and info["base_name"] == "random seed 1"
    fp = json.loads(meta["base"])
    assert (fp["version"], fp["n_layer"], fp["n_embd"], fp["vocab_size"]) == (
        cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size
    )  # fmt: skip
    assert fp["shapes"]["blocks.0.ffn.key"] == [cfg.dim_ffn, cfg.n_embd]
    # the loaded adapter trains on and merges like the original
    train_steps(fresh, cfg)
    merge_lora(fresh)


def test_adapter_on_a_bf16_copy_of_the_base(tmp_path):
    """The fingerprint is of the weights rounded to bf16: a base loaded in bf16 is the same base."""
    path = save_adapter(tuned(V7), tmp_path / "a.safetensors")
    half = random_model(V7, seed=1, dtype=torch.bfloat16)
    load_adapter(half, path)
    m = next(m for _, m in lora_modules(half))
    assert m.weight.dtype == torch.bfloat16 and m.lora_A.dtype == torch.float32


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_an_adapter_for_another_shape_is_refused(tmp_path):
    path = save_adapter(tuned(V7), tmp_path / "a.safetensors")
    other = {
        "n_embd": (
            V7.replace(n_embd=192, dim_att=0, dim_ffn=0),
            "n_embd = 128, but this model has n_embd = 192",
        ),
        "n_layer": (V7.replace(n_layer=3), "n_layer = 2, but this model has n_layer = 3"),
        "vocab_size": (V7.replace(vocab_size=300), "vocab_size"),
        "dim_ffn": (V7.replace(dim_ffn=256), r"blocks\.0\.ffn\.key is \[out, in\] = \[512, 128\]"),
        "version": (
            ONE_PER_VERSION["v6"].replace(n_embd=128, dim_att=0, dim_ffn=0, vocab_size=1001),
            "version",
        ),
    }
    for what, (cfg, match) in other.items():
        model = random_model(cfg, seed=1)
        with pytest.raises(CheckpointError, match=match) as err:
            load_adapter(model, path)
        _one_line(err)
        assert not any(lora_modules(model)), what


def test_an_adapter_for_other_weights_is_refused_unless_asked(tmp_path):
    path = save_adapter(tuned(V7), tmp_path / "a.safetensors", base="base-A.pth")
    other = random_model(V7, seed=2)  # same shapes, other weights
    with pytest.raises(CheckpointError, match=r"other weights.*base-A\.pth.*check_base=False") as err:
        load_adapter(other, path)
    _one_line(err)
    assert load_adapter(other, path, check_base=False)


def test_damaged_and_wrong_files(tmp_path):
    model = tuned(V7)
    path = save_adapter(model, tmp_path / "a.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the last tensor
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_adapter(random_model(V7, seed=1), bad)
    _one_line(err)
    with pytest.raises(CheckpointError, match="not found"):
        load_adapter(random_model(V7, seed=1), tmp_path / "missing.safetensors")
    model.initial_state(1).save(tmp_path / "state.safetensors")  # an rwkvkit file, not an adapter
    with pytest.raises(CheckpointError, match="not an rwkvkit adapter"):
        load_adapter(random_model(V7, seed=1), tmp_path / "state.safetensors")
    with pytest.raises(ConfigError, match="already carries a LoRA adapter"):
        load_adapter(model, path)
    with pytest.raises(ConfigError, match="no LoRA modules"):
        save_adapter(random_model(V7), tmp_path / "none.safetensors")
