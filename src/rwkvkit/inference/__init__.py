"""Fast inference on CPU: ``optimize(model)`` returns a copy prepared for prefill and decoding.

What it does, in order (every step is optional and exact up to the chosen weight precision):

1. folds the first LayerNorm (``blocks.0.ln0``) into the embedding rows, so a token costs one row
   lookup and nothing else;
2. stores the projection weights in ``weights`` precision: ``"fp32"``, ``"bf16"``, ``"int8"``
   (weight-only, symmetric per-output-channel scales) or ``"q4"`` (GGUF Q4_0 values, the head int8
   unless ``head`` says otherwise; :mod:`rwkvkit.inference.quant`). LoRA matrices, norms and the
   decay parameters keep their precision; the recurrent state and the WKV accumulation stay fp32
   whatever the weights are;
3. routes small-batch matrix products (decoding: ``M <= 16`` rows) to matrix-vector kernels that
   read the weights near the memory bandwidth (:mod:`rwkvkit.inference.kernels`; int8 and q4 weights
   with int8 activations), falling back to PyTorch, with one logged warning, where the kernels cannot
   be built. An RWKV-7 model decodes a token in one C++ call (every block and the head:
   :func:`rwkvkit.inference.fused.pack_model`);
4. places the weights (all but the embedding) in memory backed by 2 MB pages where Linux gives them
   (:mod:`rwkvkit.inference.pages`): fewer TLB misses and prefetcher restarts while streaming them.

Prefill goes through the chunked WKV operators and ordinary matrix products. The result is an
ordinary :class:`rwkvkit.models.rwkv.model.RWKV` (same ``forward(tokens, state)``), for inference
only: its state dict differs from the checkpoint's (no ``ln0``; int8 or 4-bit weights), so save the
original.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError
from rwkvkit.inference import fused
from rwkvkit.inference.kernels.gemv import MAX_GEMV_ROWS, DecodeLinear
from rwkvkit.inference.pages import place_weights_
from rwkvkit.inference.quant import WEIGHTS, Int8Linear, Q4Linear, quantize_
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.state import State

log = logging.getLogger("rwkvkit.inference")


@torch.no_grad()
def fold_ln0_(model: nn.Module) -> nn.Module:
    """Replace ``emb`` by ``LN0(emb)`` (computed in fp32) and ``blocks[0].ln0`` by the identity."""
    block0 = model.blocks[0]
    ln0 = getattr(block0, "ln0", None)
    if isinstance(ln0, nn.LayerNorm):
        w = model.emb.weight
        folded = F.layer_norm(w.float(), ln0.normalized_shape, ln0.weight.float(), ln0.bias.float(), ln0.eps)
        w.copy_(folded.to(w.dtype))
        block0.ln0 = nn.Identity()
    return model


def _wrap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.Linear, Int8Linear, Q4Linear)):
            setattr(module, name, DecodeLinear(child))
        else:
            _wrap_linears(child)


_allocator_tuned = False


def tune_allocator() -> bool:
    """Keep freed memory in the process for reuse (glibc ``mallopt``); True if it was applied.

    By default glibc serves every allocation above 128 KB-32 MB with a fresh ``mmap`` and returns it
    to the system when freed, so each new large tensor pays page faults on first touch. Decoding a
    batch allocates the same few large tensors (the batch state: 12.6 MB per layer for 64 sequences of
    the 0.1B model) every step: with the threshold at its 32 MB maximum and no trimming, measured
    batch-64 decoding went from 181 to 114 ms per step. The cost: freed memory stays in the process
    (resident size does not shrink). Applied once per process, on Linux with glibc only.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
        ok &= libc.mallopt(M_TOP_PAD, 256 * 2**20) == 1
    except (OSError, AttributeError):
        return False
    _allocator_tuned = bool(ok)
    log.info("rwkvkit: glibc allocator tuned for inference (%s)", "ok" if ok else "refused")
    return _allocator_tuned


