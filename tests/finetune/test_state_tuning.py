"""State tuning (rwkvkit.finetune.state_tuning): a trainable initial WKV state over a frozen model.

The start equals the plain model; the gradient of the start state through the chunked WKV (the
training tier) equals the naive recurrence's and finite differences; training moves only the state;
the exported State works wherever a State does (generate, BatchEngine, ``rwkvkit generate --state-in``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.errors import ConfigError, StateError
from rwkvkit.finetune import StateTuned
from rwkvkit.generation import BatchEngine, generate
from rwkvkit.models.rwkv.init import random_checkpoint, random_model
from rwkvkit.optim import build_optimizer
from rwkvkit.state import State
from tests.finetune.test_lora import tokens
from tests.models.configs import ONE_PER_VERSION

MATRIX_STATE = ["v5.0", "v5.2", "v6", "v7"]
V7 = ONE_PER_VERSION["v7"]


@pytest.fixture(autouse=True)
def reference_path(monkeypatch):
    """generate() on a plain RWKV would take the compiled CPU twin; these tests compare exact paths."""
    monkeypatch.setenv("RWKVKIT_FAST", "0")


def randomise_(tuned: StateTuned, seed: int = 0, scale: float = 0.5) -> None:
    """A nonzero learned state (as after training), so every test below sees it act."""
    with torch.no_grad():
        tuned.wkv.copy_(scale * torch.randn(tuned.wkv.shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("version", MATRIX_STATE)
def test_fresh_wrapper_is_the_plain_model(version):
    cfg = ONE_PER_VERSION[version]
    model = random_model(cfg, seed=1)
    x = tokens(cfg)
    ref, ref_state = model(x)
    tuned = StateTuned(model)
    assert tuned.wkv.shape == (cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size)
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == ["wkv"]
    out, state = tuned(x)
    assert torch.equal(out, ref) and torch.equal(state["wkv"], ref_state["wkv"])


def test_rwkv4_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match="WKV matrix state.*RWKV-4"):
        StateTuned(random_model(ONE_PER_VERSION["v4"]))


@pytest.mark.parametrize("version", ["v5.2", "v6", "v7"])
def test_start_state_gradient_of_the_training_tier_equals_the_naive_recurrence(version):
    """In train mode ``impl="auto"`` is the chunked form on the CPU; its gradient for the start state
    must be the spec's (the naive loop's). T spans several chunks."""
    cfg = ONE_PER_VERSION[version]
    tuned = StateTuned(random_model(cfg, seed=2)).train()
    randomise_(tuned, scale=0.2)
    x = tokens(cfg, B=2, T=70)
    grads = {}
    for impl in ("auto", "naive"):
        tuned.wkv.grad = None
        logits, _ = tuned(x[:, :-1], impl=impl)
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        grads[impl] = tuned.wkv.grad.clone()
    assert grads["naive"].abs().max() > 0
    torch.testing.assert_close(grads["auto"], grads["naive"], atol=1e-6, rtol=1e-4)


def test_start_state_gradient_equals_finite_differences():
    """fp64 model and state: central differences on a few entries of every layer's state (the loss
    from the fp64 hidden states: the model's logits are always fp32)."""
    cfg = ONE_PER_VERSION["v7"]
    tuned = StateTuned(random_model(cfg, seed=3, dtype=torch.float64)).train()
    tuned.wkv = torch.nn.Parameter(tuned.wkv.detach().double())
    randomise_(tuned, scale=0.2)
    x = tokens(cfg, B=2, T=40)

    def loss() -> torch.Tensor:
        hidden, _ = tuned(x[:, :-1], return_hidden=True)
        logits = tuned.model.head(hidden)
        return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

    loss().backward()
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for layer in range(cfg.n_layer):
        for _ in range(3):
            idx = (layer, *(int(torch.randint(0, s, (1,), generator=g)) for s in tuned.wkv.shape[1:]))
            with torch.no_grad():
                tuned.wkv[idx] += eps
                up = loss()
                tuned.wkv[idx] -= 2 * eps
                down = loss()
                tuned.wkv[idx] += eps
            fd = (up - down) / (2 * eps)
            torch.testing.assert_close(tuned.wkv.grad[idx], fd, atol=1e-8, rtol=1e-5)


