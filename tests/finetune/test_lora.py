"""LoRA and PiSSA on RWKV-4..7 (rwkvkit.finetune.lora), with peft as the oracle of the init and forward.

Tiny random models (tests/models/configs.py): a fresh LoRA leaves every version's logits bitwise
unchanged; gradients reach the factors only; PiSSA's start equals the base within fp32 rounding and
its factors are peft's; merged logits equal unmerged ones after training.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rwkvkit
from rwkvkit.errors import ConfigError
from rwkvkit.finetune import LoRALinear, apply_lora, find_targets, lora_modules, lora_parameters, merge_lora
from rwkvkit.formats import save as save_weights
from rwkvkit.inference.auto import fast_view
from rwkvkit.models.rwkv.init import random_model
from rwkvkit.optim import param_groups
from tests.models.configs import ONE_PER_VERSION

V7 = ONE_PER_VERSION["v7"]


def tokens(cfg, B=2, T=24, seed=0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def train_steps(model, cfg, steps=3, lr=1e-2, seed=1) -> None:
    """A few AdamW steps on random next-token data (every trainable parameter moves)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for i in range(steps):
        x = tokens(cfg, seed=seed + i)
        logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ---- LoRA on every version ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(ONE_PER_VERSION))
def test_fresh_lora_is_bitwise_the_base_model(version):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=1)
    x = tokens(cfg)
    ref, ref_state = model(x)
    names = apply_lora(model, r=4, alpha=8)
    out, state = model(x)
    assert torch.equal(out, ref)
    assert all(torch.equal(state[n], ref_state[n]) for n in ("att_shift", "wkv", "ffn_shift"))
    # the default: every projection of the time and channel mixes, never emb or head
    linears = [n for n, m in random_model(cfg).named_modules() if type(m) is nn.Linear]
    assert names == [n for n in linears if ".att." in n or ".ffn." in n] and "head" not in names
    assert len(names) == cfg.n_layer * len({n.split(".", 2)[2] for n in names})


@pytest.mark.parametrize("version", ["v4", "v5.2", "v6", "v7"])
def test_gradients_reach_only_the_lora_factors(version):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=2).train()
    apply_lora(model, r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    x = tokens(cfg)
    logits, _ = model(x)
    logits.square().mean().backward()
    for n, p in model.named_parameters():
        if n.endswith(".lora_B"):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        elif not n.endswith(".lora_A"):  # A's gradient is B^T (...) = 0 while B = 0
            assert p.grad is None, n
    # the trainer's optimiser groups hold exactly the factors
    grouped = [n for g in param_groups(model, 0.01, 1e-3) for n in g["param_names"]]
    assert sorted(grouped) == sorted(trainable)


@pytest.mark.parametrize("version", sorted(ONE_PER_VERSION))
def test_pissa_start_equals_the_base_model(version):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=3)
    x = tokens(cfg)
    ref, _ = model(x)
    apply_lora(model, r=8, alpha=16, init="pissa")
    out, _ = model(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)  # fp32 rounding of W_res + s B A
    m = next(m for _, m in lora_modules(model))
    assert m.lora_A0 is not None and torch.equal(m.lora_A0, m.lora_A) and m.init == "pissa"


@pytest.mark.parametrize("init", ["lora", "pissa", "pissa_niter_2"])
@pytest.mark.parametrize("version", ["v4", "v5.2", "v6", "v7"])
def test_merged_equals_unmerged_after_training(version, init):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=4)
    apply_lora(model, r=4, alpha=8, init=init)
    train_steps(model, cfg)
    x = tokens(cfg, seed=9)
    with torch.no_grad():
        unmerged, _ = model(x)
        merged_names = merge_lora(model)
        merged, _ = model(x)
    assert merged_names and not any(lora_modules(model))
    assert not torch.equal(unmerged, random_model(cfg, seed=4)(x)[0])  # training changed something
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert set(model.state_dict()) == set(random_model(cfg).state_dict())  # a plain RWKV again


def test_merged_model_saves_and_loads_as_a_plain_rwkv(tmp_path):
    model = random_model(V7, seed=5)
    apply_lora(model, r=4, init="pissa")
    train_steps(model, V7)
    merge_lora(model)
    x = tokens(V7)
    with torch.no_grad():
        want, _ = model(x)
    for fmt, name in (("rwkvkit", "m.safetensors"), ("blinkdl", "m.pth")):
        save_weights(model, tmp_path / name, format=fmt)
        with torch.no_grad():
            got, _ = rwkvkit.load(tmp_path / name)(x)
        assert torch.equal(got, want), fmt


