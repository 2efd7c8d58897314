"""Multiple temporal perspectives (rwkvkit.models.rwkv.perspectives): equal to the base RWKV-4 when the
perspectives are identical, recurrent, and only the new parameters train."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import ConfigError, StateError
from rwkvkit.generation.generate import generate_tokens
from rwkvkit.models.rwkv.init import random_model
from rwkvkit.models.rwkv.perspectives import MultiPerspectiveRWKV, train_only_time_mix
from rwkvkit.state import State

from .configs import ONE_PER_VERSION

CFG = ONE_PER_VERSION["v4"]  # L2, C64, V301


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_one_perspective_is_the_base_model_exactly():
    base = random_model(CFG, seed=1)
    tokens = torch.randint(0, CFG.vocab_size, (3, 41))
    with torch.no_grad():
        ref, ref_state = base(tokens)
        out, state, alpha = MultiPerspectiveRWKV(base, 1, noise=0.1)(tokens, return_alpha=True)
    assert torch.equal(alpha, torch.ones(3, 41, 1))
    assert torch.equal(out, ref)  # same ops on the same rows: bit-identical
    for name in ref_state.tensors:
        assert torch.equal(state[name].squeeze(2), ref_state[name])


def test_identical_perspectives_equal_the_base_model():
    base = random_model(CFG, seed=2)
    tokens = torch.randint(0, CFG.vocab_size, (2, 37))
    model = MultiPerspectiveRWKV(base, 4, noise=0.0, seed=3)
    with torch.no_grad():
        ref, ref_state = base(tokens)
        out, state, alpha = model(tokens, return_alpha=True)
    assert alpha.shape == (2, 37, 4)
    assert (alpha.sum(-1) - 1).abs().max().item() <= 1e-6  # softmax in fp32
    assert alpha.std(-1).min().item() > 0  # W_c is random: the weights are not uniform
    # fp32: the P * B batch may change matmul blocking; sum_i alpha_i z rounds once per term
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    for name in ref_state.tensors:
        want = ref_state[name].unsqueeze(2).expand_as(state[name])
        assert (state[name] - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


def test_noise_makes_the_perspectives_differ():
    base = random_model(CFG, seed=2)
    model = MultiPerspectiveRWKV(base, 4, noise=1e-2, seed=0)
    mix = model.mixes[1]["att"].time_mix_k  # (P, 1, 1, C)
    assert mix.shape == (4, 1, 1, CFG.n_embd)
    assert torch.equal(mix[0], base.blocks[1].att.time_mix_k)  # perspective 0 keeps the trained mix
    assert 0.005 < (mix[1:] - mix[0]).std().item() < 0.02
    tokens = torch.randint(0, CFG.vocab_size, (2, 30))
    with torch.no_grad():
        ref, _ = base(tokens)
        out, state = model(tokens)
    assert (out - ref).abs().max().item() > 1e-4
    assert (state["wkv"][:, :, 1:] - state["wkv"][:, :, :1]).abs().max().item() > 1e-4
    again = MultiPerspectiveRWKV(random_model(CFG, seed=2), 4, noise=1e-2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_sequence_in_pieces_and_token_by_token_equals_one_call():
    base = random_model(CFG, seed=4).double()
    model = MultiPerspectiveRWKV(base, 3, noise=0.05, seed=1)
    tokens = torch.randint(0, CFG.vocab_size, (2, 32))
    with torch.no_grad():
        full, s_full, a_full = model(tokens, return_alpha=True)
        pieces, state = [], None
        for lo, hi in ((0, 11), (11, 24)):
            lg, state = model(tokens[:, lo:hi], state)
            pieces.append(lg)
        for t in range(24, 32):  # one token at a time (the WKV step form)
            lg, state, a = model(tokens[:, t : t + 1], state, return_alpha=True)
            pieces.append(lg)
        last, _ = model(tokens, full_output=False)
    got = torch.cat(pieces, dim=1)
    # fp64 model, but logits and state come back in fp32 and the state is carried between calls in
    # fp32: a few fp32 roundings (2^-24 = 6e-8 relative each)
    tol = 1e-6 * max(1.0, full.abs().max().item())
    assert (got - full).abs().max().item() <= tol
    assert (last - full[:, -1:]).abs().max().item() <= tol
    assert (a - a_full[:, -1:]).abs().max().item() <= 1e-7  # fp32 softmax of fp64 logits of alpha
    for name in s_full.tensors:
        scale = max(1.0, s_full[name].abs().max().item())
        assert (state[name] - s_full[name]).abs().max().item() <= 1e-6 * scale
    assert torch.equal(state.logits, got[:, -1])


def test_batch_rows_are_independent_and_the_state_is_a_regular_state(tmp_path):
    model = MultiPerspectiveRWKV(random_model(CFG, seed=5), 2, noise=0.05)
    tokens = torch.randint(0, CFG.vocab_size, (3, 20))
    nxt = torch.randint(0, CFG.vocab_size, (3, 5))
    with torch.no_grad():
        _, state = model(tokens)
        assert state.batch_size == 3 and state["wkv"].shape == (CFG.n_layer, 3, 2, 3, CFG.n_embd)
        state.save(tmp_path / "s.safetensors")
        loaded = State.load(tmp_path / "s.safetensors")
        both, _ = model(nxt, loaded)
        row, _ = model(nxt[1:2], state.select(1))
    assert (both[1] - row[0]).abs().max().item() <= 1e-5  # fp32, different batch shapes


def test_only_the_new_parameters_train_and_the_base_stays_bit_identical():
    base = random_model(CFG, seed=6)
    before = snapshot(base)
    P, L, C = 4, CFG.n_layer, CFG.n_embd
    model = MultiPerspectiveRWKV(base, P, noise=1e-2)
    trainable = model.trainable_parameters()
    assert sum(p.numel() for p in trainable) == L * 5 * P * C + C * P
    assert model.added_parameters() == L * 5 * (P - 1) * C + C * P
    assert model.added_fraction == pytest.approx(model.added_parameters() / base.num_params())
    assert not any(p.requires_grad for p in base.parameters())

    opt = torch.optim.Adam(trainable, lr=1e-2)
    tokens = torch.randint(0, CFG.vocab_size, (2, 24))
    for _ in range(2):
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, CFG.vocab_size), tokens[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
        assert all(p.grad is None for p in base.parameters())
        opt.step()
    assert all(torch.equal(before[n], p) for n, p in base.named_parameters())
    assert model.mixes[0]["ffn"].time_mix_r.grad is not None


def test_train_only_time_mix():
    base = random_model(CFG, seed=7)
    trainable = train_only_time_mix(base)
    names = {n for n, p in base.named_parameters() if p.requires_grad}
    assert all(n.rsplit(".", 1)[-1].startswith("time_mix_") for n in names)
    assert sum(p.numel() for p in trainable) == CFG.n_layer * 5 * CFG.n_embd
    with pytest.raises(ConfigError, match="time_mix"):
        train_only_time_mix(random_model(ONE_PER_VERSION["v7"]))


def test_generation_runs_on_the_wrapper():
    base = random_model(CFG, seed=8)
    prompt = [1, 2, 3, 4, 5, 6, 7]
    want = list(generate_tokens(base, prompt, max_new_tokens=12, temperature=0.0, chunk_len=3))
    got = list(
        generate_tokens(
            MultiPerspectiveRWKV(base, 1), prompt, max_new_tokens=12, temperature=0.0, chunk_len=3
        )
    )
    assert got == want
    four = generate_tokens(MultiPerspectiveRWKV(base, 4, noise=0.05), prompt, max_new_tokens=12, seed=0)
    assert len(list(four)) == 12 and four.state["att_shift"].shape == (CFG.n_layer, 1, 4, CFG.n_embd)


@pytest.mark.parametrize("P", [0, -1, 2.5, True, "4"])
def test_bad_number_of_perspectives(P):
    with pytest.raises(ConfigError, match="n_perspectives"):
        MultiPerspectiveRWKV(random_model(CFG), P)


def test_errors():
    with pytest.raises(ConfigError, match="RWKV-4"):
        MultiPerspectiveRWKV(random_model(ONE_PER_VERSION["v5.2"]), 4)
    with pytest.raises(ConfigError, match="RWKV model"):
        MultiPerspectiveRWKV(torch.nn.Linear(2, 2), 4)
    with pytest.raises(ConfigError, match="noise"):
        MultiPerspectiveRWKV(random_model(CFG), 4, noise=-1.0)
    base = random_model(CFG)
    tokens = torch.randint(0, CFG.vocab_size, (1, 5))
    _, base_state = base(tokens)
    with pytest.raises(StateError, match="base model"):
        MultiPerspectiveRWKV(base, 2)(tokens, base_state)
