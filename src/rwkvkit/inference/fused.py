"""Fused C++ operators for RWKV-7 decoding on CPU: one WKV-7 step, one whole block, or the whole model
per call.

Decoding one token through the Python modules (:class:`rwkvkit.layers.rwkv7.RWKV7TimeMix`,
:class:`~rwkvkit.layers.rwkv7.RWKV7ChannelMix`, ``Block.forward``) costs ~50 small PyTorch ops per
block; :func:`block_decode` does the same block in one operator call, and :func:`wkv7_step` updates
the WKV state in one pass over memory. Both live in the kernel extension of
:mod:`rwkvkit.inference.kernels.gemv` (``rwkv7_decode.cpp``, built with ``gemv.cpp`` on first use);
where it cannot be built, or ``RWKVKIT_NO_KERNELS=1`` is set, they compute the same thing with the
PyTorch modules.

Operators (``torch.ops.rwkvkit_kernels``; the .cpp file documents them in full):

* ``wkv7_step(r, log_w, k, v, a, b, S_in, S_out, isa=0) -> o``: r, log_w, k, v, a, b ``[B, H, N]``,
  states ``[B, H, N, N]`` key-major, all fp32 contiguous; ``S_out`` may be ``S_in`` (in place).
* ``rwkv7_block_decode(x, att_shift, S_in, S_out, ffn_shift, v_first, params, scales, layer_id,
  isa=0, dim_ffn=0) -> x_out``: x ``[B, C]``; ``att_shift``, ``ffn_shift`` ``[B, C]`` updated in place,
  ``S_out`` written (may be ``S_in``), ``v_first [B, C]`` written at layer 0 and read after.
  ``params`` is the list of 33 tensors built by :func:`pack_block` (order in :data:`PARAM_NAMES`),
  ``scales`` 6 optional scales of the projections ``W_r, W_k, W_v, W_o, ffn key, ffn value`` (per-row
  fp32 for int8 weights; the int16 block scales for 4-bit ones, see
  :class:`~rwkvkit.inference.quant.Q4Linear`).
* ``torch.classes.rwkvkit_kernels.Rwkv7Plan(params, scales, dim_ffn, head, head_rows, eps, isa)``:
  every block's ``params`` and ``scales`` (concatenated), and optionally ``[ln_out.weight, ln_out.bias,
  head weight(, scale)]``, checked once; ``plan.step(x, att_shift, S_in, S_out, ffn_shift)`` then
  decodes one token through the whole model (states ``[L, ...]``) in one call and one parallel region
  (:func:`pack_model`, :func:`model_decode`). Inside a block the threads meet at five barriers: after
  r/k/v and the LoRA down-projections, after the per-head work (LoRA up-projections of the thread's
  heads, WKV, GroupNorm), after the output projection, after the FFN key, after the FFN value; every
  thread computes the LayerNorms and token-shift mixes it needs itself, which is cheaper than a
  barrier.
* ``rwkv7_decode_profile(enable) -> Tensor``: per-stage timers of the two decoding operators (thread
  0, summed; returned and reset at each call; see ``benchmarks/decode_bound.py --profile``).

Usage, one token for a model returned by :func:`rwkvkit.inference.optimize`::

    packed = [pack_block(b) for b in model.blocks]           # once
    x = model.emb(tokens)                                    # [B, C]
    v_first = None
    for i, p in enumerate(packed):
        x, att[i], wkv[i], ffn[i], v_first = block_decode(p, x, att[i], wkv[i], ffn[i], v_first)

    plan = pack_model(model)                                 # or: all blocks and the head at once
    logits = model_decode(model, plan, tokens, att, wkv, wkv, ffn)   # [B, V]; states updated in place
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.inference.kernels.gemv import DecodeLinear
from rwkvkit.inference.pages import to_huge_pages
from rwkvkit.inference.quant import Int8Linear, Q4Linear
from rwkvkit.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix
from rwkvkit.models.rwkv.versions import spec_of
from rwkvkit.ops.rwkv7.step import wkv7_step as _torch_wkv7_step

log = logging.getLogger("rwkvkit.inference")
_kmod = importlib.import_module("rwkvkit.inference.kernels.gemv")  # the module (kernels.gemv is a function)

__all__ = [
    "PARAM_NAMES", "PackedBlock", "pack_block", "block_decode", "wkv7_step", "available", "PackedModel",
    "pack_model", "model_decode",
]  # fmt: skip

# The order of ``params`` in ``rwkv7_block_decode``: the RWKV-7 version spec's packing.
PARAM_NAMES = spec_of("7").fused_params
SCALE_NAMES = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")
_LN_EPS, _GN_EPS = 1e-5, 64e-5  # what the C++ operator uses


def _kernels():
    """The ``torch.ops.rwkvkit_kernels`` namespace once the extension is loaded, or None."""
    if _kmod._disabled() or _kmod._load() is None:
        return None
    ops = torch.ops.rwkvkit_kernels
    if not hasattr(ops, "rwkv7_block_decode"):  # an extension built from older sources
        return None
    return ops


def available() -> bool:
    """Whether the fused C++ operators run (False: the PyTorch fallback is used)."""
    return _kernels() is not None


# ---- wkv7_step ------------------------------------------------------------------------------------


def _check_f32(name: str, t: object, shape: tuple[int, ...] | None = None, op: str = "wkv7_step") -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise ValueError(f"{op}: {name} must be float32, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{op}: {name} must be a CPU tensor, got device {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous")


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 != b0 and a0 < b0 + b.numel() * 4 and b0 < a0 + a.numel() * 4


@torch.no_grad()
def wkv7_step(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    S_in: torch.Tensor,
    S_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One WKV-7 step in one pass over the state; returns ``(o [B, H, N], S_out)``.

    Args:
        r, log_w, k, v, a, b: float32 contiguous ``[B, H, N]`` (decay ``exp(log_w)``).
        S_in: float32 contiguous ``[B, H, N, N]`` state, key-major (``S[i, j]``, i = key, j = value).
        S_out: where the new state goes: None (a new tensor), ``S_in`` itself (in place) or a tensor
            of the same shape that does not overlap ``S_in``.

    Same math as :func:`rwkvkit.ops.rwkv7.step.wkv7_step`, which runs when the extension is
    unavailable. Raises ValueError on bad shapes, dtypes, devices or layouts.
    """
    if not isinstance(r, torch.Tensor) or r.dim() != 3:
        raise ValueError(f"wkv7_step: r must be a [B, H, N] tensor, got {getattr(r, 'shape', type(r))}")
    B, H, N = r.shape
    for name, t in zip(("r", "log_w", "k", "v", "a", "b"), (r, log_w, k, v, a, b)):
        _check_f32(name, t, (B, H, N))
    _check_f32("S_in", S_in, (B, H, N, N))
    if S_out is None:
        S_out = torch.empty_like(S_in)
    else:
        _check_f32("S_out", S_out, (B, H, N, N))
        if _overlap(S_in, S_out):
            raise ValueError("wkv7_step: S_out must be S_in itself or not overlap it")
    ops = _kernels()
    if ops is None:
        o, S = _torch_wkv7_step(r, log_w, k, v, a, b, S_in)
        S_out.copy_(S)
        return o, S_out
    return ops.wkv7_step(r, log_w, k, v, a, b, S_in, S_out, 0), S_out