def test_lora_factors_start_as_peft_and_microsoft_lora():
    """B = 0; A Kaiming-uniform with a = sqrt(5) (bound 1/sqrt(in)); seeded, not the global RNG."""
    model = random_model(V7, seed=0)
    torch.manual_seed(123)
    before = torch.rand(3)
    apply_lora(model, r=8, seed=7)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)  # the global generator was not used
    As = []
    for _, m in lora_modules(model):
        assert torch.equal(m.lora_B, torch.zeros_like(m.lora_B)) and m.scaling == 2.0
        bound = 1 / math.sqrt(m.in_features)
        assert m.lora_A.abs().max() <= bound and m.lora_A.abs().max() > 0.9 * bound
        As.append(m.lora_A.detach().clone())
    again = random_model(V7, seed=0)
    apply_lora(again, r=8, seed=7)
    assert all(torch.equal(a, m.lora_A) for a, (_, m) in zip(As, lora_modules(again)))
    other = random_model(V7, seed=0)
    apply_lora(other, r=8, seed=8)
    assert not torch.equal(As[0], next(lora_modules(other))[1].lora_A)


# ---- peft as the oracle --------------------------------------------------------------------------------


class _One(nn.Module):
    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.proj.weight.copy_(w)
            if bias is not None:
                self.proj.bias.copy_(bias)


def _peft(w, r, alpha, init, bias=None):
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], init_lora_weights=init)
    layer = peft.inject_adapter_in_model(cfg, _One(w, bias)).proj
    return layer, layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.base_layer.weight


