"""The fused RWKV-7 decoding operators (``rwkvkit.inference.fused``) against the Python modules.

``wkv7_step`` is compared with :func:`rwkvkit.ops.rwkv7.step.wkv7_step`; ``block_decode`` with the
optimized model's own ``Block.forward`` (T = 1) on the same inputs. Both sides use the same stored
weights and widen them exactly, so the only differences are summation orders: errors are measured
as ``max |got - want| / max |want|`` and bounded by 1e-5 for every weight precision.
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


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
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
    assert rel(y, want[0][:, 0]) <= REL
    assert rel(att_new, want[1].reshape(B, -1)) <= REL
    assert rel(S_new, want[2]) <= REL
    assert rel(ffn_new, want[3].reshape(B, -1)) <= REL
    assert rel(vf_new, want[4].reshape(B, -1)) <= REL
    # in place: the shifts, the state and (layer 0) v_first are updated in their tensors
    vf2 = vf.clone()
    y2, att2, S2, ffn2, vf_out = fused.block_decode(packed, x[:, None], att, S, ffn, vf2, inplace=True)
    assert att2 is att and S2 is S and ffn2 is ffn
    assert y2.shape == (B, 1, x.shape[1])
    assert torch.equal(y2[:, 0], y) and torch.equal(S, S_new) and torch.equal(att, att_new)
    assert torch.equal(ffn, ffn_new) and torch.equal(vf_out, vf_new)
    if layer == 0:
        assert torch.equal(vf2, vf_new)


def test_block_decode_isas_agree(kernel) -> None:
    model = optimized("C96-N32", "bf16")
    packed = fused.pack_block(model.blocks[1])
    x, att, S, ffn, vf = block_inputs(CONFIGS["C96-N32"], 3, seed=5)
    outs = []
    for isa in (1, 2, 3):
        if kmod.ISAS[kmod.kernel_isa()] < isa:
            continue
        a2, f2, S2 = att.clone(), ffn.clone(), torch.empty_like(S)
        y = torch.ops.rwkvkit_kernels.rwkv7_block_decode(
            x, a2, S, S2, f2, vf, packed.params, packed.scales, packed.layer_id, isa
        )
        outs.append((y, S2))
    for y, S2 in outs[1:]:
        assert rel(y, outs[0][0]) <= REL and rel(S2, outs[0][1]) <= REL


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
    assert rel(logits, want[:, 0]) <= REL * 10
    assert rel(wkv, st_after["wkv"]) <= REL * 10
    assert cfg.n_layer == len(packed)


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