# ---- block_decode ---------------------------------------------------------------------------------


@dataclass
class PackedBlock:
    """The tensors of one RWKV-7 block in the order ``rwkv7_block_decode`` takes them (see
    :data:`PARAM_NAMES`); references to the block's own storage except the transposed LoRA matrices.
    """

    block: nn.Module  # the Python block: the fallback path
    layer_id: int
    n_embd: int
    n_head: int
    head_size: int
    dim_ffn: int
    params: list[torch.Tensor] = field(repr=False)
    scales: list[torch.Tensor | None] = field(repr=False)
    ln0: tuple[torch.Tensor, torch.Tensor, float] | None = field(default=None, repr=False)


def _proj(module: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(weight, scale or None, out_features)`` of a projection as the fused operator takes it:
    DecodeLinear, nn.Linear (fp32/bf16, weight ``[out, in]``), Int8Linear (int8 weight, fp32 scale)
    or Q4Linear (``qweight`` uint8 and its int16 ``scales``)."""
    inner = module.inner if isinstance(module, DecodeLinear) else module
    if isinstance(inner, Q4Linear):
        w, s, out = inner.qweight, inner.scales, inner.out_features
    elif isinstance(inner, Int8Linear):
        w, s, out = inner.weight_int8, inner.scale.float(), inner.out_features
    elif isinstance(inner, nn.Linear):
        w, s, out = inner.weight, None, inner.out_features
    else:
        raise ValueError(f"pack_block: {name} is a {type(module).__name__}, not a linear layer")
    if getattr(inner, "bias", None) is not None:
        raise ValueError(f"pack_block: {name} has a bias; RWKV-7 projections have none")
    if w.dtype not in (torch.float32, torch.bfloat16, torch.int8, torch.uint8):
        raise ValueError(f"pack_block: {name} weight is {w.dtype}; optimize() the model first")
    if w.dtype == torch.int8:
        s = s.detach().float().contiguous()
    return w.detach().contiguous(), None if s is None else s.detach().contiguous(), out


@torch.no_grad()
def pack_block(block: nn.Module) -> PackedBlock:
    """Gather (once) what :func:`block_decode` needs from an RWKV-7 ``Block``.

    Meant for blocks of a model returned by :func:`rwkvkit.inference.optimize` (fp32/bf16/int8/q4
    projections; everything else fp32), but takes plain fp32 models too. The projection weights are
    referenced, not copied; the LoRA matrices are copied once to contiguous fp32, the down-projections
    transposed, the up-projections head-major; ``[1, 1, C]``
    parameters become ``[C]`` views. A block 0 whose ``ln0`` was not folded (no ``optimize``) gets it
    applied in Python before the operator.
    """
    att, ffn = getattr(block, "att", None), getattr(block, "ffn", None)
    if not isinstance(att, RWKV7TimeMix) or not isinstance(ffn, RWKV7ChannelMix):
        raise ValueError(f"pack_block: expected an RWKV-7 Block, got {type(block).__name__} with att "
                         f"{type(att).__name__} and ffn {type(ffn).__name__}")  # fmt: skip
    H, N = att.n_head, att.head_size
    C = H * N
    for name, ln, eps in (
        ("ln1", block.ln1, _LN_EPS),
        ("ln2", block.ln2, _LN_EPS),
        ("att.ln_x", att.ln_x, _GN_EPS),
    ):
        if abs(ln.eps - eps) > 1e-12 * eps or ln.weight is None or ln.bias is None:
            raise ValueError(f"pack_block: {name} must be affine with eps {eps}, got eps {ln.eps}")

    def vec(t: torch.Tensor, name: str) -> torch.Tensor:
        if t.numel() != C:
            raise ValueError(f"pack_block: {name} has {t.numel()} values, expected C = {C}")
        return t.detach().float().reshape(C).contiguous()

    def lora_t(t: torch.Tensor) -> torch.Tensor:  # [in, out] -> [out, in]: a gemv weight
        return t.detach().float().t().contiguous()

    def lora_h(t: torch.Tensor) -> torch.Tensor:  # [D, C] -> [H, D, N]: each head's weights contiguous
        return t.detach().float().reshape(t.shape[0], H, N).transpose(0, 1).contiguous()

    Wr, sr, _ = _proj(att.receptance, "att.receptance")
    Wk, sk, _ = _proj(att.key, "att.key")
    Wv, sv, _ = _proj(att.value, "att.value")
    Wo, so, _ = _proj(att.output, "att.output")
    Fk, sfk, dim_ffn = _proj(ffn.key, "ffn.key")
    Fv, sfv, _ = _proj(ffn.value, "ffn.value")
    params = [
        vec(block.ln1.weight, "ln1.weight"), vec(block.ln1.bias, "ln1.bias"),
        vec(block.ln2.weight, "ln2.weight"), vec(block.ln2.bias, "ln2.bias"),
        *(vec(getattr(att, n), f"att.{n}") for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")),
        vec(att.w0, "att.w0"), lora_t(att.w1), lora_h(att.w2),
        vec(att.a0, "att.a0"), lora_t(att.a1), lora_h(att.a2),
        vec(att.v0, "att.v0"), lora_t(att.v1), lora_h(att.v2),
        lora_t(att.g1), lora_h(att.g2),
        vec(att.k_k, "att.k_k"), vec(att.k_a, "att.k_a"), att.r_k.detach().float().reshape(H, N).contiguous(),
        vec(att.ln_x.weight, "att.ln_x.weight"), vec(att.ln_x.bias, "att.ln_x.bias"),
        Wr, Wk, Wv, Wo,
        vec(ffn.x_k, "ffn.x_k"), Fk, Fv,
    ]  # fmt: skip
    ln0 = getattr(block, "ln0", None)
    packed_ln0 = None
    if isinstance(ln0, nn.LayerNorm):
        packed_ln0 = (ln0.weight.detach().float(), ln0.bias.detach().float(), ln0.eps)
    return PackedBlock(
        block=block,
        layer_id=att.layer_id,
        n_embd=C,
        n_head=H,
        head_size=N,
        dim_ffn=dim_ffn,
        params=params,
        scales=[sr, sk, sv, so, sfk, sfv],
        ln0=packed_ln0,
    )


@torch.no_grad()
def block_decode(
    packed: PackedBlock,
    x: torch.Tensor,
    att_shift: torch.Tensor,
    S_in: torch.Tensor,
    ffn_shift: torch.Tensor,
    v_first: torch.Tensor | None,
    S_out: torch.Tensor | None = None,
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One RWKV-7 block for one token: ``Block.forward`` with T = 1 in one operator call.

    Args:
        packed: from :func:`pack_block`.
        x: float32 ``[B, C]`` (or ``[B, 1, C]``) block input.
        att_shift, ffn_shift: float32 ``[B, C]`` token-shift states.
        S_in: float32 contiguous ``[B, H, N, N]`` WKV state.
        v_first: layer 0's values ``[B, C]`` (or ``[B, 1, C]``); ignored (may be None) at layer 0.
        S_out: where the new WKV state goes: None (``S_in`` when ``inplace``, else a new tensor),
            ``S_in`` itself, or a non-overlapping ``[B, H, N, N]`` tensor.
        inplace: update ``att_shift`` and ``ffn_shift`` in their tensors (which must then be
            contiguous) instead of returning new ones; at layer 0, a given ``v_first`` of the right
            shape receives the new values too.

    Returns:
        ``(x, att_shift, wkv_state, ffn_shift, v_first)`` like ``Block.forward``: ``x`` in the input's
        shape, the others ``[B, C]`` / ``[B, H, N, N]``.

    Raises ValueError on bad shapes, dtypes, devices or layouts.
    """
    op = "block_decode"
    if not isinstance(packed, PackedBlock):
        raise ValueError(f"{op}: packed must come from pack_block, got {type(packed).__name__}")
    C, H, N = packed.n_embd, packed.n_head, packed.head_size
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() not in (2, 3)
        or x.shape[-1] != C
        or (x.dim() == 3 and x.shape[1] != 1)
    ):
        raise ValueError(f"{op}: x must be [B, {C}] or [B, 1, {C}], got {getattr(x, 'shape', type(x))}")
    B = x.shape[0]
    x2 = x.reshape(B, C)
    _check_f32("x", x2.contiguous(), (B, C), op)
    for name, t in (("att_shift", att_shift), ("ffn_shift", ffn_shift)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (B, C):
            raise ValueError(f"{op}: {name} must be [{B}, {C}], got {getattr(t, 'shape', type(t))}")
        if inplace:
            _check_f32(name, t, (B, C), op)
        elif t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"{op}: {name} must be a float32 CPU tensor, got {t.dtype} on {t.device}")
    _check_f32("S_in", S_in, (B, H, N, N), op)
    if S_out is None:
        S_out = S_in if inplace else torch.empty_like(S_in)
    else:
        _check_f32("S_out", S_out, (B, H, N, N), op)
        if _overlap(S_in, S_out):
            raise ValueError(f"{op}: S_out must be S_in itself or not overlap it")
    first = packed.layer_id == 0
    if not first or v_first is not None:
        if not isinstance(v_first, torch.Tensor) or v_first.numel() != B * C or v_first.shape[0] != B:
            raise ValueError(f"{op}: v_first must be [{B}, {C}] at layer {packed.layer_id}, got "
                             f"{getattr(v_first, 'shape', None)}")  # fmt: skip
        if v_first.dtype != torch.float32 or v_first.device.type != "cpu":
            raise ValueError(
                f"{op}: v_first must be a float32 CPU tensor, got {v_first.dtype} on {v_first.device}"
            )
    if packed.ln0 is not None:  # block 0 of a model whose ln0 was not folded into the embedding
        w0, b0, eps = packed.ln0
        x2 = F.layer_norm(x2, (C,), w0, b0, eps)

    ops = _kernels()
    if ops is None:
        return _block_fallback(packed, x, x2, att_shift, S_in, S_out, ffn_shift, v_first, inplace)

    xin = x2.contiguous()
    att = att_shift if inplace else att_shift.contiguous().clone()
    ffn = ffn_shift if inplace else ffn_shift.contiguous().clone()
    if first:
        vf = v_first.reshape(B, C) if (inplace and v_first is not None and v_first.is_contiguous()) else None
        if vf is None:
            vf = torch.empty(B, C, dtype=torch.float32)
    else:
        vf = v_first.reshape(B, C).contiguous()
    out = ops.rwkv7_block_decode(
        xin, att, S_in, S_out, ffn, vf, packed.params, packed.scales, packed.layer_id, 0, packed.dim_ffn
    )
    return out.view(x.shape), att, S_out, ffn, vf


