"""State: batch operations, persistence, fit checks, official layout."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import StateError
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_model
from rwkvkit.state import State

CFG = RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=97, head_size=32,
                 lora_w=8, lora_a=8, lora_v=4, lora_g=16)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=0)


def test_select_and_cat_split_and_join_the_batch(model):
    tokens = torch.randint(0, CFG.vocab_size, (3, 9))
    with torch.no_grad():
        _, state = model(tokens)
    parts = [state.select(i) for i in range(3)]
    joined = State.cat(parts)
    for name in state.tensors:
        assert torch.equal(joined[name], state[name])
    assert torch.equal(joined.logits, state.logits)
    # a selected row continues exactly like that row in the batch
    nxt = torch.randint(0, CFG.vocab_size, (3, 4))
    with torch.no_grad():
        batch_logits, _ = model(nxt, state)
        row_logits, _ = model(nxt[1:2], state.select(1))
    assert (batch_logits[1] - row_logits[0]).abs().max() <= 1e-5


def test_save_load_roundtrip_is_exact(model, tmp_path):
    with torch.no_grad():
        _, state = model(torch.randint(0, CFG.vocab_size, (2, 5)))
    state.save(tmp_path / "s.safetensors")
    back = State.load(tmp_path / "s.safetensors")
    assert back.version == "7"
    for name in state.tensors:
        assert torch.equal(back[name], state[name])
    assert torch.equal(back.logits, state.logits)


def test_the_input_state_is_not_modified(model):
    with torch.no_grad():
        _, state = model(torch.randint(0, CFG.vocab_size, (1, 5)))
        before = state.clone()
        model(torch.randint(0, CFG.vocab_size, (1, 5)), state)
    for name in state.tensors:
        assert torch.equal(before[name], state[name])


def test_state_that_does_not_fit_is_refused(model):
    other = RWKVConfig(version="7", n_layer=3, n_embd=64, vocab_size=97, head_size=32,
                       lora_w=8, lora_a=8, lora_v=4, lora_g=16)  # fmt: skip
    with pytest.raises(StateError, match="different model"):
        model(torch.zeros(1, 2, dtype=torch.long), State.initial(other, 1))
    with pytest.raises(StateError, match="batch size 2"):
        model(torch.zeros(2, 2, dtype=torch.long), State.initial(CFG, 1))


def test_load_errors(tmp_path):
    with pytest.raises(StateError, match="not found"):
        State.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(StateError, match="cannot read"):
        State.load(tmp_path / "junk.safetensors")


def test_official_layout_roundtrip(model):
    with torch.no_grad():
        _, state = model(torch.randint(0, CFG.vocab_size, (1, 5)))
    back = State.from_official(state.to_official(), "7")
    for name in state.tensors:
        assert torch.equal(back[name], state[name])
    # official S is value-major: S_official[h, v, k] == ours[h, k, v]
    assert torch.equal(state.to_official()[1], state["wkv"][0, 0].transpose(-1, -2))
