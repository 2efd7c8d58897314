"""Lean loading for inference: ``rwkvkit.load(path, weights="int8")`` builds the fast model directly.

:func:`build_inference_model` takes a checkpoint as :func:`rwkvkit.formats.read` returns it (its
tensors memory-mapped from the file where the format allows: official ``.pth`` zips and
safetensors) and builds an :class:`~rwkvkit.inference.OptimizedRWKV` one tensor at a time:

* a projection is converted straight from the file's tensor to its final format (``fp32``,
  ``bf16``, ``int8``, ``q4``), quantised in blocks of rows, so no fp32 copy of a whole model (or of
  a whole large matrix) ever exists; a bf16 projection from a bf16 file is the file's own tensor
  (no copy at all, as llama.cpp's memory-mapped weights);
* the embedding table returns fp32 rows; it is stored fp32 for fp32 weights, 16-bit for bf16 weights
  (the file's bf16/fp16, or bf16 from an fp32 file: :class:`~rwkvkit.inference.auto.FloatEmbedding`)
  and int8 with a scale per row for int8 and 4-bit weights
  (:class:`~rwkvkit.inference.auto.Int8Embedding`, as llama.cpp quantises its token embedding);
  ``ln0`` is applied to the rows, not folded into the table;
* everything else (norms, token-shift and decay parameters, LoRAs: ~2 % of the parameters) is fp32;
* the file's pages of a tensor that was converted are handed back to the kernel as soon as the
  tensor is done (``madvise(MADV_DONTNEED)`` on the private file mapping: the bytes stay in the page
  cache, the process no longer holds them), so the peak resident size stays near the final model's
  size plus the largest matrix being converted.

The result computes what ``optimize(load(path), weights)`` computes, except that the embedding is
not folded with ``ln0`` (so it is exactly the file's rows) and, with 16-bit weights, the embedding
table is 16-bit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from rwkvkit.errors import CheckpointError, ConfigError
from rwkvkit.inference import quant
from rwkvkit.inference.auto import FloatEmbedding, Int8Embedding
from rwkvkit.inference.kernels.gemv import DecodeLinear
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.utils.meta import on_meta

log = logging.getLogger("rwkvkit.inference")

__all__ = ["QUANT_BLOCK_ROWS", "build_inference_model", "convert_projection"]

# Rows of a large matrix quantised at a time: the fp32 working copy of 4096 rows of a 2048-wide matrix
# is 32 MB, instead of 512 MB for the 65536-row head of a 1.5B model.
QUANT_BLOCK_ROWS = 4096


def _fixed(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach(), requires_grad=False)


def _int8_linear(w: torch.Tensor, done: Callable[[torch.Tensor], None] | None) -> nn.Module:
    """An :class:`~rwkvkit.inference.quant.Int8Linear` of ``w``, quantised a block of rows at a time
    (per-row scales: the same result as quantising the whole matrix); ``done(block)`` after each."""
    out, inp = w.shape
    m = quant.Int8Linear(inp, out, bias=False, device="meta")
    q = torch.empty(out, inp, dtype=torch.int8)
    scale = torch.empty(out, dtype=torch.float32)
    for i in range(0, out, QUANT_BLOCK_ROWS):
        j = min(i + QUANT_BLOCK_ROWS, out)
        q[i:j], scale[i:j] = quant.quantize_weight(w[i:j])
        if done is not None:
            done(w[i:j])
    m.weight_int8, m.scale = q, scale
    return m


def _q4_linear(w: torch.Tensor, done: Callable[[torch.Tensor], None] | None) -> nn.Module:
    """A :class:`~rwkvkit.inference.quant.Q4Linear` of ``w``, quantised a block of whole panels of
    rows at a time (groups run along a row, panels stack rows: the same bytes as the whole matrix)."""
    out, inp = w.shape
    m = quant.Q4Linear(inp, out, bias=False)
    step = max(quant.Q4_PANEL, QUANT_BLOCK_ROWS // quant.Q4_PANEL * quant.Q4_PANEL)
    for i in range(0, out, step):
        j = min(i + step, out)
        lin = nn.Linear(inp, j - i, bias=False, device="meta")
        lin.weight = _fixed(w[i:j])
        part = quant.Q4Linear.from_linear(lin)
        p0 = i // quant.Q4_PANEL
        m.qweight[p0 : p0 + part.qweight.shape[0]] = part.qweight
        m.scales[p0 : p0 + part.scales.shape[0]] = part.scales
        if done is not None:
            done(w[i:j])
    return m


def _int8_embedding(w: torch.Tensor, done: Callable[[torch.Tensor], None] | None) -> nn.Module:
    """The embedding table as int8 rows with a scale per row, quantised a block of rows at a time."""
    lin = _int8_linear(w, done)
    emb = Int8Embedding(*w.shape)
    emb.weight_int8, emb.scale = lin.weight_int8, lin.scale
    return emb


def convert_projection(
    w: torch.Tensor, weights: str, done: Callable[[torch.Tensor], None] | None = None
) -> nn.Module:
    """The projection ``[out, in]`` (no bias) stored as ``weights``: ``nn.Linear`` (fp32),
    ``BF16Linear``, ``Int8Linear`` or the 4-bit layer. Same dtype in and out shares ``w``.
    ``done(rows)`` is called with each block of rows of ``w`` that is no longer needed."""
    out, inp = w.shape
    if weights == "int8":
        return _int8_linear(w, done)
    if weights == "fp32":
        m = nn.Linear(inp, out, bias=False, device="meta")
        m.weight = _fixed(w.to(torch.promote_types(w.dtype, torch.float32)))
        return m
    if weights == "bf16":
        m = quant.BF16Linear(inp, out, bias=False, device="meta")
        m.weight = _fixed(w.to(torch.bfloat16))
        return m
    if weights == "q4":
        return _q4_linear(w, done)
    raise ConfigError(f"weights must be one of {', '.join(quant.WEIGHTS)}, got {weights!r}")


class _PageReleaser:
    """Hands a converted tensor's pages of the memory-mapped checkpoint back to the kernel.

    Only ranges inside a private mapping of the checkpoint file itself are released (read from
    ``/proc/self/maps``): such pages were never written, so dropping them loses nothing (a later read
    would fetch them from the file again). Anything else (anonymous memory, other files, other
    platforms) is left alone.
    """

    MADV_DONTNEED = 4

    def __init__(self, path: Path) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.madvise = None
        if not sys.platform.startswith("linux"):
            return
        try:
            target = str(path.resolve())
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() == target and parts[1][3] == "p":
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self.madvise = libc.madvise
            self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError, ValueError):
            self.ranges, self.madvise = [], None

    def release(self, t: torch.Tensor) -> None:
        if self.madvise is None or t.device.type != "cpu" or t.numel() == 0:
            return
        page = mmap.PAGESIZE
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        lo = (start + page - 1) // page * page  # whole pages inside the tensor only
        hi = end // page * page
        if hi <= lo or not any(a <= start and end <= b for a, b in self.ranges):
            return
        self.madvise(lo, hi - lo, self.MADV_DONTNEED)


def _check_finite(t: torch.Tensor, key: str, source: str, pages: _PageReleaser | None = None) -> None:
    """CheckpointError if ``t`` holds NaN or inf; checked a block of rows at a time, each block's file
    pages released after it when ``pages`` is given (the tensor is read again, block by block)."""
    for i in range(0, t.shape[0], QUANT_BLOCK_ROWS) if t.dim() else [None]:
        part = t if i is None else t[i : i + QUANT_BLOCK_ROWS]
        if not torch.isfinite(part).all():
            raise CheckpointError(f"{source}: tensor {key!r} contains NaN or inf; the checkpoint is corrupt")
        if pages is not None:
            pages.release(part)


def _projection_keys(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, m in model.named_modules() if type(m) is nn.Linear}


@torch.no_grad()
def build_inference_model(
    config: RWKVConfig,
    sd: dict[str, torch.Tensor],
    weights: str,
    path: Path,
    source: str,
    kernels: bool = True,
    head: str | None = None,
) -> RWKV:
    """An :class:`~rwkvkit.inference.OptimizedRWKV` of the checkpoint's tensors ``sd`` (rwkvkit names,
    checked), with projections in ``weights`` precision, built one tensor at a time (module docstring).
    ``head``: the output head's precision (None: :data:`rwkvkit.inference.quant.DEFAULT_HEAD`, int8
    for q4, else ``weights``). ``sd`` is emptied as the tensors are used."""
    from rwkvkit.formats import blinkdl  # deferred: rwkvkit.formats calls this module on load
    from rwkvkit.inference import OptimizedRWKV, tune_allocator  # deferred: the package imports this module

    head = quant.DEFAULT_HEAD.get(weights, weights) if head is None else head
    for what, value in (("weights", weights), ("head", head)):
        if value not in quant.WEIGHTS:
            raise ConfigError(f"{what} must be one of {', '.join(quant.WEIGHTS)}, got {value!r}")
    with on_meta():
        model = RWKV(config, dtype=torch.float32)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    blinkdl.check_state_dict(sd, config, source, expected)
    projections = _projection_keys(model)
    pages = _PageReleaser(path)
    emb_file = sd["emb.weight"].dtype
    emb_16 = emb_file if emb_file == torch.float16 else torch.bfloat16  # fp16 stays fp16: exact
    emb_dtype = torch.float32 if weights == "fp32" else emb_16

    for key in expected:
        t = sd.pop(key)
        quantised = (head if key == "head.weight" else weights) in ("int8", "q4")
        _check_finite(t, key, source, pages if key in projections and quantised else None)
        *parents, leaf = key.split(".")
        owner = model.get_submodule(".".join(parents))
        if key in projections:
            fmt = head if key == "head.weight" else weights
            new = convert_projection(t, fmt, pages.release)
            if kernels:
                new = DecodeLinear(new)
            grand = model.get_submodule(".".join(parents[:-1])) if len(parents) > 1 else model
            setattr(grand, parents[-1], new)
        elif key == "emb.weight" and weights in ("int8", "q4"):
            model.emb = _int8_embedding(t, pages.release)
        elif key == "emb.weight":
            model.emb = FloatEmbedding.wrap(t.to(emb_dtype))
        elif leaf in owner._buffers:
            owner._buffers[leaf] = t.to(torch.promote_types(t.dtype, torch.float32))
        else:
            owner._parameters[leaf] = _fixed(t.to(torch.promote_types(t.dtype, torch.float32)))
        if not _shares(model.get_submodule(".".join(parents)) if key not in projections else new, t):
            pages.release(t)
        del t
    model.__class__ = OptimizedRWKV
    model._packed = None
    model._kernels_on = kernels
    _trim_heap()  # the conversions' temporaries: give them back before the allocator keeps them
    tune_allocator()
    return model.eval()


def _trim_heap() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _shares(model: nn.Module, t: torch.Tensor) -> bool:
    """Whether ``model`` (the module that just took ``t``) kept ``t`` itself (a same-dtype tensor)."""
    ptr = t.data_ptr()
    return any(p.data_ptr() == ptr for p in model.parameters() if p.device.type == "cpu")