def _block_fallback(packed, x, x2, att_shift, S_in, S_out, ffn_shift, v_first, inplace):
    """``block(x[:, None], ...)`` with the same in/out conventions as the operator."""
    block = packed.block
    B, C = x2.shape
    vf_in = None if packed.layer_id == 0 else v_first.reshape(B, 1, C)
    ln0 = getattr(block, "ln0", None)
    if isinstance(ln0, nn.LayerNorm):  # applied above already
        block.ln0 = nn.Identity()
    try:
        y, att, S, ffn, vf = block(x2[:, None], att_shift, S_in, ffn_shift, vf_in)
    finally:
        if isinstance(ln0, nn.LayerNorm):
            block.ln0 = ln0
    S_out.copy_(S)
    att, ffn, vf = att.reshape(B, C), ffn.reshape(B, C), vf.reshape(B, C)
    if inplace:
        att_shift.copy_(att)
        ffn_shift.copy_(ffn)
        att, ffn = att_shift, ffn_shift
        if packed.layer_id == 0 and v_first is not None and v_first.is_contiguous():
            v_first.view(B, C).copy_(vf)
            vf = v_first.view(B, C)
    else:
        att, ffn, vf = att.contiguous().clone(), ffn.contiguous().clone(), vf.contiguous()
    return y.view(x.shape), att, S_out, ffn, vf


