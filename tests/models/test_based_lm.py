"""The BASED LM: its recurrent state (linear-attention sums, sliding-window ring buffer, convolution
tail) reproduces the parallel forward, and it decodes through rwkvkit.generate."""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.errors import ConfigError, InputError
from rwkvkit.models.based import BasedConfig, BasedLM, hybrid_pattern


def _model(window: int = 8) -> BasedLM:
    cfg = BasedConfig.from_name("based-tiny").replace(window=window)
    assert set(cfg.layer_types) == {"conv", "linear", "swa"}
    return BasedLM(cfg).init_weights(seed=0).eval()


def test_hybrid_pattern_is_the_published_mix():
    p = hybrid_pattern(27)  # Based-360M: linear at 1, 6, 11, 16, 21; SWA at 2, 7, 12, 17, 22
    assert [i for i, t in enumerate(p) if t == "linear"] == [1, 6, 11, 16, 21]
    assert [i for i, t in enumerate(p) if t == "swa"] == [2, 7, 12, 17, 22]
    assert p.count("conv") == 17


@torch.no_grad()
def test_token_by_token_decoding_equals_the_parallel_forward():
    model = _model(window=8)
    tokens = torch.randint(0, 256, (2, 29), generator=torch.Generator().manual_seed(0))  # T > 3 windows
    full, _ = model(tokens)
    state, rows = None, []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t : t + 1], state)
        rows.append(logits)
    # fp32; chunked vs recurrent sums of the same products: ~1e-6 relative to the logit scale
    torch.testing.assert_close(torch.cat(rows, 1), full, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_prefill_then_decode_equals_the_parallel_forward():
    model = _model(window=8)
    tokens = torch.randint(0, 256, (1, 25), generator=torch.Generator().manual_seed(1))
    full, _ = model(tokens)
    a, state = model(tokens[:, :19])  # parallel prefill builds every layer's state
    rows = [a]
    for t in range(19, 25):
        logits, state = model(tokens[:, t : t + 1], state)
        rows.append(logits)
    torch.testing.assert_close(torch.cat(rows, 1), full, rtol=1e-4, atol=1e-4)


def test_generate_decodes_a_based_model():
    model = _model()
    tok = rwkvkit.load_tokenizer("bytes")
    a = rwkvkit.generate(model, tok, "abc", max_new_tokens=12, top_k=1, seed=0)
    b = rwkvkit.generate(model, tok, "abc", max_new_tokens=12, top_k=1, seed=1)
    assert isinstance(a, str) and a == b  # greedy: the seed does not matter
    # greedy decoding equals the argmax of the parallel forward, token after token
    ids = list(tok.encode("abc"))
    for _ in range(12):
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    assert a == tok.decode(ids[3:])


def test_errors():
    with pytest.raises(ConfigError, match="layer_types"):
        BasedConfig(n_layer=2, d_model=8, n_heads=2, vocab_size=10, layer_types=("conv", "mamba"))
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        BasedConfig(n_layer=2, d_model=10, n_heads=4, vocab_size=10)
    with pytest.raises(InputError, match="token ids"):
        _model()(torch.tensor([[300]]))