class OptimizedRWKV(RWKV):
    """The model :func:`optimize` returns: an :class:`RWKV` whose forward takes the fast paths.

    * one token per sequence (decoding) of an RWKV-7 model, at most ``MAX_GEMV_ROWS`` sequences: one
      call of the fused C++ decoding plan for the whole model (:func:`rwkvkit.inference.fused.
      model_decode`: per block LayerNorms, token shift, LoRAs, projections through the matrix-vector
      kernels, WKV step, GroupNorm, channel mix; then ``ln_out`` and the head), writing the new state
      straight into the returned :class:`State` (block by block, :func:`~rwkvkit.inference.fused.
      block_decode`, where the plan cannot be made);
    * everything else (prefill, larger batches, other versions) is :meth:`RWKV.forward` with the
      compiled WKV kernels (``impl="kernel"``, which falls back to the PyTorch operators where they
      cannot run) and the wrapped projections.

    Same contract as :meth:`RWKV.forward`: the input state is never modified.
    """

    _packed: list | None = None
    _kernels_on = True

    @property
    def device(self) -> torch.device:
        return self.ln_out.weight.device  # the embedding may be int8 rows (Int8Embedding)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # the residual stream: every fast path's embedding returns fp32 rows

    # Up to this many sequences a decoding step takes the fused block operator (matrix-vector kernel,
    # fp32 arithmetic); above it, batched matrix products (bf16 units via oneDNN) win.
    fused_max_batch = MAX_GEMV_ROWS

    def forward(
        self,
        tokens: torch.Tensor,
        state: State | None = None,
        *,
        impl: str | None = None,
        full_output: bool = True,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, State]:
        """:meth:`RWKV.forward`; ``impl`` defaults to ``"kernel"`` (``"auto"`` with kernels off).
        ``return_hidden=True`` (the hidden states after ``ln_out``, for a caller that applies the head
        to a few positions only, as :mod:`rwkvkit.eval` does) skips the fused decoding plan."""
        if impl is None:
            tokens, state = self._begin(tokens, state)  # checked once here for the fused path
            B, T = tokens.shape
            if T == 1 and B <= self.fused_max_batch and not return_hidden and self._fused_ok():
                return self._decode_fused(tokens, state)
            impl = "kernel" if self._kernels_on else "auto"
        return super().forward(tokens, state, impl=impl, full_output=full_output, return_hidden=return_hidden)

    def _fused_ok(self) -> bool:
        if self.config.spec.fused_params is None or self.device.type != "cpu" or not self._kernels_on:
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return False
        return fused.available()

    def _packed_blocks(self) -> list:
        if self._packed is None:
            self._packed = [fused.pack_block(b) for b in self.blocks]
        return self._packed

    _plan: fused.PackedModel | None = None
    _plan_failed = False

    def _packed_model(self) -> fused.PackedModel | None:
        """The whole-model decoding plan (built once; None: decode block by block)."""
        if self._plan is None and not self._plan_failed:
            self._plan = fused.pack_model(self)
            self._plan_failed = self._plan is None
        return self._plan

    def _decode_fused(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        # the new state: copies of the small shift tensors (updated in place below), a fresh WKV
        # tensor that each block writes its layer's new state into (the input state stays untouched)
        att = state["att_shift"].float().contiguous().clone()
        ffn = state["ffn_shift"].float().contiguous().clone()
        wkv_in = state["wkv"].float().contiguous()
        wkv = torch.empty_like(wkv_in)
        plan = self._packed_model()
        if plan is not None:  # one operator call for all blocks and the head
            logits = fused.model_decode(self, plan, tokens[:, 0], att, wkv_in, wkv, ffn).unsqueeze(1)
            return logits, self._end({"att_shift": att, "wkv": wkv, "ffn_shift": ffn}, logits)
        x = self.emb(tokens[:, 0]).float()
        v_first = torch.empty_like(x)
        for i, packed in enumerate(self._packed_blocks()):
            x = fused.block_decode(packed, x, att[i], wkv_in[i], ffn[i], v_first, S_out=wkv[i], inplace=True)[
                0
            ]
        logits = self.head(self.ln_out(x)).float().unsqueeze(1)  # [B, 1, V]
        return logits, self._end({"att_shift": att, "wkv": wkv, "ffn_shift": ffn}, logits)


def optimize(
    model: nn.Module,
    weights: str = "bf16",
    kernels: bool = True,
    allocator: bool = True,
    copy_model: bool = True,
    head: str | None = None,
) -> nn.Module:
    """An inference-only copy of ``model`` (see the module docstring); ``model`` is not changed.

    Args:
        model: an RWKV model (any version).
        weights: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"q4"`` (weight-only; q4 = GGUF Q4_0 values:
            :class:`rwkvkit.inference.quant.Q4Linear`).
        kernels: use the compiled CPU kernels (matrix-vector products, fused RWKV-7 decoding block,
            sequential WKV), each with a PyTorch fallback; False gives the PyTorch operators only.
        allocator: call :func:`tune_allocator` (process-wide: freed memory is kept for reuse).
        copy_model: True (default) works on a copy; False converts ``model`` itself (no second copy of
            the weights in memory; ``model`` must not be used for anything else afterwards).
        head: the output head's precision (one of the ``weights`` values); None: the default for
            ``weights`` (:data:`rwkvkit.inference.quant.DEFAULT_HEAD`: int8 for q4, else ``weights``).
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if not isinstance(model, RWKV):
        raise ConfigError(f"optimize takes an rwkvkit RWKV model, got {type(model).__name__}")
    if allocator:
        tune_allocator()
    fast = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
    fast.__class__ = OptimizedRWKV  # same modules and parameters; only forward differs
    fast._kernels_on = kernels
    quantize_(fast, weights, head=head)
    fold_ln0_(fast)  # after quantize_, which made the embedding fp32: the folded rows are not rounded
    for m in fast.modules():
        if isinstance(m, Q4Linear):
            m.use_kernels = kernels
    place_weights_(fast)  # 2 MB pages where the system gives them (before anything caches tensors)
    if kernels:
        _wrap_linears(fast)
    return fast


__all__ = ["optimize", "OptimizedRWKV", "fold_ln0_", "DecodeLinear", "WEIGHTS"]
