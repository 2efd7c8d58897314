"""The fast path without asking (``rwkvkit.inference.auto``) and lean loading (``load(path, weights=)``).

The twin shares the model's weights, so against the model itself it differs only by summation order
(kernels vs PyTorch) and, for a bf16 model, by keeping the residual stream in fp32: errors are relative
RMS against the fp32 model, bounds stated next to each comparison with the measured value.
"""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.errors import ConfigError
from rwkvkit.generation import BatchEngine, generate_tokens
from rwkvkit.inference import OptimizedRWKV, optimize
from rwkvkit.inference.auto import ENV_FAST, FloatEmbedding, Int8Embedding, fast_view
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_checkpoint, random_model
from rwkvkit.utils.testing import rel_rms

CONFIGS = {
    "7": RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=96, head_size=32,
                    lora_w=16, lora_a=8, lora_v=8, lora_g=16),
    "6": RWKVConfig(version="6", n_layer=2, n_embd=64, vocab_size=96, head_size=32,
                    lora_mix=8, lora_decay=16),
}  # fmt: skip


@pytest.fixture(autouse=True)
def fast_on(monkeypatch):
    monkeypatch.delenv(ENV_FAST, raising=False)


def tokens(n: int, vocab: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def run(model, ids):
    """Prefill logits, then one decoded step's logits."""
    with torch.inference_mode():
        pre, state = model(ids)
        dec, _ = model(ids[:, :1], state)
    return pre, dec


@pytest.mark.parametrize("version", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_twin_shares_the_weights_and_computes_the_model(version, dtype):
    ref = random_model(CONFIGS[version], seed=1)
    model = random_model(CONFIGS[version], seed=1, dtype=dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = fast_view(model)
    assert isinstance(twin, OptimizedRWKV) and twin is not model
    assert fast_view(model) is twin  # cached
    assert isinstance(twin.emb, FloatEmbedding)
    assert twin.emb.weight.data_ptr() == model.emb.weight.data_ptr()
    assert twin.head.inner.weight.data_ptr() == model.head.weight.data_ptr()  # no copy of a projection
    assert twin.blocks[1].ffn.key.inner.weight.data_ptr() == model.blocks[1].ffn.key.weight.data_ptr()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert type(model) is rwkvkit.RWKV and type(model.emb) is torch.nn.Embedding  # model untouched

    ids = tokens(20)
    want_pre, want_dec = run(ref, ids)
    got_pre, got_dec = run(twin, ids)
    # fp32: summation order only (measured 3e-7); bf16: the bf16 weights (measured 4e-3..7e-3 with
    # the residual stream in fp32, against 1e-2..2e-2 for the plain bf16 model)
    bound = 2e-6 if dtype == torch.float32 else 2e-2
    assert rel_rms(want_pre, got_pre) < bound
    assert rel_rms(want_dec, got_dec) < bound
    if dtype == torch.bfloat16:
        plain_pre, _ = run(model, ids)
        assert rel_rms(want_pre, got_pre) <= rel_rms(want_pre, plain_pre)


def test_a_changed_parameter_makes_a_new_twin():
    model = random_model(CONFIGS["7"], seed=2)
    twin = fast_view(model)
    with torch.no_grad():
        model.blocks[0].att.w0.add_(0.5)  # in place: the twin's fp32 copy would be stale
    new = fast_view(model)
    assert new is not twin
    ids = tokens(12)
    with torch.inference_mode():
        want, _ = model(ids)
    got, _ = run(new, ids)
    assert rel_rms(want, got) < 2e-6  # summation order only (measured 3e-7)


def test_models_that_do_not_qualify_are_used_as_given(monkeypatch):
    model = random_model(CONFIGS["7"], seed=3)
    assert fast_view(model.train()) is model  # training mode
    model.eval()
    fast = optimize(model)
    assert fast_view(fast) is fast  # already fast
    assert fast_view(model.double()) is model  # fp64: the reference dtype
    monkeypatch.setenv(ENV_FAST, "0")
    assert fast_view(model.float()) is model  # switched off


def test_generate_and_the_engine_run_the_twin(monkeypatch):
    model = random_model(CONFIGS["7"], seed=4)
    calls = []
    real = OptimizedRWKV.forward

    def spy(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OptimizedRWKV, "forward", spy)
    out = list(generate_tokens(model, [1, 2, 3], max_new_tokens=4, temperature=0))
    assert len(out) == 4 and calls and all(c is fast_view(model) for c in calls)
    calls.clear()
    engine = BatchEngine(model)
    for prompt in ([1, 2], [3]):
        engine.add(prompt, max_new_tokens=3, temperature=0)
    while engine.has_work:
        engine.step()
    assert calls
    calls.clear()
    monkeypatch.setenv(ENV_FAST, "0")
    list(generate_tokens(model, [1, 2, 3], max_new_tokens=2, temperature=0))
    assert not calls


# ---- rwkvkit.load(path, weights=...) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("lean") / "m.pth"
    return random_checkpoint(CONFIGS["7"], path, seed=5, dtype=torch.bfloat16)


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8", "q4"])
def test_lean_loading_builds_what_optimize_builds(checkpoint, weights):
    lean = rwkvkit.load(checkpoint, weights=weights)
    assert isinstance(lean, OptimizedRWKV) and not lean.training
    assert isinstance(lean.emb, Int8Embedding if weights in ("int8", "q4") else FloatEmbedding)
    fast = optimize(rwkvkit.load(checkpoint), weights=weights)
    ref = rwkvkit.load(checkpoint, dtype="fp32")
    ids = tokens(24)
    want, _ = run(ref, ids)
    got_lean, dec_lean = run(lean, ids)
    got_fast, dec_fast = run(fast, ids)
    # the same stored weights; lean keeps ln0 apart from the table, where optimize folds it in fp32
    # (same numbers), and int8/q4 keep an int8 table: measured lean vs optimize 0 (fp32), 0 (bf16),
    # 1.0e-2 prefill / 1.7e-2 decode (int8), 1.1e-2 / 1.2e-2 (q4)
    # (fp32/bf16 was 2e-3 while optimize folded ln0 into a bf16 table before widening it)
    bound = {"fp32": 1e-6, "bf16": 1e-6, "int8": 3e-2, "q4": 3e-2}[weights]
    assert rel_rms(got_fast, got_lean) < bound
    assert rel_rms(dec_fast, dec_lean) < bound
    # and against the fp32 model (a bf16 file: the fp32 model holds the same numbers): measured
    # 3.3e-7 (fp32), 4.4e-3 (bf16), 1.5e-2 (int8; optimize's int8: 1.3e-2), 0.128 (q4 on this
    # random 64-wide model, as optimize's q4: 0.128; the trained model's figures: test_q4.py)
    assert rel_rms(want, got_lean) < {"fp32": 2e-6, "bf16": 1e-2, "int8": 3e-2, "q4": 0.2}[weights]


@pytest.mark.parametrize("weights", ["int8", "q4"])
def test_lean_quantisation_in_blocks_equals_whole_matrix_quantisation(checkpoint, monkeypatch, weights):
    """Quantising in blocks of rows gives the same bytes as quantising the whole matrix at once."""
    import rwkvkit.inference.loading as loading

    # several blocks and a ragged last one (96 rows: int8 in blocks of 7, q4 of one 16-row panel)
    monkeypatch.setattr(loading, "QUANT_BLOCK_ROWS", 7)
    lean = rwkvkit.load(checkpoint, weights=weights, head=weights)
    whole = optimize(rwkvkit.load(checkpoint), weights=weights, head=weights)
    assert lean.head.inner.out_features > 7  # the head is quantised in several blocks
    for a, b in zip(lean.head.inner.buffers(), whole.head.inner.buffers(), strict=True):
        assert torch.equal(a, b)
    w_lean = lean.blocks[1].ffn.key.inner
    w_whole = whole.blocks[1].ffn.key.inner
    for a, b in zip(w_lean.buffers(), w_whole.buffers(), strict=True):
        assert torch.equal(a, b)


def test_lean_bf16_from_a_bf16_file_copies_no_projection(checkpoint):
    lean = rwkvkit.load(checkpoint, weights="bf16")
    plain = rwkvkit.load(checkpoint)  # the file's own tensors (memory-mapped)
    assert lean.head.inner.weight.dtype == torch.bfloat16 and lean.emb.weight.dtype == torch.bfloat16
    # both are views of the file's mapping: same offsets from the head to the embedding
    lean_gap = lean.head.inner.weight.data_ptr() - lean.emb.weight.data_ptr()
    plain_gap = plain.head.weight.data_ptr() - plain.emb.weight.data_ptr()
    assert lean_gap == plain_gap


def test_lean_loading_refuses_what_it_cannot_do(checkpoint):
    with pytest.raises(ConfigError, match="either dtype"):
        rwkvkit.load(checkpoint, dtype="bf16", weights="int8")
    with pytest.raises(ConfigError, match="CPU inference"):
        rwkvkit.load(checkpoint, weights="int8", device="cuda")
    with pytest.raises(ConfigError, match="weights must be one of"):
        rwkvkit.load(checkpoint, weights="int3")


def test_an_int8_table_is_never_widened_whole(checkpoint, monkeypatch):
    """The model's device/dtype and a decoding step read the int8 rows they need, not the whole table
    (a `weight` property that dequantised it made every step 17x slower)."""
    lean = rwkvkit.load(checkpoint, weights="int8")
    monkeypatch.setattr(Int8Embedding, "dequantize", lambda self: pytest.fail("the whole table was widened"))
    assert lean.device.type == "cpu" and lean.dtype == torch.float32
    run(lean, tokens(8))