def test_start_state_passed_to_the_base_model_carries_the_gradient():
    """A trainer that calls the base model itself with ``start_state(B)`` trains the same state."""
    tuned = StateTuned(random_model(V7, seed=4)).train()
    randomise_(tuned, scale=0.2)
    x = tokens(V7, B=3, T=20)
    tuned(x)[0].square().mean().backward()
    via_wrapper, tuned.wkv.grad = tuned.wkv.grad, None
    tuned.model(x, tuned.start_state(3))[0].square().mean().backward()
    assert via_wrapper.abs().max() > 0 and torch.equal(tuned.wkv.grad, via_wrapper)


def test_training_changes_only_the_state():
    cfg = V7
    model = random_model(cfg, seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = StateTuned(model).train()
    opt = build_optimizer(tuned, lr=1e-2, weight_decay=0.01)  # the trainer's optimiser groups
    assert [n for g in opt.param_groups for n in g["param_names"]] == ["wkv"]
    x = tokens(cfg, B=4, T=33)
    losses = []
    for _ in range(5):
        logits, _ = tuned(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the base, bit for bit
    assert tuned.wkv.abs().max() > 0


def test_exported_state_reloads_to_the_same_logits(tmp_path):
    model = random_model(V7, seed=5)
    tuned = StateTuned(model).eval()
    randomise_(tuned)
    x = tokens(V7, B=1)
    with torch.no_grad():
        want, _ = tuned(x)
    state = tuned.export_state()
    assert state.batch_size == 1 and state.logits is None
    state.check_fits(model.config, 1)
    state.save(tmp_path / "tuned.state")
    loaded = State.load(tmp_path / "tuned.state")
    with torch.no_grad():
        got, _ = model(x, loaded)  # the plain base model from the loaded state
    assert torch.equal(got, want)
    # and it can seed a new wrapper (to train on)
    again = StateTuned(random_model(V7, seed=5), init=loaded)
    assert torch.equal(again.wkv, tuned.wkv)
    with pytest.raises(StateError, match="RWKV-7 but the model is RWKV-6"):
        StateTuned(random_model(ONE_PER_VERSION["v6"]), init=loaded)


BYTES_CFG = V7.replace(vocab_size=256)


def test_exported_state_in_generate_batch_engine_and_the_cli(tmp_path, capsys):
    ckpt = random_checkpoint(BYTES_CFG, tmp_path / "base.pth", seed=6)
    base = rwkvkit.load(ckpt)
    tok = rwkvkit.load_tokenizer("bytes")
    tuned = StateTuned(base)
    randomise_(tuned, seed=1)
    tuned.export_state().save(tmp_path / "tuned.state")
    state = State.load(tmp_path / "tuned.state")
    opts = {"max_new_tokens": 12, "temperature": 0}
    want = generate(tuned, tok, "abc", **opts)  # the wrapper itself is a generative model
    assert want != generate(base, tok, "abc", **opts)  # the learned state changes the text
    assert generate(base, tok, "abc", state=state, **opts) == want
    engine = BatchEngine(base, tok, max_batch=2)
    rid = engine.add("abc", state=state, **opts)
    other = engine.add("xyz", **opts)  # a fresh sequence beside it in the batch
    results = engine.run()
    assert results[rid].text == want
    assert results[other].text == generate(base, tok, "xyz", **opts)
    state_in = str(tmp_path / "tuned.state")
    args = ["generate", "--model", str(ckpt), "--tokenizer", "bytes", "--prompt", "abc", "--max-tokens", "12",
            "--temperature", "0", "--no-stream", "--fast", "off", "--state-in", state_in]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.rstrip("\n") == "abc" + want
