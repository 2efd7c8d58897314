"""RWKV-4 against Hugging Face transformers' ``RwkvForCausalLM`` (a second, independent oracle).

A randomly initialised transformers model is saved with ``save_pretrained`` and loaded with
``rwkvkit.load(directory)``; logits must agree for the whole sequence and when continuing from a
state (each library carrying its own state).
"""

from __future__ import annotations

import pytest
import torch

import rwkvkit

transformers = pytest.importorskip("transformers", reason="the RWKV-4 oracle (a dev dependency)")

TOL = 1e-4  # max |logit difference|, fp32


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    cfg = transformers.RwkvConfig(
        vocab_size=301,
        hidden_size=64,
        num_hidden_layers=3,
        attention_hidden_size=64,
        intermediate_size=192,
        context_length=256,
        rescale_every=0,  # transformers otherwise rescales weights in memory in eval mode
    )
    torch.manual_seed(0)
    model = transformers.RwkvForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # spread every parameter so all terms matter (the HF init zeroes several)
        for name, p in model.named_parameters():
            if "time_decay" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 8 - 5)
            elif "time_first" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
            else:  # LayerNorm
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    model.eval()
    path = tmp_path_factory.mktemp("hf") / "rwkv4"
    model.save_pretrained(path)
    return path, model


def test_whole_sequence_and_continuation(hf_dir):
    path, hf = hf_dir
    ours = rwkvkit.load(path)
    assert ours.config.version == "4" and ours.config.n_layer == 3
    tokens = torch.randint(0, 301, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens).logits.float()
        got, _ = ours(tokens)
        err = (got - ref).abs().max().item()
        print(f"whole sequence vs transformers: max|dlogit| = {err:.2e} (max|logit| {ref.abs().max():.1f})")
        assert err <= TOL

        # continuation: prefix, then the rest, each library with its own state
        out = hf(tokens[:, :25], use_cache=True)
        ref2 = hf(tokens[:, 25:], state=out.state, use_cache=True).logits.float()
        _, state = ours(tokens[:, :25])
        got2, _ = ours(tokens[:, 25:], state)
        err2 = (got2 - ref2).abs().max().item()
        print(f"continued from a state vs transformers: max|dlogit| = {err2:.2e}")
        assert err2 <= TOL