def _spectrum_matrix(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    """A weight with a decaying spectrum (as trained weights have), so the top-r subspace is clear."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out_f, out_f, generator=g))
    Vt, _ = torch.linalg.qr(torch.randn(in_f, in_f, generator=g))
    k = min(out_f, in_f)
    S = 2.0 ** (-torch.arange(k, dtype=torch.float32) / 4)
    return U[:, :k] @ torch.diag(S) @ Vt[:k]


@pytest.mark.parametrize("r, alpha", [(4, 8), (8, 4), (3, 3)])
def test_pissa_init_matches_peft(r, alpha):
    w = _spectrum_matrix(48, 80)
    _, pA, pB, pW = _peft(w, r, alpha, "pissa")
    m = LoRALinear(_One(w).proj, r, alpha)
    m.pissa_()
    assert torch.equal(m.lora_A, pA) and torch.equal(m.lora_B, pB)
    assert torch.equal(m.weight, pW)  # the residual, in peft's order of operations


def test_pissa_niter_matches_peft(monkeypatch):
    """pissa_niter_N: torch.svd_lowrank(W, q=r, niter=N), as peft calls it; the random start is the
    only freedom, so both draw it from the same seed here."""
    peft_layer = pytest.importorskip("peft.tuners.lora.layer")
    real = torch.svd_lowrank

    def seeded(*args, **kwargs):
        torch.manual_seed(11)
        return real(*args, **kwargs)

    monkeypatch.setattr(peft_layer, "svd_lowrank", seeded)
    w = _spectrum_matrix(64, 40, seed=1)
    _, pA, pB, pW = _peft(w, 6, 12, "pissa_niter_3")
    m = LoRALinear(_One(w).proj, 6, 12)
    m.pissa_(niter=3, seed=11)
    assert torch.equal(m.lora_A, pA) and torch.equal(m.lora_B, pB) and torch.equal(m.weight, pW)
    full = LoRALinear(_One(w).proj, 6, 12)
    full.pissa_()  # the best rank-6 split; the randomised one (q = r, no oversampling) comes close
    best, ours = torch.linalg.norm(full.weight), torch.linalg.norm(m.weight)
    assert best <= ours <= 1.05 * best


@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_gradients_match_peft(bias):
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(40, 56, generator=g), torch.randn(40, generator=g) if bias else None
    player, pA, pB, _ = _peft(w, 4, 8, True, b)
    m = LoRALinear(_One(w, b).proj, 4, 8)
    with torch.no_grad():
        for t in (pA, pB):
            t.copy_(torch.randn(t.shape, generator=g))
        m.lora_A.copy_(pA)
        m.lora_B.copy_(pB)
    x = torch.randn(3, 7, 56, generator=g)
    ours, theirs = m(x), player(x)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    torch.testing.assert_close(m.lora_A.grad, pA.grad, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(m.lora_B.grad, pB.grad, atol=1e-5, rtol=1e-6)
    # merged weights: peft's merge_and_unload against LoRALinear.to_linear
    torch.testing.assert_close(m.to_linear().weight, w + player.get_delta_weight("default"), atol=0, rtol=0)


# ---- precision, dropout, int8 -------------------------------------------------------------------------


def test_bf16_autocast_and_a_bf16_base():
    x = tokens(V7)
    model = random_model(V7, seed=6)
    with torch.no_grad():
        ref, _ = model(x)
    apply_lora(model, r=4, init="pissa")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(x)
    out.float().square().mean().backward()
    m = next(m for _, m in lora_modules(model))
    assert m.lora_A.grad.dtype == torch.float32 and m.lora_B.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), ref, atol=0.15, rtol=0.05)  # bf16 products
    # a bf16 model: the factors are kept in fp32, the output is the model's dtype
    half = random_model(V7, seed=6, dtype=torch.bfloat16)
    with torch.no_grad():
        ref16, _ = half(x)
    apply_lora(half, r=4)
    m = next(m for _, m in lora_modules(half))
    assert m.weight.dtype == torch.bfloat16 and m.lora_A.dtype == torch.float32
    with torch.no_grad():
        out16, _ = half(x)
    assert torch.equal(out16, ref16)


def test_dropout_applies_in_training_only():
    lin = nn.Linear(32, 16, bias=False)
    m = LoRALinear(lin, r=4, alpha=8, dropout=0.5)
    with torch.no_grad():
        m.lora_B.normal_()
    x = torch.randn(64, 32)
    m.eval()
    clean = m(x)
    torch.testing.assert_close(clean, lin(x) + 2.0 * (x @ m.lora_A.T @ m.lora_B.T))
    m.train()
    assert not torch.allclose(m(x), clean)


def test_int8_frozen_weights():
    """QLoRA-style: the frozen weights as int8 with a scale per row, the factors trainable in fp32."""
    model = random_model(V7, seed=7)
    x = tokens(V7)
    with torch.no_grad():
        ref, _ = model(x)
    names = apply_lora(model, r=4, quantize="int8")
    sd = model.state_dict()
    assert f"{names[0]}.weight_int8" in sd and f"{names[0]}.weight" not in sd
    assert sd[f"{names[0]}.weight_int8"].dtype == torch.int8
    with torch.no_grad():
        out, _ = model(x)
    assert (out - ref).norm() / ref.norm() < 0.02  # int8 rounding of the projections
    # the int8 product's own backward (it keeps int8, not a dequantized copy) equals autograd's
    m = next(m for _, m in lora_modules(model))
    h = torch.randn(3, 5, m.in_features, requires_grad=True)
    m(h).square().sum().backward()
    h2 = h.detach().clone().requires_grad_(True)
    plain = (
        F.linear(h2, m.base_weight(torch.float32)) + F.linear(F.linear(h2, m.lora_A), m.lora_B) * m.scaling
    )
    plain.square().sum().backward()
    torch.testing.assert_close(h.grad, h2.grad, atol=1e-5, rtol=1e-5)
    m.lora_A.grad = m.lora_B.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = m(h)
    assert y16.dtype == torch.bfloat16
    y16.float().sum().backward()
    assert m.lora_B.grad.dtype == torch.float32
    train_steps(model, V7)
    with torch.no_grad():
        unmerged, _ = model(x)
        merge_lora(model)
        merged, _ = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)


def test_generation_runs_an_unmerged_adapter_as_it_is(monkeypatch):
    """The fast CPU twin packs plain projections only: a model with LoRA modules is run as it is."""
    model = random_model(V7.replace(vocab_size=256), seed=8)
    apply_lora(model, r=4)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_()
    tok = rwkvkit.load_tokenizer("bytes")
    monkeypatch.setenv("RWKVKIT_FAST", "1")
    assert fast_view(model) is model
    fast = rwkvkit.generate(model, tok, "abc", max_new_tokens=8, temperature=0)
    monkeypatch.setenv("RWKVKIT_FAST", "0")
    assert rwkvkit.generate(model, tok, "abc", max_new_tokens=8, temperature=0) == fast


# ---- choosing the modules, bad options -------------------------------------------------------------------


def test_target_patterns():
    model = random_model(V7)
    assert find_targets(model, "att.key") == ["blocks.0.att.key", "blocks.1.att.key"]
    assert find_targets(model, ["blocks.1.ffn"]) == ["blocks.1.ffn.key", "blocks.1.ffn.value"]
    assert find_targets(model, ["blocks.*.att.[ko]*"]) == [
        "blocks.0.att.key", "blocks.0.att.output", "blocks.1.att.key", "blocks.1.att.output",
    ]  # fmt: skip
    assert find_targets(model, "key") == ["blocks.0.att.key", "blocks.0.ffn.key", "blocks.1.att.key",
                                          "blocks.1.ffn.key"]  # fmt: skip
    assert find_targets(model, "head") == ["head"]  # only when asked for
    with pytest.raises(ConfigError, match=r"'att\.gate' matches no nn\.Linear.*att\.receptance.*head"):
        find_targets(model, ["att.key", "att.gate"])
    with pytest.raises(ConfigError, match="matches no nn.Linear"):
        find_targets(model, "ln_x")  # a module, but not a linear one
    apply_lora(model, r=2, targets="att.key")
    with pytest.raises(ConfigError, match="already carry LoRA"):
        apply_lora(model, r=2, targets="att.key")
    assert len(lora_parameters(model)) == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [({"r": 0}, "rank"), ({"alpha": -1}, "alpha"), ({"dropout": 1.0}, "dropout"),
     ({"init": "svd"}, "unknown LoRA init"), ({"init": "pissa_niter_0"}, "unknown LoRA init"),
     ({"targets": []}, "non-empty"), ({"quantize": "int4"}, "quantize")],
)  # fmt: skip
def test_bad_options_are_config_errors(kwargs, match):
    model = random_model(V7)
    with pytest.raises(ConfigError, match=match):
        apply_lora(model, **kwargs)
    assert not any(lora_modules(model)) and all(p.requires_grad for n, p in model.named_parameters()
                                                 if not n.startswith("blocks.0.att.v"))  # fmt: skip
