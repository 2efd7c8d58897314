"""ShortConv / BaseConv: the sequence form against a direct sum, and token-by-token decoding with the
carried state against one call."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.layers.short_conv import BaseConv, ShortConv


@pytest.mark.parametrize("k", [1, 3, 4])
def test_short_conv_is_the_causal_sum(k):
    torch.manual_seed(0)
    conv = ShortConv(5, k).double()
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    y, _ = conv(x)
    ref = torch.zeros_like(x) + conv.bias
    for t in range(9):
        for j in range(k):
            s = t - (k - 1) + j
            if s >= 0:
                ref[:, t] += conv.weight[:, j] * x[:, s]
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)  # fp64, same sum


@pytest.mark.parametrize("k", [1, 3])
def test_decoding_token_by_token_equals_one_call(k):
    torch.manual_seed(1)
    layer = BaseConv(8, expand=2, kernel_size=k)
    x = torch.randn(3, 11, 8)
    full, state_full = layer(x)
    state, outs = None, []
    for t in range(11):
        y, state = layer(x[:, t : t + 1], state)
        outs.append(y)
    # fp32: the same products summed in the same order up to conv1d's blocking, ~1e-7
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, state_full, rtol=1e-5, atol=1e-6)  # W_in x, rounded per shape
    a, s = layer(x[:, :4])
    b, _ = layer(x[:, 4:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        ShortConv(4, 0)
    with pytest.raises(ValueError, match=r"\[B, T, 4\]"):
        ShortConv(4)(torch.zeros(2, 3, 5))
