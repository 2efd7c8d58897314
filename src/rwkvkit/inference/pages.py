"""Weights in memory backed by 2 MB pages, for streaming them at the memory bandwidth.

Decoding reads every weight once per token, as long sequential streams. With the usual 4 KB pages a
0.1B model's ~100-300 MB of weights span 25-75 thousand pages: every page costs a TLB miss, and the
hardware prefetchers stop at page boundaries and ramp up again on the next page. Linux backs a
memory range with transparent huge pages (2 MB) when asked (``madvise(MADV_HUGEPAGE)``, or always,
depending on ``/sys/kernel/mm/transparent_hugepage/enabled``); PyTorch's allocator asks only when
``THP_MEM_ALLOC_ENABLE=1`` is set, and a checkpoint's weights are often the file's own pages
(``torch.load(mmap=True)``).

:func:`place_weights_` copies a model's tensors into one anonymous mapping (2 MB aligned, advised
``MADV_HUGEPAGE``) and points the parameters and buffers at it; :func:`to_huge_pages` does the same
for a list of tensors (the decoding plan's transposed LoRA matrices). Measured on AMD EPYC Zen 4 (one
thread, CPU time, against the same thread's read bandwidth; RWKV-7 0.1B shape, batch-1 decoding):
bf16 weights 63 % -> 77 % of the bandwidth bound, q4 60 % -> 64 %
(``benchmarks/decode_bound.py``). Where the system gives no huge pages (THP disabled, other OS), the
copy changes nothing but the addresses.
"""

from __future__ import annotations

import logging
import mmap
import sys

import torch
import torch.nn as nn

log = logging.getLogger("rwkvkit.inference")

__all__ = ["HUGE_PAGE", "place_weights_", "to_huge_pages"]

HUGE_PAGE = 2 * 2**20
_ALIGN = 64  # every tensor starts on a cache line (the int8pack kernel wants 64-byte aligned weights)


def _tensors(model: nn.Module, skip: tuple[str, ...]) -> list[tuple[nn.Module, str, bool, int]]:
    """``(module, name, is_parameter, bytes)`` of every parameter and buffer, in module order, each
    tensor once; CPU tensors only, not those of modules named in ``skip``."""
    seen: set[int] = set()
    out = []
    for mname, module in model.named_modules():
        if any(mname == s or mname.startswith(s + ".") for s in skip):
            continue
        items = [(n, t, True) for n, t in module._parameters.items()]
        items += [(n, t, False) for n, t in module._buffers.items()]
        for name, t, is_param in items:
            if t is None or t.device.type != "cpu" or id(t) in seen or t.numel() == 0 or t.is_sparse:
                continue
            seen.add(id(t))
            out.append((module, name, is_param, t.numel() * t.element_size()))
    return out


def _arena(total: int) -> tuple[torch.Tensor, int] | None:
    """A uint8 tensor over a fresh private anonymous mapping advised ``MADV_HUGEPAGE``, and the offset
    of its first 2 MB boundary (``total`` bytes fit after it); None where that cannot be made."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        # private (the default anonymous mapping is shared: shmem, whose huge pages are off by default);
        # + room to align to 2 MB
        flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20)
        mapped = mmap.mmap(-1, total + HUGE_PAGE, flags=flags)
        mapped.madvise(mmap.MADV_HUGEPAGE)  # before any page is touched
        arena = torch.frombuffer(mapped, dtype=torch.uint8)  # keeps `mapped` alive
    except (OSError, ValueError) as e:  # no memory, or madvise refused: keep the tensors where they are
        log.info("rwkvkit: weights not moved to huge pages (%s)", e)
        return None
    return arena, -arena.data_ptr() % HUGE_PAGE


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@torch.no_grad()
def to_huge_pages(tensors: list[torch.Tensor], min_bytes: int = 0) -> list[torch.Tensor] | None:
    """Contiguous copies of ``tensors`` (CPU) in one 2 MB-aligned anonymous mapping advised
    ``MADV_HUGEPAGE``, each starting on a 64-byte boundary; None off Linux, below ``min_bytes`` in
    all, or when the mapping cannot be made. The mapping lives as long as any of the copies."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    total = sum(_aligned(n) for n in sizes)
    if total == 0 or total < min_bytes or any(t.device.type != "cpu" for t in tensors):
        return None
    made = _arena(total)
    if made is None:
        return None
    arena, offset = made
    out = []
    for t, n in zip(tensors, sizes):
        view = arena[offset : offset + n].view(t.dtype).view(t.shape)
        view.copy_(t)
        out.append(view)
        offset += _aligned(n)
    return out


@torch.no_grad()
def place_weights_(model: nn.Module, skip: tuple[str, ...] = ("emb",), min_bytes: int = 64 * 2**20) -> bool:
    """Move ``model``'s parameters and buffers (but those of the modules named in ``skip``: the
    embedding, of which a token reads one row) into one 2 MB-page-backed mapping, in place.

    Returns True if it did; False (nothing changed) off Linux, below ``min_bytes`` of tensors (small
    models gain nothing), or when the mapping cannot be made. Parameters keep their identity
    (``.data`` is replaced), so references to them stay valid, but other references to the old
    tensors do not follow: call it before anything caches them (``optimize`` does so before
    wrapping the projections for the kernels). Tensors are moved one at a time, so the old one can
    be freed at once: the memory peak is the model plus one tensor, not two models.
    """
    found = _tensors(model, skip)
    total = sum(_aligned(n) for *_, n in found)
    if total == 0 or total < min_bytes:
        return False
    made = _arena(total)
    if made is None:
        return False
    arena, offset = made
    for module, name, is_param, n in found:
        t = module._parameters[name] if is_param else module._buffers[name]
        view = arena[offset : offset + n].view(t.dtype).view(t.shape)
        view.copy_(t)
        if is_param:
            t.data = view
        else:
            module._buffers[name] = view
        del t
        offset += _aligned(n)
    return True
