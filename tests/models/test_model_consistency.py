"""Inside rwkvkit, every version: parallel == prefill + decode, batch rows independent, gradients."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.models.rwkv.init import random_model

from .configs import ONE_PER_VERSION

VERSIONS = sorted(ONE_PER_VERSION)


@pytest.mark.parametrize("version", VERSIONS)
def test_prefill_then_decode_equals_full_forward_batched(version):
    """A full forward == chunked prefill + one-token steps, for a batch of 3 different sequences."""
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=11)
    tokens = torch.randint(0, cfg.vocab_size, (3, 70))
    with torch.no_grad():
        full, s_full = model(tokens)
        pre, state = model(tokens[:, :40])
        steps = []
        for t in range(40, 70):
            lg, state = model(tokens[:, t : t + 1], state)
            steps.append(lg)
        got = torch.cat([pre, *steps], dim=1)
    assert (got - full).abs().max().item() <= 1e-4  # fp32: summation order only
    for name in state.tensors:
        assert (state[name] - s_full[name]).abs().max().item() <= 1e-4 * max(
            1.0, s_full[name].abs().max().item()
        )


@pytest.mark.parametrize("version", VERSIONS)
def test_batch_rows_are_independent(version):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=5)
    tokens = torch.randint(0, cfg.vocab_size, (3, 33))
    with torch.no_grad():
        batch, _ = model(tokens)
        for b in range(3):
            alone, _ = model(tokens[b : b + 1])
            assert (alone[0] - batch[b]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("version", VERSIONS)
def test_naive_and_fast_paths_agree_in_the_model(version):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=2).double()
    tokens = torch.randint(0, cfg.vocab_size, (2, 50))
    with torch.no_grad():
        ref, _ = model(tokens, impl="naive")
        out, _ = model(tokens, impl="auto")
    assert (ref - out).abs().max().item() <= 1e-9  # fp64: algebraically equal forms


@pytest.mark.parametrize("version", VERSIONS)
def test_gradients_flow_to_every_parameter(version):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=3).train()
    tokens = torch.randint(0, cfg.vocab_size, (2, 20))
    logits, _ = model(tokens)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, cfg.vocab_size), tokens[:, 1:].reshape(-1)
    )
    loss.backward()
    # RWKV-7 layer 0's value-residual LoRA is unused by design (layer 0 defines v_first)
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"} if version == "v7" else set()
    for name, p in model.named_parameters():
        if name in unused:
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
