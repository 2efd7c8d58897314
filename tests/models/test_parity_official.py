"""Every RWKV version against the official ``rwkv`` package (the oracle), fp32 CPU.

For each random official-format checkpoint: the whole sequence at once, token by token, and resuming
from a state saved to disk, all within max |logit difference| <= 1e-4 of the package.
"""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.models.rwkv.init import random_checkpoint
from rwkvkit.state import State
from rwkvkit.utils.official import run_official

from .configs import PARITY_CONFIGS

pytest.importorskip("rwkv", reason="the official rwkv package is the oracle (dev dependency)")

TOL_OFFICIAL = 1e-4  # max |logit difference| against the official package, fp32 (issue acceptance)


@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def case(request, tmp_path_factory):
    cfg = PARITY_CONFIGS[request.param]
    path = random_checkpoint(cfg, tmp_path_factory.mktemp("ckpt") / f"{request.param}.pth", seed=7)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (77,), generator=g).tolist()
    cut = 45
    return request.param, cfg, path, tokens, cut, run_official(path, tokens, cut, version=cfg.version)


def test_whole_sequence(case):
    name, cfg, path, tokens, cut, ref = case
    model = rwkvkit.load(path)
    assert model.config == cfg
    logits, _ = model(torch.tensor([tokens]))
    err = (logits[0] - ref["seq"]).abs().max().item()
    print(f"{name} whole sequence: max|dlogit| = {err:.2e} (max|logit| {ref['seq'].abs().max():.1f})")
    assert err <= TOL_OFFICIAL


def test_token_by_token(case):
    name, cfg, path, tokens, cut, ref = case
    model = rwkvkit.load(path)
    state, outs = None, []
    with torch.no_grad():
        for t in tokens:
            logits, state = model(torch.tensor([[t]]), state)
            outs.append(logits[0, 0])
    err = (torch.stack(outs) - ref["tok"]).abs().max().item()
    print(f"{name} token by token: max|dlogit| = {err:.2e}")
    assert err <= TOL_OFFICIAL


def test_resume_from_saved_state(case, tmp_path):
    name, cfg, path, tokens, cut, ref = case
    model = rwkvkit.load(path)
    with torch.no_grad():
        _, state = model(torch.tensor([tokens[:cut]]))
        state.save(tmp_path / "s.safetensors")
        logits, final = model(torch.tensor([tokens[cut:]]), State.load(tmp_path / "s.safetensors"))
    err = (logits[0] - ref["resume"]).abs().max().item()
    print(f"{name} resumed from a saved state: max|dlogit| = {err:.2e}")
    assert err <= TOL_OFFICIAL
    # the state itself, in the official layout, matches the package's (v4: aa, bb, pp included)
    official = ref["state"]
    ours = final.to_official()
    assert len(ours) == len(official)
    for a, b in zip(ours, official):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())
