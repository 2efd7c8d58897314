"""The fast CPU path without asking: :func:`fast_view`, used by generation, the engine and the CLI.

``rwkvkit.generate(model, ...)``, :class:`rwkvkit.generation.BatchEngine` and ``rwkvkit generate``
run a plain :class:`~rwkvkit.models.rwkv.model.RWKV` on the CPU through an inference twin of it: an
:class:`~rwkvkit.inference.OptimizedRWKV` whose modules are new but whose projection weights are the
model's own tensors (no copy), so a user who never heard of :func:`~rwkvkit.inference.optimize` gets
the compiled kernels (matrix-vector products, the fused RWKV-7 decoding block, the sequential WKV)
at the precision the model already has:

* fp32 model -> fp32 projections, bf16 model -> bf16 projections (both shared with the model); the
  small parameters (norms, token-shift and decay parameters, LoRAs; ~2 % of a 0.1B model) are made
  fp32 where they were not, and the residual stream is fp32, as in ``optimize``;
* the embedding is shared too and returns fp32 rows (:class:`FloatEmbedding`); ``ln0`` is applied
  to those rows, not folded into the table (folding would need a second table).

The twin is built on the first call and cached per model; any change of a parameter (an optimiser
step, ``load_state_dict``, a new tensor) is seen through the tensors' version counters and makes a
new twin on the next call. Models that do not qualify are used as they are: not an exact
``RWKV`` (an ``OptimizedRWKV`` already is fast; other families have no fast path), in training
mode (``model.train()``: call ``model.eval()`` for inference), not on the CPU, with weights in
another dtype than fp32/bf16, or holding a module whose class is not torch's or rwkvkit's model
code (an unmerged LoRA adapter: ``rwkvkit.finetune.merge_lora`` makes it a plain model again).

**Turning it off**: set the environment variable ``RWKVKIT_FAST=0`` (read on every call). Then
generation runs the model exactly as given (the reference path).
"""

from __future__ import annotations

import copy
import os
import threading
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.inference.kernels.gemv import DecodeLinear
from rwkvkit.inference.quant import BF16Linear
from rwkvkit.models.rwkv.model import RWKV

__all__ = ["ENV_FAST", "FloatEmbedding", "Int8Embedding", "fast_enabled", "fast_view", "share_modules"]

ENV_FAST = "RWKVKIT_FAST"


def fast_enabled() -> bool:
    """False when ``RWKVKIT_FAST`` is set to ``0``/``false``/``no``/``off`` (the one switch)."""
    return os.environ.get(ENV_FAST, "1").strip().lower() not in ("0", "false", "no", "off")


class FloatEmbedding(nn.Embedding):
    """An embedding table kept in its storage dtype (bf16: half the bytes) that returns fp32 rows.

    The rows are exact widenings of the stored numbers, so the model sees the same values as with a
    bf16 ``nn.Embedding`` followed by ``.float()``; the residual stream starts in fp32.
    """

    @classmethod
    def wrap(cls, weight: torch.Tensor) -> FloatEmbedding:
        """An embedding over ``weight`` (shared, not copied)."""
        m = cls(weight.shape[0], weight.shape[1], device="meta")
        m.weight = nn.Parameter(weight.detach(), requires_grad=False)
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids, self.weight)
        return out if out.dtype == torch.float64 else out.float()


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one fp32 scale per row (symmetric, as
    :func:`rwkvkit.inference.quant.quantize_weight`), returning fp32 rows ``q[id] * scale[id]``: a
    quarter of an fp32 table, half of a bf16 one; the lean loader's table for int8 and 4-bit weights.
    """

    weight_int8: torch.Tensor
    scale: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    def dequantize(self) -> torch.Tensor:
        """The table it stands for, fp32 ``[V, C]`` (a new tensor: 4 bytes per weight)."""
        return self.weight_int8.float() * self.scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_int8).float() * F.embedding(ids, self.scale[:, None])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def share_modules(module: nn.Module) -> nn.Module:
    """A new module tree with the same parameter and buffer tensors (nothing is copied).

    Replacing a child, a parameter or a buffer of the result leaves ``module`` unchanged; changing
    a shared tensor in place changes both (nothing here does).
    """
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = {k: None if c is None else share_modules(c) for k, c in module._modules.items()}
    return new


def _fixed(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach(), requires_grad=False)


def _projection_twin(linear: nn.Linear, dtype: torch.dtype) -> nn.Module:
    """``linear`` as the fast path's projection (weight shared; only a dtype change copies it)."""
    if dtype == torch.bfloat16:
        new: nn.Linear = BF16Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    else:
        new = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    new.weight = _fixed(linear.weight.to(dtype))
    new.bias = None if linear.bias is None else _fixed(linear.bias.to(dtype))
    return DecodeLinear(new)


@torch.no_grad()
def build_twin(model: RWKV) -> RWKV:
    """The inference twin of ``model`` (see the module docstring); ``model`` is not changed."""
    from rwkvkit.inference import OptimizedRWKV  # deferred: rwkvkit.inference imports this module

    dtype = model.head.weight.dtype
    twin = share_modules(model)
    twin.emb = FloatEmbedding.wrap(model.emb.weight)
    for parent in list(twin.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) in (nn.Linear, BF16Linear):
                parent._modules[name] = _projection_twin(child, dtype)
    fast = [m for m in twin.modules() if isinstance(m, (DecodeLinear, FloatEmbedding))]
    done = {id(t) for m in fast for t in m.parameters()}
    for module in twin.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) not in done:
                hi = torch.promote_types(p.dtype, torch.float32) if p.is_floating_point() else p.dtype
                module._parameters[name] = _fixed(p.to(hi))
    twin.__class__ = OptimizedRWKV
    twin._packed = None
    twin._kernels_on = True
    twin.train(False)
    return twin


# where the classes of the modules the twin rebuilds are defined
_OWN_MODULES = ("torch.nn.", "rwkvkit.layers.", "rwkvkit.models.", "rwkvkit.inference.")


def _qualifies(model: object) -> bool:
    if type(model) is not RWKV or model.training or not fast_enabled():
        return False
    w = model.head.weight
    if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16):
        return False
    # a module from elsewhere (an unmerged LoRA adapter of rwkvkit.finetune, a user's own) has a
    # forward the twin's packed kernels would skip: such a model runs as it is
    return all(type(m).__module__.startswith(_OWN_MODULES) for m in model.modules())


def _version_key(model: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version, t.dtype) for t in model.parameters())


_lock = threading.Lock()
_twins: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, RWKV]] = weakref.WeakKeyDictionary()


def fast_view(model):
    """The model that generation should run: ``model``'s inference twin where it qualifies (a plain
    ``RWKV`` in eval mode on the CPU, fp32/bf16 weights, ``RWKVKIT_FAST`` not 0), else ``model``."""
    if not _qualifies(model):
        return model
    key = _version_key(model)
    with _lock:
        hit = _twins.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        twin = build_twin(model)
        _twins[model] = (key, twin)
        return twin