# ---- the whole model -------------------------------------------------------------------------------


@dataclass
class PackedModel:
    """A model's decoding step as one C++ call (``torch.classes.rwkvkit_kernels.Rwkv7Plan``): every
    block, then ``ln_out`` and the head when ``head`` (else those run in Python)."""

    plan: object = field(repr=False)
    n_layer: int
    head: bool
    # block 0's LayerNorm when it was not folded into the embedding (the inference twin, lean loading
    # keep the table as stored): applied to the embedding rows in Python before the operator
    ln0: tuple[torch.Tensor, torch.Tensor, float] | None = field(default=None, repr=False)


@torch.no_grad()
def pack_model(model: nn.Module) -> PackedModel | None:
    """The decoding plan of an RWKV-7 model returned by :func:`rwkvkit.inference.optimize` (or by
    lean loading, or the inference twin), or None where the C++ operators are unavailable.

    The plan checks every tensor once and keeps references to them; per token it then costs one
    operator call and one parallel region for the whole model, where calling :func:`block_decode`
    per block costs ~40 us of Python and checks per block. It reads the weights in place: rebuild
    it (``optimize`` again) after changing them.
    """
    if _kernels() is None:
        return None
    blocks = [pack_block(b) for b in model.blocks]
    if any(p.ln0 is not None for p in blocks[1:]):
        return None  # only block 0 has an ln0
    # the LoRA matrices are pack_block's own copies: into 2 MB pages too (pages.py)
    lora = [i for i, n in enumerate(PARAM_NAMES) if n.endswith(("^T", "^H"))]
    moved = to_huge_pages([p.params[i] for p in blocks for i in lora], min_bytes=8 * 2**20)
    if moved is not None:
        for j, p in enumerate(blocks):
            for k, i in enumerate(lora):
                p.params[i] = moved[j * len(lora) + k]
    params = [t for p in blocks for t in p.params]
    scales = [s for p in blocks for s in p.scales]
    head: list[torch.Tensor] = []
    rows = 0
    ln = getattr(model, "ln_out", None)
    if isinstance(ln, nn.LayerNorm) and ln.weight is not None and ln.bias is not None:
        try:
            w, s, rows = _proj(model.head, "head")
        except ValueError:
            pass  # a head the operator cannot take: ln_out and the head run in Python
        else:
            head = [ln.weight.detach().float().contiguous(), ln.bias.detach().float().contiguous(), w]
            head += [s] if s is not None else []
    eps = float(ln.eps) if head else 1e-5
    plan = torch.classes.rwkvkit_kernels.Rwkv7Plan(params, scales, blocks[0].dim_ffn, head, rows, eps, 0)
    return PackedModel(plan=plan, n_layer=len(blocks), head=bool(head), ln0=blocks[0].ln0)


@torch.no_grad()
def model_decode(
    model: nn.Module,
    packed: PackedModel,
    tokens: torch.Tensor,
    att_shift: torch.Tensor,
    S_in: torch.Tensor,
    S_out: torch.Tensor,
    ffn_shift: torch.Tensor,
) -> torch.Tensor:
    """Logits ``[B, V]`` (fp32) of one token per sequence ``tokens [B]``; ``att_shift``, ``ffn_shift``
    ``[L, B, C]`` updated in place, the WKV state read from ``S_in [L, B, H, N, N]`` and written to
    ``S_out`` (may be ``S_in``); all fp32 contiguous, checked by the operator."""
    x = model.emb(tokens).float()
    if packed.ln0 is not None:
        w0, b0, eps = packed.ln0
        x = F.layer_norm(x, (x.shape[-1],), w0, b0, eps)
    out = packed.plan.step(x, att_shift, S_in, S_out, ffn_shift)
    return out if packed.head else model.head(model.ln_out(out)).float()
