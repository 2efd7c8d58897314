"""The forward of RWKV-6 and RWKV-7 models has no host synchronisation: ``torch.compile`` captures it
whole (``fullgraph=True`` raises at the first graph break) and the compiled model equals eager mode.

A host sync (``int(tensor)``, ``float(tensor)``, ``.item()``, data-dependent Python control flow) is
a graph break under ``fullgraph=True``, so this is also the CPU-side proof that a GPU forward never
waits on the device. The ``aot_eager`` backend traces the captured graph through AOTAutograd (as
inductor does) without generating C++: the check costs seconds, not minutes, on a 2-core CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_model

CONFIGS = {
    "6": RWKVConfig(
        version="6", n_layer=2, n_embd=64, vocab_size=50, head_size=16, lora_mix=8, lora_decay=16
    ),
    "7": RWKVConfig(
        version="7",
        n_layer=2,
        n_embd=64,
        vocab_size=50,
        head_size=16,
        lora_w=8,
        lora_a=8,
        lora_v=8,
        lora_g=16,
    ),
}


@pytest.mark.parametrize("T", [1, 128], ids=["decode-step", "chunked-128"])
@pytest.mark.parametrize("version", ["6", "7"])
def test_fullgraph_compile_equals_eager(version, T):
    model = random_model(CONFIGS[version], seed=1)
    tokens = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(0))
    state = model.initial_state(2)
    # a non-trivial incoming state: 8 tokens of context
    _, state = model(torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1)), state)
    want_logits, want_state = model(tokens, state)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    try:
        logits, new_state = compiled(tokens, state)
    finally:
        torch._dynamo.reset()
    # fp32 throughout; the captured graph runs the same kernels, in the same order, as eager mode
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    for name in want_state.tensors:
        torch.testing.assert_close(new_state[name], want_state[name], rtol=1e-5, atol=1e-6)
    assert new_state.version == version


def test_a_host_sync_in_the_forward_is_caught():
    """The check can fail: a forward that reads a tensor value on the host breaks the graph."""
    model = random_model(CONFIGS["7"], seed=1)

    class Syncing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, tokens):
            if int(tokens.max()) >= 50:  # what the models' forward no longer does on a device
                raise ValueError("out of range")
            return self.inner(tokens)[0]

    torch._dynamo.reset()
    try:
        with pytest.raises(Exception, match="data-dependent"):
            torch.compile(Syncing(), fullgraph=True, backend="aot_eager")(torch.randint(0, 50, (1, 4)))
    finally:
        torch._dynamo.reset()


@pytest.mark.skipif(
    os.environ.get("RWKVKIT_INDUCTOR") != "1",
    reason="inductor generates and compiles C++ (1-3 min per graph on 2 cores); set RWKVKIT_INDUCTOR=1",
)
@pytest.mark.parametrize("T", [1, 128], ids=["decode-step", "chunked-128"])
@pytest.mark.parametrize("version", ["6", "7"])
def test_inductor_compile_equals_eager(version, T):
    """The default backend too. Inductor fuses and reorders fp32 reductions, so the tolerance is
    relative to the tensor's scale: 1e-5 of its largest entry (measured: about 1e-6)."""
    model = random_model(CONFIGS[version], seed=1)
    tokens = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(0))
    state = model.initial_state(2)
    want_logits, want_state = model(tokens, state)
    torch._dynamo.reset()
    try:
        logits, new_state = torch.compile(model, fullgraph=True)(tokens, state)
    finally:
        torch._dynamo.reset()
    for got, want in [(logits, want_logits)] + [(new_state[n], want_state[n]) for n in want_state.tensors]:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
