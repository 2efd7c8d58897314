"""Parameter groups (membership, weight decay, multipliers), AdamW, the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwkvkit.errors import ConfigError
from rwkvkit.models.gpt import GPT, GPTConfig
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.training import build_optimizer, lm_loss, lr_schedule, official_init_, param_groups, set_lr

CONFIGS: dict[str, RWKVConfig] = {
    "4": RWKVConfig(version="4", n_layer=2, n_embd=32, vocab_size=97),
    "5.0": RWKVConfig(version="5.0", n_layer=2, n_embd=32, vocab_size=97, head_size=16, v5_log_bonus=True),
    "5.1": RWKVConfig(version="5.1", n_layer=2, n_embd=32, vocab_size=97, head_size=16),
    "5.2": RWKVConfig(version="5.2", n_layer=2, n_embd=32, vocab_size=97, head_size=16),
    "6": RWKVConfig(version="6", n_layer=2, n_embd=32, vocab_size=97, head_size=16, lora_mix=4, lora_decay=8),
    "7": RWKVConfig(version="7", n_layer=2, n_embd=32, vocab_size=97, head_size=16, lora_w=8, lora_a=8,
                    lora_v=4, lora_g=8),
}  # fmt: skip
VERSIONS = list(CONFIGS)

# the names with a multiplier other than 1, per version (official configure_optimizers, layerwise_lr on)
EXPECTED_SCALE = {
    "4": {"att.time_decay": 2.0, "att.time_first": 3.0},
    "5.0": {"att.time_decay": 2.0, "att.time_first": 3.0},
    "5.1": {"att.time_decay": 2.0},  # time_faaaa is 1x outside Pile stage 2
    "5.2": {"att.time_decay": 2.0},
    "6": {"att.time_decay": 2.0},  # not time_decay_w1 / _w2: the _w1/_w2 rule comes first
    "7": {"att.w0": 2.0},
}


def by_name(groups: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for g in groups:
        for n in g["param_names"]:
            assert n not in out, f"{n} is in two groups"
            out[n] = g
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_every_trainable_parameter_in_exactly_one_group(version):
    model = RWKV(CONFIGS[version])
    groups = param_groups(model, weight_decay=0.1, lr=1e-3)
    where = by_name(groups)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(where) == trainable
    for g in groups:
        assert len(g["params"]) == len(g["param_names"]) > 0
        assert set(g) >= {"name", "params", "param_names", "lr", "lr_scale", "weight_decay"}
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    # tensors match their names
    params = dict(model.named_parameters())
    for g in groups:
        for n, p in zip(g["param_names"], g["params"]):
            assert p is params[n]


def test_frozen_parameters_are_left_out():
    model = RWKV(CONFIGS["7"])
    model.blocks[0].att.v1.requires_grad_(False)
    where = by_name(param_groups(model, 0.1, 1e-3))
    assert "blocks.0.att.v1" not in where and "blocks.1.att.v1" in where


@pytest.mark.parametrize("version", VERSIONS)
def test_weight_decay_exactly_on_matrix_weights(version):
    model = RWKV(CONFIGS[version])
    where = by_name(param_groups(model, weight_decay=0.1, lr=1e-3))
    decayed = {n for n, g in where.items() if g["weight_decay"] > 0}
    expected = {n for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() >= 2}
    assert decayed == expected
    assert {"emb.weight", "head.weight", "blocks.0.att.key.weight"} <= decayed
    assert all(where[n]["weight_decay"] == 0.1 for n in decayed)
    # e.g. LoRA factors (2-D, not named .weight), LayerNorm gains (1-D) are not decayed
    not_decayed = set(where) - decayed
    assert "blocks.0.ln1.weight" in not_decayed and "blocks.0.att.ln_x.weight" not in decayed
    if version == "7":
        assert {"blocks.1.att.w1", "blocks.1.att.r_k"} <= not_decayed
    if version == "6":
        assert {"blocks.1.att.time_maa_w2", "blocks.1.att.time_decay_w1"} <= not_decayed


def test_zero_weight_decay_has_no_decay_group():
    groups = param_groups(RWKV(CONFIGS["7"]), weight_decay=0.0, lr=1e-3)
    assert [g["name"] for g in groups] == ["no_decay", "lr_2x"]
    assert all(g["weight_decay"] == 0.0 for g in groups)


@pytest.mark.parametrize("version", VERSIONS)
def test_learning_rate_multipliers(version):
    model = RWKV(CONFIGS[version])
    where = by_name(param_groups(model, weight_decay=0.1, lr=1e-3))
    for name, g in where.items():
        suffix = ".".join(name.split(".")[2:]) if name.startswith("blocks.") else name
        assert g["lr_scale"] == EXPECTED_SCALE[version].get(suffix, 1.0), name
    assert sum(g["lr_scale"] != 1.0 for g in where.values()) == 2 * len(EXPECTED_SCALE[version])


def test_layerwise_lr_off_keeps_v7_w0_rule():
    where6 = by_name(param_groups(RWKV(CONFIGS["6"]), 0.1, 1e-3, layerwise_lr=False))
    assert all(g["lr_scale"] == 1.0 for g in where6.values())
    where7 = by_name(param_groups(RWKV(CONFIGS["7"]), 0.1, 1e-3, layerwise_lr=False))
    assert where7["blocks.0.att.w0"]["lr_scale"] == 2.0


def test_wrapped_models_keep_their_multipliers():
    """DDP (``.module``) and torch.compile (``._orig_mod``) prefixes do not hide the version."""

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel / torch.compile's wrapper
        def __init__(self, inner: torch.nn.Module, attr: str) -> None:
            super().__init__()
            setattr(self, attr, inner)

    where = by_name(param_groups(Wrapper(RWKV(CONFIGS["7"]), "module"), 0.1, 1e-3))
    assert where["module.blocks.0.att.w0"]["lr_scale"] == 2.0
    assert where["module.head.weight"]["weight_decay"] == 0.1
    where = by_name(param_groups(Wrapper(RWKV(CONFIGS["6"]), "_orig_mod"), 0.1, 1e-3))
    assert where["_orig_mod.blocks.1.att.time_decay"]["lr_scale"] == 2.0


def test_gpt_gets_the_weight_decay_rule_and_no_multipliers():
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=50, block_size=16, bias=True,
                          tie_embeddings=True))  # fmt: skip
    where = by_name(param_groups(model, 0.1, 1e-3))
    assert set(where) == {n for n, _ in model.named_parameters()}  # the tied head once, as wte
    decayed = {n for n, g in where.items() if g["weight_decay"] > 0}
    assert decayed == {n for n, p in model.named_parameters() if p.dim() == 2}
    assert all(g["lr_scale"] == 1.0 for g in where.values())


def test_build_optimizer_and_set_lr():
    model = official_init_(RWKV(CONFIGS["7"]), seed=0)
    model.blocks[1].att.v1.requires_grad_(False)  # used by the forward, but frozen: not optimised
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["eps"] == 1e-8
    names = {g["name"]: g for g in opt.param_groups}
    assert names["lr_2x"]["lr"] == pytest.approx(2e-3) and names["decay"]["weight_decay"] == 0.1
    set_lr(opt, 5e-4)
    assert names["lr_2x"]["lr"] == pytest.approx(1e-3) and names["no_decay"]["lr"] == pytest.approx(5e-4)
    # one step runs and moves only trainable parameters
    tokens = torch.randint(0, 97, (2, 9))
    logits, _ = model(tokens[:, :-1])
    lm_loss(logits, tokens[:, 1:]).backward()
    head = model.head.weight.detach().clone()
    frozen = model.blocks[1].att.v1.detach().clone()
    opt.step()
    assert not torch.equal(head, model.head.weight)
    assert torch.equal(frozen, model.blocks[1].att.v1)


# ---- schedule -----------------------------------------------------------------------------------

KW = dict(lr=1e-3, lr_final=1e-4, warmup_steps=10, total_steps=110)


@pytest.mark.parametrize("kind", ["cosine", "exponential", "constant"])
def test_schedule_warmup(kind):
    assert lr_schedule(0, kind=kind, **KW) == pytest.approx(1e-5)  # warmup_init 0.01 x lr
    assert lr_schedule(5, kind=kind, **KW) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_schedule(10, kind=kind, **KW) == pytest.approx(1e-3)
    assert lr_schedule(0, kind=kind, warmup_init=0.0, **KW) == 0.0
    assert lr_schedule(0, kind=kind, warmup_init=0.1, **KW) == pytest.approx(1e-4)


def test_schedule_values_at_key_steps():
    # cosine: half way (step 60) is the mean of lr and lr_final
    assert lr_schedule(60, **KW) == pytest.approx(5.5e-4)
    assert lr_schedule(110, **KW) == pytest.approx(1e-4)
    assert lr_schedule(500, **KW) == pytest.approx(1e-4)
    # exponential: half way is the geometric mean
    assert lr_schedule(60, kind="exponential", **KW) == pytest.approx(math.sqrt(1e-3 * 1e-4))
    assert lr_schedule(110, kind="exponential", **KW) == pytest.approx(1e-4)
    assert lr_schedule(35, kind="exponential", **KW) == pytest.approx(1e-3 * 0.1**0.25)
    assert lr_schedule(500, kind="constant", **KW) == pytest.approx(1e-3)
    # no warm-up at all
    assert lr_schedule(0, lr=1.0, lr_final=0.0, warmup_steps=0, total_steps=4) == pytest.approx(1.0)
    assert lr_schedule(2, lr=1.0, lr_final=0.0, warmup_steps=0, total_steps=4) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["cosine", "exponential", "constant"])
def test_schedule_monotone(kind):
    values = [lr_schedule(s, kind=kind, **KW) for s in range(130)]
    up, down = values[:11], values[10:]
    assert all(a < b for a, b in zip(up, up[1:]))
    assert all(a >= b for a, b in zip(down, down[1:]))
    if kind != "constant":
        assert all(a > b for a, b in zip(down[:100], down[1:101]))  # strictly while decaying


def test_schedule_errors():
    with pytest.raises(ConfigError):
        lr_schedule(0, kind="linear", **KW)
    with pytest.raises(ConfigError):
        lr_schedule(0, lr=1e-3, lr_final=0.0, warmup_steps=1, total_steps=5, kind="exponential")
    with pytest.raises(ConfigError):
        lr_schedule(0, lr=1e-3, lr_final=1e-4, warmup_steps=10, total_steps=5)


def test_schedule_warmup_counting_the_current_step():
    # the vision / time-series warm-up: step s takes lr (s + 1) / warmup_steps, the last one lr itself
    kw = dict(lr=1.0, lr_final=0.0, warmup_steps=4, total_steps=12, warmup_init=0.0, warmup_counts_step=True)
    assert [lr_schedule(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_schedule(4, **kw) == 1.0 and lr_schedule(8, **kw) == pytest.approx(0.5)
    assert lr_schedule(0, **{**kw, "warmup_counts_step": False}) == 0.0


# The vision and time-series trainers' own schedules before they used lr_schedule (frozen copies).
def _old_vision_lr(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _old_timeseries_lr(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * ((step + 1) / warmup)
    return lr * (0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


@pytest.mark.parametrize("total,warmup", [(100, 10), (9380, 938), (40, 0), (7, 12)])
def test_vision_schedule_is_the_one_it_replaced(total, warmup):
    from rwkvkit.vision.train import lr_at

    for peak in (1e-3, 3e-3):
        for s in range(total):
            new, old = lr_at(s, total, warmup, peak), _old_vision_lr(s, total, warmup, peak)
            # the same curve; only float64 rounding order differs (<= 1e-15 relative), and AdamW
            # applies the rate in float32, where the two sequences are equal
            assert new == pytest.approx(old, rel=1e-15, abs=0) and np.float32(new) == np.float32(old)


@pytest.mark.parametrize("total", [26, 260, 2500, 10000])
def test_timeseries_schedule_is_the_one_it_replaced(total):
    warmup = min(100, total // 10)  # timeseries.train.fit's warm-up
    for s in range(total):
        new = lr_schedule(s, lr=1e-3, lr_final=0.0, warmup_steps=warmup, total_steps=total, warmup_init=0.0,
                          warmup_counts_step=True)  # fmt: skip
        old = _old_timeseries_lr(s, total, warmup, 1e-3)
        # cos(pi s / n) and cos(pi (s / n)) round differently; near the end of the cosine, where the
        # rate is a small difference 1 + cos(...), that is up to ~1e-12 relative (float32: equal)
        assert new == pytest.approx(old, rel=1e-12, abs=0) and np.float32(new) == np.float32(old)


def test_param_groups_with_another_weight_decay_rule():
    model = RWKV(CONFIGS["6"])
    rule = lambda name, p: p.dim() >= 2  # noqa: E731  (the time-series trainer's rule)
    where = by_name(param_groups(model, 0.1, 1e-3, decayed=rule))
    decayed = {n for n, g in where.items() if g["weight_decay"] > 0}
    multiplied = {n for n, g in where.items() if g["lr_scale"] != 1.0}
    expected = {n for n, p in model.named_parameters() if p.dim() >= 2} - multiplied
    assert decayed == expected and "blocks.0.att.time_maa_w1" in decayed  # a LoRA factor: not by default
    assert multiplied == {f"blocks.{i}.att.time_decay" for i in range(2)}  # multipliers unchanged
