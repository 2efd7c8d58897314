"""RWKV-7 against the official ``rwkv`` package (the oracle), and prefill + decode consistency."""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_checkpoint, random_model
from rwkvkit.state import State
from rwkvkit.utils.official import run_official

pytest.importorskip("rwkv", reason="the official rwkv package is the oracle (dev dependency)")

# Sizes: L >= 2, vocabularies that are not multiples of 64, head sizes 64 and 32, uneven LoRA ranks.
SIZES = {
    "L2-C128-H2": RWKVConfig(version="7", n_layer=2, n_embd=128, vocab_size=1001, head_size=64,
                             lora_w=16, lora_a=16, lora_v=8, lora_g=32),
    "L3-C192-H6": RWKVConfig(version="7", n_layer=3, n_embd=192, vocab_size=517, head_size=32,
                             lora_w=24, lora_a=20, lora_v=12, lora_g=40),
    "L4-C256-H4": RWKVConfig(version="7", n_layer=4, n_embd=256, vocab_size=2050, head_size=64,
                             lora_w=32, lora_a=32, lora_v=16, lora_g=64),
}  # fmt: skip

# max |logit difference| allowed against the official package, fp32 (issue acceptance)
TOL_OFFICIAL = 1e-4


@pytest.fixture(scope="module", params=sorted(SIZES))
def case(request, tmp_path_factory):
    cfg = SIZES[request.param]
    path = random_checkpoint(cfg, tmp_path_factory.mktemp("ckpt") / f"{request.param}.pth", seed=7)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (77,), generator=g).tolist()
    cut = 45
    return cfg, path, tokens, cut, run_official(path, tokens, cut)


def test_whole_sequence(case):
    cfg, path, tokens, cut, ref = case
    model = rwkvkit.load(path)
    assert model.config == cfg
    logits, _ = model(torch.tensor([tokens]))
    err = (logits[0] - ref["seq"]).abs().max().item()
    print(f"whole sequence: max|dlogit| = {err:.2e} (max|logit| {ref['seq'].abs().max():.1f})")
    assert err <= TOL_OFFICIAL


def test_token_by_token(case):
    cfg, path, tokens, cut, ref = case
    model = rwkvkit.load(path)
    state, outs = None, []
    for t in tokens:
        logits, state = model(torch.tensor([[t]]), state)
        outs.append(logits[0, 0])
    err = (torch.stack(outs) - ref["tok"]).abs().max().item()
    print(f"token by token: max|dlogit| = {err:.2e}")
    assert err <= TOL_OFFICIAL


def test_resume_from_saved_state(case, tmp_path):
    cfg, path, tokens, cut, ref = case
    model = rwkvkit.load(path)
    _, state = model(torch.tensor([tokens[:cut]]))
    state.save(tmp_path / "s.safetensors")
    state2 = State.load(tmp_path / "s.safetensors")
    logits, final = model(torch.tensor([tokens[cut:]]), state2)
    err = (logits[0] - ref["resume"]).abs().max().item()
    print(f"resumed from a saved state: max|dlogit| = {err:.2e}")
    assert err <= TOL_OFFICIAL
    # the state itself, converted to the official layout, matches the package's
    for ours, theirs in zip(final.to_official(), ref["state"]):
        assert (ours - theirs).abs().max().item() <= 1e-4


def test_prefill_then_decode_equals_full_forward_batched():
    """Inside rwkvkit: a full forward == chunked prefill + one-token steps, for a batch of 3."""
    cfg = SIZES["L3-C192-H6"]
    model = random_model(cfg, seed=11)
    tokens = torch.randint(0, cfg.vocab_size, (3, 70))  # different contents per sequence
    with torch.no_grad():
        full, s_full = model(tokens)
        pre, state = model(tokens[:, :40], impl="chunk")
        steps = []
        for t in range(40, 70):
            lg, state = model(tokens[:, t : t + 1], state)
            steps.append(lg)
        got = torch.cat([pre, *steps], dim=1)
    err = (got - full).abs().max().item()
    assert err <= 1e-4, err  # fp32: chunked vs recurrent summation order only
    for name in state.tensors:
        assert (state[name] - s_full[name]).abs().max().item() <= 1e-4


def test_batch_rows_are_independent():
    """Each row of a batch gives what it gives alone (no leakage across the batch)."""
    cfg = SIZES["L2-C128-H2"]
    model = random_model(cfg, seed=5)
    tokens = torch.randint(0, cfg.vocab_size, (3, 33))
    with torch.no_grad():
        batch, _ = model(tokens)
        for b in range(3):
            alone, _ = model(tokens[b : b + 1])
            assert (alone[0] - batch[b]).abs().max().item() <= 1e-5


def test_naive_chunk_and_step_paths_agree_in_the_model():
    cfg = SIZES["L2-C128-H2"]
    model = random_model(cfg, seed=2).double()
    tokens = torch.randint(0, cfg.vocab_size, (2, 50))
    with torch.no_grad():
        ref, _ = model(tokens, impl="naive")
        out, _ = model(tokens, impl="chunk")
    assert (ref - out).abs().max().item() <= 1e-9  # fp64: algebraically equal forms


def test_gradients_flow_to_every_parameter():
    cfg = SIZES["L2-C128-H2"]
    model = random_model(cfg, seed=3).train()
    tokens = torch.randint(0, cfg.vocab_size, (2, 20))
    logits, _ = model(tokens)
    torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, cfg.vocab_size), tokens[:, 1:].reshape(-1)
    ).backward()
    # layer 0's value-residual LoRA is unused by design (layer 0 defines v_first)
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    for name, p in model.named_parameters():
        if name in unused:
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
