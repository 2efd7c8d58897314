"""The GPT baseline: shapes, causality, parameter counting and size matching, init, a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.models.gpt import GPT, GPTConfig
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.training import build_optimizer, lm_loss

CFG = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=61, block_size=16)


def model(cfg: GPTConfig = CFG, seed: int = 0) -> GPT:
    return GPT(cfg).init_weights(seed).eval()


def test_shapes_and_dtype():
    m = model()
    tokens = torch.randint(0, 61, (3, 16))
    logits, state = m(tokens)
    assert logits.shape == (3, 16, 61) and logits.dtype == torch.float32 and state is None
    assert m(tokens[0])[0].shape == (1, 16, 61)  # 1-D input is one sequence
    lo = GPT(CFG, dtype=torch.bfloat16).init_weights(0)
    assert lo(tokens)[0].dtype == torch.float32  # logits are fp32 whatever the model dtype


def test_causal():
    """Changing token t changes no logit before t, and does change the logits from t on."""
    m = model(seed=1)
    tokens = torch.randint(0, 61, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 61
    with torch.no_grad():
        a, _ = m(tokens)
        b, _ = m(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_input_errors():
    m = model()
    with pytest.raises(InputError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(InputError, match="no recurrent state"):
        m(torch.zeros(1, 4, dtype=torch.long), state=object())
    with pytest.raises(ConfigError):
        GPTConfig(n_layer=1, n_embd=30, n_head=4, vocab_size=10, block_size=4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_count(bias, tie):
    cfg = CFG.replace(bias=bias, tie_embeddings=tie)
    m = GPT(cfg)
    assert m.num_params() == cfg.num_params == sum(p.numel() for p in m.parameters())
    C, V, L = 32, 61, 2
    # by hand for the simplest case: 12 C^2 per layer, wte, wpe, head, 2 LayerNorm gains per layer + ln_f
    if not bias and not tie:
        assert cfg.num_params == L * (12 * C * C + 2 * C) + C + V * C + 16 * C + V * C
    if tie:
        assert m.lm_head.weight is m.wte.weight


def test_matching_a_parameter_count():
    rwkv = RWKV(RWKVConfig(version="7", n_layer=4, n_embd=128, vocab_size=1000, head_size=32, lora_w=16,
                           lora_a=16, lora_v=16, lora_g=32))  # fmt: skip
    target = rwkv.num_params()
    cfg = GPTConfig.matching(target, 1000, 256, n_layer=4, head_size=32)
    assert cfg.n_layer == 4 and cfg.n_embd % 32 == 0 and cfg.n_head == cfg.n_embd // 32
    # the nearest width: its neighbours are no closer
    for k in (cfg.n_head - 1, cfg.n_head + 1):
        if k >= 1:
            other = cfg.replace(n_embd=32 * k, n_head=k)
            assert abs(other.num_params - target) >= abs(cfg.num_params - target)
    assert abs(cfg.num_params - target) / target < 0.15
    assert GPT(cfg).num_params() == cfg.num_params


def test_init_weights():
    m = GPT(CFG.replace(bias=True, n_layer=8, n_embd=64, n_head=4)).init_weights(3)
    assert torch.equal(m.blocks[0].ln_1.weight, torch.ones(64)) and (m.blocks[0].ln_1.bias == 0).all()
    assert (m.blocks[0].attn.c_attn.bias == 0).all()
    assert m.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    proj = torch.cat([b.attn.c_proj.weight.reshape(-1) for b in m.blocks])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.1)
    again = GPT(CFG.replace(bias=True, n_layer=8, n_embd=64, n_head=4)).init_weights(3)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), again.parameters()))


def test_overfits_a_repeated_batch():
    """A few AdamW steps on one batch drive its loss well below the uniform ln V."""
    torch.manual_seed(0)
    m = GPT(CFG).init_weights(0).train()
    opt = build_optimizer(m, lr=3e-3, weight_decay=0.0)
    tokens = torch.randint(0, 61, (4, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(40):
        logits, _ = m(tokens[:, :-1])
        loss = lm_loss(logits, tokens[:, 1:], l2wrap=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(61), abs=0.1)  # init: a near-uniform predictor
    assert losses[-1] < 0.5 * losses[0]
