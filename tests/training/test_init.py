"""official_init_: the docs/init.md formulas, zeros, orthogonal gains, determinism, step-0 loss."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.training import lm_loss, official_init_

# Small models; L = 3 so that r01 takes the values 0, 0.5, 1. V > C everywhere (the head's gain rule).
CONFIGS: dict[str, RWKVConfig] = {
    "4": RWKVConfig(version="4", n_layer=3, n_embd=64, vocab_size=301),
    "5.0": RWKVConfig(version="5.0", n_layer=3, n_embd=64, vocab_size=301, head_size=16, v5_log_bonus=True),
    "5.1": RWKVConfig(version="5.1", n_layer=3, n_embd=64, vocab_size=301, head_size=16),
    "5.2": RWKVConfig(version="5.2", n_layer=3, n_embd=64, vocab_size=301, head_size=16),
    "6": RWKVConfig(version="6", n_layer=3, n_embd=64, vocab_size=301, head_size=16, lora_mix=8,
                    lora_decay=12),
    "7": RWKVConfig(version="7", n_layer=3, n_embd=64, vocab_size=301, head_size=16, lora_w=8, lora_a=12,
                    lora_v=8, lora_g=16),
}  # fmt: skip
VERSIONS = list(CONFIGS)
LAYERS = (0, 1, 2)
CHANNELS = (0, 1, 2, 17, 40, 63)
# formulas evaluated in fp64 and rounded once to fp32: tolerance of a few fp32 ulps of values <= 8
ATOL = 1e-6


def init(version: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> RWKV:
    return official_init_(RWKV(CONFIGS[version], dtype=dtype), seed=seed)


def params(model: RWKV) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def ratios(layer: int, L: int = 3) -> tuple[float, float]:
    return layer / (L - 1), 1 - layer / L  # r01, r1a0


def check(p: dict[str, torch.Tensor], name: str, index: int, expected: float) -> None:
    got = p[name].detach().reshape(-1)[index].item()
    assert abs(got - expected) <= ATOL * max(1.0, abs(expected)), f"{name}[{index}] = {got}, spec {expected}"


# ---- time parameters: the docs/init.md formulas, element by element ---------------------------------


def test_v4_time_parameters():
    p, C = params(init("4")), 64
    for layer in LAYERS:
        r01, r1a0 = ratios(layer)
        a, f = f"blocks.{layer}.att.", f"blocks.{layer}.ffn."
        for i in CHANNELS:
            ddd = i / C
            check(p, a + "time_decay", i, -5 + 8 * (i / (C - 1)) ** (0.7 + 1.3 * r01))
            check(p, a + "time_first", i, math.log(0.3) + 0.5 * ((i + 1) % 3 - 1))
            check(p, a + "time_mix_k", i, ddd**r1a0)
            check(p, a + "time_mix_v", i, ddd**r1a0 + 0.3 * r01)
            check(p, a + "time_mix_r", i, ddd ** (0.5 * r1a0))
            check(p, f + "time_mix_k", i, ddd**r1a0)
            check(p, f + "time_mix_r", i, ddd**r1a0)


def test_v5_2_time_parameters():
    p, C = params(init("5.2")), 64
    for layer in LAYERS:
        r01, r1a0 = ratios(layer)
        a = f"blocks.{layer}.att."
        assert p[a + "time_decay"].shape == (4, 16)  # (H, N), flattened channel index n below
        for n in CHANNELS:
            ddd = n / C
            check(p, a + "time_decay", n, -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r01))
            check(p, a + "time_faaaa", n, r01 * (1 - n / (C - 1)) + 0.1 * ((n + 1) % 3 - 1))
            check(p, a + "time_mix_g", n, ddd ** (0.5 * r1a0))
            check(p, a + "time_mix_v", n, ddd**r1a0 + 0.3 * r01)
            check(p, a + "ln_x.weight", n, ((1 + layer) / 3) ** 0.7)
            check(p, a + "ln_x.bias", n, 0.0)


@pytest.mark.parametrize("version", ["5.0", "5.1"])
def test_v5_preview_time_parameters(version):
    """Per-head decay of the 5.2 form; bonus -3 as a log (5.0 config), r01 (1 - h / (H - 1)) linear (5.1)."""
    p, H = params(init(version)), 4
    for layer in LAYERS:
        r01, _ = ratios(layer)
        a = f"blocks.{layer}.att."
        assert p[a + "time_decay"].shape == (H,)
        for h in range(H):
            check(p, a + "time_decay", h, -6 + 5 * (h / (H - 1)) ** (0.7 + 1.3 * r01))
            if version == "5.0":
                check(p, a + "time_first", h, -3.0)
            else:
                check(p, a + "time_faaaa", h, r01 * (1 - h / (H - 1)))
    assert ("blocks.0.att.time_mix_g" in p) == (version == "5.1")


def test_v6_time_parameters():
    p, C = params(init("6")), 64
    for layer in LAYERS:
        r01, r1a0 = ratios(layer)
        a, f = f"blocks.{layer}.att.", f"blocks.{layer}.ffn."
        for i in CHANNELS:
            ddd = i / C
            for m in ("x", "w", "k"):
                check(p, a + f"time_maa_{m}", i, 1 - ddd**r1a0)
            check(p, a + "time_maa_v", i, 1 - (ddd**r1a0 + 0.3 * r01))
            check(p, a + "time_maa_r", i, 1 - ddd ** (0.5 * r1a0))
            check(p, a + "time_maa_g", i, 1 - ddd ** (0.5 * r1a0))
            check(p, a + "time_decay", i, -6 + 5 * (i / (C - 1)) ** (0.7 + 1.3 * r01))
            check(p, a + "time_faaaa", i, r01 * (1 - i / (C - 1)) + 0.1 * ((i + 1) % 3 - 1))
            check(p, f + "time_maa_k", i, 1 - ddd ** (r1a0**3))
            check(p, f + "time_maa_r", i, 1 - ddd ** (r1a0**3))
        assert (p[a + "time_maa_w1"] == 0).all() and (p[a + "time_decay_w1"] == 0).all()
        for name in ("time_maa_w2", "time_decay_w2"):  # U(-0.01, 0.01)
            w = p[a + name]
            assert w.abs().max() <= 0.01 and w.abs().max() > 0.005 and w.std() > 0.004


def test_v7_time_parameters():
    p, C, N = params(init("7")), 64, 16
    powers = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}
    for layer in LAYERS:
        r01, r1a0 = ratios(layer)
        a = f"blocks.{layer}.att."
        for n in CHANNELS:
            ddd = n / C
            linear = n / (C - 1) - 0.5
            z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
            zigzag = z * abs(z)
            for key, pw in powers.items():
                check(p, a + key, n, 1 - ddd ** (pw * r1a0))
            www = -6 + 6 * (n / (C - 1)) ** (1 + r01**0.3)
            check(p, a + "w0", n, www + 0.5 + 2.5 * zigzag)
            check(p, a + "a0", n, -0.19 + 0.3 * zigzag + 0.4 * linear)
            check(p, a + "v0", n, 0.73 - 0.4 * linear)
            check(p, a + "k_k", n, 0.71 - 0.1 * linear)
            check(p, a + "k_a", n, 1.02)
            check(p, a + "r_k", n, -0.04)
            check(p, a + "ln_x.weight", n, ((1 + layer) / 3) ** 0.7)
            check(p, f"blocks.{layer}.ffn.x_k", n, 1 - ddd ** (r1a0**4))


def test_single_layer_model_has_r01_zero():
    """The official code divides by L - 1; with one layer r01 is taken as 0 (documented)."""
    cfg = CONFIGS["7"].replace(n_layer=1)
    p = params(official_init_(RWKV(cfg), seed=0))
    C = 64
    assert torch.isfinite(torch.cat([t.reshape(-1) for t in p.values()])).all()
    check(p, "blocks.0.att.w0", 63, -6 + 6 * 1.0 ** (1 + 0.0) + 0.5 + 2.5 * 1.0)
    check(p, "blocks.0.att.x_k", 5, 1 - (5 / C) ** 0.7)


# ---- matrices: zeros, orthogonal gains, norms ------------------------------------------------

_ZERO_V5 = ("att.output.weight", "ffn.value.weight", "ffn.receptance.weight")
ZEROED = {  # per layer, the suffix of the parameter name
    "4": ("att.key.weight", "att.receptance.weight") + _ZERO_V5,
    "5.0": _ZERO_V5,
    "5.1": _ZERO_V5,
    "5.2": _ZERO_V5,
    "6": _ZERO_V5,
    "7": ("att.output.weight", "ffn.value.weight", "att.w1", "att.a1", "att.v1", "att.g1"),
}
LORA_UP = ("att.w2", "att.a2", "att.v2", "att.g2")  # RWKV-7


def expected_gain(version: str, name: str, shape: tuple[int, int]) -> float:
    rows, cols = shape
    if name == "head.weight":
        return 0.5 * math.sqrt(rows / cols) if rows > cols else 0.5
    if version == "4":  # v4neo: sqrt(out / in) when out > in
        return math.sqrt(rows / cols) if rows > cols else 1.0
    if name.endswith(LORA_UP):
        return 0.1 * (math.sqrt(rows / cols) if rows > cols else 1.0)
    if name.endswith(("att.key.weight", "att.gate.weight")):
        return 0.1
    return 1.0


@pytest.mark.parametrize("version", VERSIONS)
def test_zeroed_matrices_are_zero(version):
    p = params(init(version))
    for layer in LAYERS:
        for suffix in ZEROED[version]:
            assert (p[f"blocks.{layer}.{suffix}"] == 0).all(), suffix


@pytest.mark.parametrize("version", VERSIONS)
def test_orthogonal_matrices_have_their_gain(version):
    """W W^T = gain^2 I for wide/square matrices, W^T W = gain^2 I for tall ones (orthonormal columns)."""
    p = params(init(version))
    checked = []
    for name, w in p.items():
        is_matrix = name.endswith(".weight") and w.dim() == 2 and name != "emb.weight"
        if not (is_matrix or name.endswith(LORA_UP)) or name.endswith(ZEROED[version]):
            continue
        rows, cols = w.shape
        gain = expected_gain(version, name, (rows, cols))
        w64 = w.detach().double()
        gram = w64 @ w64.T if rows <= cols else w64.T @ w64
        eye = torch.eye(gram.shape[0], dtype=torch.float64) * gain**2
        assert (gram - eye).abs().max().item() <= 1e-5 * max(1.0, gain**2), f"{name}: gain {gain}"
        checked.append(name)
    # every layer: the value projection and the ffn key at least; plus the head
    assert "head.weight" in checked and len(checked) >= 2 * len(LAYERS) + 1
    if version == "7":
        assert sum(n.endswith(LORA_UP) for n in checked) == 4 * len(LAYERS)


@pytest.mark.parametrize("version", VERSIONS)
def test_embedding_and_layer_norms(version):
    p = params(init(version))
    emb = p["emb.weight"]
    assert emb.abs().max() <= 1e-4 and emb.abs().max() > 0.9e-4 and emb.std() > 5e-5  # U(-1e-4, 1e-4)
    for name, t in p.items():
        if name.startswith("ln_out") or ".ln0." in name or ".ln1." in name or ".ln2." in name:
            assert (t == (1.0 if name.endswith("weight") else 0.0)).all(), name


def test_v4_embedding_range_is_configurable():
    """v4neo used U(-lr_init, lr_init) for emb: emb_range reproduces it."""
    model = official_init_(RWKV(CONFIGS["4"]), seed=0, emb_range=6e-4)
    emb = model.emb.weight
    assert emb.abs().max() <= 6e-4 and emb.abs().max() > 5e-4


# ---- determinism, dtypes ---------------------------------------------------------------------


def test_deterministic_for_a_seed():
    a, b, c = init("7", seed=3), init("7", seed=3), init("7", seed=4)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.head.weight, c.head.weight)
    assert not torch.equal(a.emb.weight, c.emb.weight)
    assert torch.equal(a.blocks[1].att.w0, c.blocks[1].att.w0)  # formulas do not depend on the seed


def test_seed_none_follows_the_global_generator():
    torch.manual_seed(123)
    a = official_init_(RWKV(CONFIGS["6"]))
    torch.manual_seed(123)
    b = official_init_(RWKV(CONFIGS["6"]))
    assert torch.equal(a.blocks[0].att.time_maa_w2, b.blocks[0].att.time_maa_w2)
    assert torch.equal(a.head.weight, b.head.weight)


def test_bf16_model_gets_the_fp32_values_rounded():
    lo, hi = init("7", seed=5, dtype=torch.bfloat16), init("7", seed=5)
    for (name, x), y in zip(lo.named_parameters(), hi.parameters()):
        assert x.dtype == torch.bfloat16
        assert torch.equal(x, y.to(torch.bfloat16)), name


def test_rejects_other_models():
    with pytest.raises(TypeError, match="RWKV model"):
        official_init_(torch.nn.Linear(3, 3))


# ---- step 0: a freshly initialised model is a near-uniform predictor --------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_fresh_model_loss_is_about_ln_vocab(version):
    """Every residual branch's output projection is zero, so the logits are head(LN_out(LN0(emb))).

    LN_out gives unit RMS, and each head row has norm 0.5 (gain 0.5 sqrt(V/C) on V/C-scaled rows),
    so the logits have standard deviation ~0.5 and the expected loss is ~ln V + 0.5^2 / 2.
    Tolerance: 0.2 nats around that (the spread over batches of 2 x 64 tokens is ~0.05).
    """
    cfg = CONFIGS[version]
    model = init(version, seed=1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
        loss = lm_loss(logits, tokens[:, 1:]).item()
    assert torch.isfinite(logits).all()
    assert 0.4 < logits.std().item() < 0.6
    assert abs(loss - (math.log(cfg.vocab_size) + 0.125)) < 0.2, loss


def test_blocks_alone_get_the_values_of_the_lm_blocks():
    """official_init_blocks_ (a block stack without emb/head, as Rimer uses) gives every formula
    parameter exactly the value official_init_ gives the same block of a language model, and every
    random matrix the same gain (the random draws come in another order)."""
    from rwkvkit.models.rwkv.model import Block
    from rwkvkit.training.init import official_init_blocks_

    cfg = CONFIGS["7"]
    lm = official_init_(RWKV(cfg), seed=3)
    stack = torch.nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
    blocks = official_init_blocks_(stack, cfg, seed=3)
    lm_params = dict(lm.named_parameters())
    n_random = 0
    for name, p in blocks.named_parameters(prefix="blocks"):
        ref = lm_params[name]
        if p.dim() == 2 and ref.abs().max() > 0 and "ln" not in name:
            n_random += 1
            norm = torch.linalg.matrix_norm
            assert norm(p).item() == pytest.approx(norm(ref).item(), rel=1e-4)
        else:
            torch.testing.assert_close(p, ref, rtol=0, atol=0, msg=name)
    assert n_random >= 4 * cfg.n_layer
