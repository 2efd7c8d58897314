"""The fused RWKV-7 decoding operators (``rwkvkit.inference.fused``) against the Python modules.

``wkv7_step`` is compared with :func:`rwkvkit.ops.rwkv7.step.wkv7_step`; ``block_decode`` with the
optimized model's own ``Block.forward`` (T = 1) on the same inputs, and the whole-model plan
(``pack_model`` / ``model_decode``) with the blocks chained in Python. Errors are measured as
``max |got - want| / max |want|`` (``rel``):

* fp32 and bf16 weights: both sides widen the same stored weights exactly, so the only differences
  are summation orders: bound 1e-5;
* int8 and q4 weights: both sides quantize each product's input to int8 per block of 32 with the
  same rule (``kernels.gemv.quantize_activations``), but their fp32 inputs differ in the last bits,
  which now and then (~1 in 1e4 values) moves an int8 activation by one step and the outputs that
  depend on it by up to one step times a weight: bound 3e-2 on ``rel`` (observed <= 4.7e-3) and
  5e-3 on the relative RMS (observed <= 1.6e-3); most draws agree to 1e-5.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from rwkvkit.inference import fused, optimize
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_model
from rwkvkit.ops.rwkv7.step import wkv7_step as step_reference

kmod = importlib.import_module("rwkvkit.inference.kernels.gemv")
REL = 1e-5


@pytest.fixture(autouse=True)
def _kernels_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kmod.ENV_DISABLE, raising=False)


@pytest.fixture(scope="module")
def kernel() -> None:
    if not fused.available():
        pytest.skip("the C++ kernel extension is not available here")


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


QUANTIZED = ("int8", "q4")  # products with int8 activations (see the module docstring)


def assert_close(got: torch.Tensor, want: torch.Tensor, weights: str) -> None:
    """Within the bounds of the module docstring for ``weights``."""
    if weights in QUANTIZED:
        assert rel(got, want) <= 3e-2 and ((got - want).norm() / want.norm()).item() <= 5e-3
    else:
        assert rel(got, want) <= REL


def step_inputs(B: int, H: int, N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, H, N, generator=g) for _ in range(3))
    log_w = -torch.rand(B, H, N, generator=g) * 0.6 - 0.01
    kk = torch.nn.functional.normalize(torch.randn(B, H, N, generator=g), dim=-1)
    a, b = -kk, kk * torch.rand(B, H, N, generator=g)
    S = torch.randn(B, H, N, N, generator=g)
    return r, log_w, k, v, a, b, S


# ---- wkv7_step ------------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [1, 3, 17])
@pytest.mark.parametrize("N", [64, 32, 24])
def test_wkv7_step_matches_reference(kernel, B: int, N: int) -> None:
    r, log_w, k, v, a, b, S = step_inputs(B, 2, N)
    o_ref, S_ref = step_reference(r, log_w, k, v, a, b, S)
    S_keep = S.clone()
    o, S_new = fused.wkv7_step(r, log_w, k, v, a, b, S)  # out of place
    assert torch.equal(S, S_keep)
    assert rel(o, o_ref) <= REL and rel(S_new, S_ref) <= REL
    o2, S2 = fused.wkv7_step(r, log_w, k, v, a, b, S, S)  # in place
    assert S2 is S
    assert torch.equal(o2, o) and torch.equal(S, S_new)


@pytest.mark.parametrize("isa", [1, 2, 3])
def test_wkv7_step_every_isa(kernel, isa: int) -> None:
    names = {1: "c++", 2: "avx2", 3: "avx512"}
    if not kmod.ISAS[kmod.kernel_isa()] >= isa:
        pytest.skip(f"this CPU lacks {names[isa]}")
    for N in (64, 40, 7):
        r, log_w, k, v, a, b, S = step_inputs(3, 2, N, seed=N)
        o_ref, S_ref = step_reference(r, log_w, k, v, a, b, S)
        S_out = torch.empty_like(S)
        o = torch.ops.rwkvkit_kernels.wkv7_step(r, log_w, k, v, a, b, S, S_out, isa)
        assert rel(o, o_ref) <= REL and rel(S_out, S_ref) <= REL


def test_wkv7_step_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kmod.ENV_DISABLE, "1")
    r, log_w, k, v, a, b, S = step_inputs(2, 2, 16)
    o_ref, S_ref = step_reference(r, log_w, k, v, a, b, S)
    o, S_new = fused.wkv7_step(r, log_w, k, v, a, b, S, S)
    assert S_new is S and torch.allclose(o, o_ref) and torch.allclose(S, S_ref)


def test_wkv7_step_bad_inputs(kernel) -> None:
    r, log_w, k, v, a, b, S = step_inputs(2, 2, 16)
    with pytest.raises(ValueError, match="log_w must have shape"):
        fused.wkv7_step(r, log_w[:1], k, v, a, b, S)
    with pytest.raises(ValueError, match="float32"):
        fused.wkv7_step(r, log_w, k.double(), v, a, b, S)
    with pytest.raises(ValueError, match="contiguous"):
        fused.wkv7_step(r, log_w, k, v, a, b, S.transpose(-1, -2))
    with pytest.raises(ValueError, match="overlap"):
        flat = torch.zeros(2 * S.numel())
        fused.wkv7_step(
            r, log_w, k, v, a, b, flat[: S.numel()].view(S.shape), flat[8 : S.numel() + 8].view(S.shape)
        )
    with pytest.raises(RuntimeError):  # the operator itself checks too (no crash)
        torch.ops.rwkvkit_kernels.wkv7_step(r, log_w, k, v, a, b[:, :1], S, S, 0)


# ---- block_decode ---------------------------------------------------------------------------------

CONFIGS = {
    "C128-N64": RWKVConfig(version="7", n_layer=2, n_embd=128, vocab_size=64, head_size=64,
                           lora_w=24, lora_a=20, lora_v=12, lora_g=36),
    "C96-N32": RWKVConfig(version="7", n_layer=2, n_embd=96, vocab_size=64, head_size=32,
                          lora_w=17, lora_a=9, lora_v=5, lora_g=23),
    "C60-N20": RWKVConfig(version="7", n_layer=2, n_embd=60, vocab_size=64, head_size=20,
                          lora_w=8, lora_a=8, lora_v=4, lora_g=12),
}  # fmt: skip
_models: dict = {}


def optimized(name: str, weights: str):
    key = (name, weights)
    if key not in _models:
        _models[key] = optimize(random_model(CONFIGS[name], seed=1), weights)
    return _models[key]


def block_inputs(cfg: RWKVConfig, B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    C, H, N = cfg.n_embd, cfg.n_embd // cfg.head_size, cfg.head_size
    x = torch.randn(B, C, generator=g)
    att, ffn, vf = (torch.randn(B, C, generator=g) for _ in range(3))
    S = torch.randn(B, H, N, N, generator=g) * 0.3
    return x, att, S, ffn, vf


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8", "q4"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 2, 5, 16])
@pytest.mark.parametrize("layer", [0, 1])
def test_block_decode_matches_block(kernel, weights: str, name: str, B: int, layer: int) -> None:
    model = optimized(name, weights)
    block = model.blocks[layer]
    packed = fused.pack_block(block)
    x, att, S, ffn, vf = block_inputs(CONFIGS[name], B, seed=B + 10 * layer)
    with torch.no_grad():
        want = block(x[:, None], att, S, ffn, None if layer == 0 else vf[:, None])
    S_keep, att_keep, ffn_keep = S.clone(), att.clone(), ffn.clone()
    got = fused.block_decode(packed, x, att, S, ffn, vf)
    assert torch.equal(S, S_keep) and torch.equal(att, att_keep) and torch.equal(ffn, ffn_keep)
    y, att_new, S_new, ffn_new, vf_new = got
    assert y.shape == x.shape
    assert_close(y, want[0][:, 0], weights)
    assert rel(att_new, want[1].reshape(B, -1)) <= REL  # the LN1 output: before any product
    assert_close(S_new, want[2], weights)
    assert_close(ffn_new, want[3].reshape(B, -1), weights)
    assert_close(vf_new, want[4].reshape(B, -1), weights)
    # in place: the shifts, the state and (layer 0) v_first are updated in their tensors
    vf2 = vf.clone()
    y2, att2, S2, ffn2, vf_out = fused.block_decode(packed, x[:, None], att, S, ffn, vf2, inplace=True)
    assert att2 is att and S2 is S and ffn2 is ffn
    assert y2.shape == (B, 1, x.shape[1])
    assert torch.equal(y2[:, 0], y) and torch.equal(S, S_new) and torch.equal(att, att_new)
    assert torch.equal(ffn, ffn_new) and torch.equal(vf_out, vf_new)
    if layer == 0:
        assert torch.equal(vf2, vf_new)


@pytest.mark.parametrize("weights", ["bf16", "int8", "q4"])
@pytest.mark.parametrize("name", ["C96-N32", "C60-N20"])
def test_block_decode_isas_agree(kernel, name: str, weights: str) -> None:
    """The plain C++, AVX2 and AVX-512 (with and without VNNI) paths against the block (N = 20: the
    vector loops' tails over a head)."""
    model = optimized(name, weights)
    packed = fused.pack_block(model.blocks[1])
    x, att, S, ffn, vf = block_inputs(CONFIGS[name], 3, seed=5)
    with torch.no_grad():
        want = model.blocks[1](x[:, None], att, S, ffn, vf[:, None])
    outs = []
    for isa in (1, 2, 3, 4):
        try:  # whether this CPU runs it (4: AVX-512 VNNI)
            torch.ops.rwkvkit_kernels.quantize_activations(torch.ones(1, 4), isa)
        except RuntimeError:
            continue
        a2, f2, S2 = att.clone(), ffn.clone(), torch.empty_like(S)
        y = torch.ops.rwkvkit_kernels.rwkv7_block_decode(
            x, a2, S, S2, f2, vf, packed.params, packed.scales, packed.layer_id, isa, packed.dim_ffn
        )
        outs.append((y, S2))
    assert len(outs) >= 1
    for y, S2 in outs:
        assert_close(y, want[0][:, 0], weights)
        assert_close(S2, want[2], weights)


def test_block_decode_whole_model_token(kernel) -> None:
    """The fused blocks chained as the model chains them give the model's logits and state."""
    cfg = CONFIGS["C128-N64"]
    model = optimized("C128-N64", "int8")
    packed = [fused.pack_block(b) for b in model.blocks]
    tokens = torch.tensor([[3, 5], [7, 2]])
    with torch.no_grad():
        _, st = model(tokens[:, :1])
        want, st_after = model(tokens[:, 1:], st)  # the second token: from a nonzero state
    att, wkv, ffn = (st[k].clone() for k in ("att_shift", "wkv", "ffn_shift"))
    x = model.emb(tokens[:, 1])
    v_first = None
    for i, p in enumerate(packed):
        x, _, _, _, v_first = fused.block_decode(p, x, att[i], wkv[i], ffn[i], v_first, inplace=True)
    with torch.no_grad():
        logits = model.head(model.ln_out(x))
    assert_close(logits, want[:, 0], "int8")
    assert_close(wkv, st_after["wkv"], "int8")
    assert cfg.n_layer == len(packed)


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8", "q4"])
@pytest.mark.parametrize("B", [1, 3])
def test_model_plan_matches_the_blocks_chained(kernel, weights: str, B: int) -> None:
    """pack_model / model_decode (every block and the head in one call) against block_decode per
    block and the head in Python: the blocks run the same code (same bits); the head's input
    (ln_out) is computed in C++ on one side, in PyTorch on the other."""
    model = optimized("C128-N64", weights)
    plan = fused.pack_model(model)
    assert plan is not None and plan.head and plan.n_layer == 2
    g = torch.Generator().manual_seed(B)
    tokens = torch.randint(0, 64, (B,), generator=g)
    L, C, H, N = 2, 128, 2, 64
    att, ffn = torch.randn(L, B, C, generator=g), torch.randn(L, B, C, generator=g)
    S = torch.randn(L, B, H, N, N, generator=g) * 0.3
    att0, ffn0 = att.clone(), ffn.clone()
    att2, ffn2, S_out = att.clone(), ffn.clone(), torch.empty_like(S)
    logits = fused.model_decode(model, plan, tokens, att2, S, S_out, ffn2)
    x, vf = model.emb(tokens).float(), torch.empty(B, C)
    S_chain = S.clone()
    for i, p in enumerate(model._packed_blocks()):
        x = fused.block_decode(p, x, att[i], S_chain[i], ffn[i], vf, inplace=True)[0]
    with torch.no_grad():
        want = model.head(model.ln_out(x)).float()
    assert torch.equal(att2, att) and torch.equal(ffn2, ffn) and torch.equal(S_out, S_chain)
    assert_close(logits, want, weights)
    # without the head (the operator cannot take it, say): the last block's output
    bare = torch.classes.rwkvkit_kernels.Rwkv7Plan(
        [t for p in model._packed_blocks() for t in p.params],
        [t for p in model._packed_blocks() for t in p.scales],
        model._packed_blocks()[0].dim_ffn, [], 0, 1e-5, 0,
    )  # fmt: skip
    out = fused.model_decode(model, fused.PackedModel(bare, 2, False), tokens, att0, S, S_out, ffn0)
    assert torch.equal(out, want) and torch.equal(att0, att)  # the same blocks, the head in Python


def test_model_plan_checks(kernel) -> None:
    model = optimized("C128-N64", "q4")
    plan = fused.pack_model(model).plan
    B, L, C = 2, 2, 128
    x, att, ffn = torch.randn(B, C), torch.randn(L, B, C), torch.randn(L, B, C)
    S = torch.randn(L, B, 2, 64, 64)
    with pytest.raises(RuntimeError, match="att_shift"):  # errors, not crashes
        plan.step(x, att[:1], S, S, ffn)
    with pytest.raises(RuntimeError, match="overlap"):
        flat = torch.zeros(2 * S.numel())
        plan.step(x, att, flat[: S.numel()].view(S.shape), flat[8 : S.numel() + 8].view(S.shape), ffn)
    with pytest.raises(RuntimeError, match="params must hold"):
        torch.classes.rwkvkit_kernels.Rwkv7Plan([torch.zeros(1)], [None] * 6, 0, [], 0, 1e-5, 0)


def test_block_decode_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    model = optimized("C96-N32", "fp32")
    packed = fused.pack_block(model.blocks[1])
    x, att, S, ffn, vf = block_inputs(CONFIGS["C96-N32"], 2, seed=3)
    with torch.no_grad():
        want = model.blocks[1](x[:, None], att, S, ffn, vf[:, None])
    monkeypatch.setenv(kmod.ENV_DISABLE, "1")
    y, att_new, S_new, ffn_new, _ = fused.block_decode(packed, x, att, S, ffn, vf)
    assert rel(y, want[0][:, 0]) <= REL and rel(S_new, want[2]) <= REL  # gemv reference vs kernel: order only
    assert torch.equal(att_new, want[1].reshape(2, -1)) and rel(ffn_new, want[3].reshape(2, -1)) <= REL


def test_block_decode_bad_inputs(kernel) -> None:
    model = optimized("C96-N32", "fp32")
    packed = fused.pack_block(model.blocks[1])
    x, att, S, ffn, vf = block_inputs(CONFIGS["C96-N32"], 2, seed=3)
    with pytest.raises(ValueError, match="x must be"):
        fused.block_decode(packed, x[:, :10], att, S, ffn, vf)
    with pytest.raises(ValueError, match="att_shift"):
        fused.block_decode(packed, x, att[:1], S, ffn, vf)
    with pytest.raises(ValueError, match="S_in"):
        fused.block_decode(packed, x, att, S.double(), ffn, vf)
    with pytest.raises(ValueError, match="v_first"):
        fused.block_decode(packed, x, att, S, ffn, None)
    with pytest.raises(ValueError, match="float32"):
        fused.block_decode(packed, x.double(), att, S, ffn, vf)
    with pytest.raises(ValueError, match="pack_block"):
        fused.block_decode(model.blocks[1], x, att, S, ffn, vf)
    with pytest.raises(ValueError, match="RWKV-7"):
        fused.pack_block(torch.nn.Linear(3, 3))
    with pytest.raises(RuntimeError):  # the operator's own checks: an error, not a crash
        bad = list(packed.params)
        bad[12] = bad[12][:, :3].contiguous()
        torch.ops.rwkvkit_kernels.rwkv7_block_decode(x, att, S, S, ffn, vf, bad, packed.scales, 1, 0)


def test_block_decode_0p1b_shape(kernel) -> None:
    """The real 0.1B block shape (C 768, N 64, F 3072, LoRA 64/64/32/128), bf16, layer 1."""
    cfg = RWKVConfig(
        version="7", n_layer=2, n_embd=768, vocab_size=16, lora_w=64, lora_a=64, lora_v=32, lora_g=128
    )
    model = optimize(random_model(cfg, seed=2), "bf16")
    packed = fused.pack_block(model.blocks[1])
    x, att, S, ffn, vf = block_inputs(cfg, 2, seed=7)
    with torch.no_grad():
        want = model.blocks[1](x[:, None], att, S, ffn, vf[:, None])
    y, att_new, S_new, ffn_new, _ = fused.block_decode(packed, x, att, S, ffn, vf)
    assert rel(y, want[0][:, 0]) <= REL and rel(S_new, want[2]) <= REL
    assert rel(ffn_new, want[3].reshape(2, -1)) <= REL


@pytest.mark.parametrize("weights", ["bf16", "int8", "q4"])
def test_model_plan_every_isa(kernel, weights: str) -> None:
    """The whole-model plan forced to the plain C++ / AVX2 / AVX-512 paths agrees with the best one."""
    model = optimized("C60-N20", weights)
    blocks = model._packed_blocks()
    ln, head = model.ln_out, fused._proj(model.head, "head")
    hp = [ln.weight.float(), ln.bias.float(), head[0]] + ([head[1]] if head[1] is not None else [])
    B, L, C, H, N = 2, 2, 60, 3, 20
    g = torch.Generator().manual_seed(0)
    x, att, ffn = (torch.randn(*shape, generator=g) for shape in ((B, C), (L, B, C), (L, B, C)))
    S = torch.randn(L, B, H, N, N, generator=g) * 0.3
    params, scales = [t for p in blocks for t in p.params], [t for p in blocks for t in p.scales]
    outs = []
    for isa in (0, 1, 2, 3):
        try:
            plan = torch.classes.rwkvkit_kernels.Rwkv7Plan(
                params, scales, blocks[0].dim_ffn, hp, head[2], ln.eps, isa
            )
        except RuntimeError:  # this CPU lacks it
            continue
        a2, f2, S2 = att.clone(), ffn.clone(), torch.empty_like(S)
        outs.append((plan.step(x, a2, S, S2, f2), S2))
    assert len(outs) >= 2
    for logits, S2 in outs[1:]:
        assert_close(logits, outs[0][0], weights)
        assert_close(S2, outs[0][1], weights)
