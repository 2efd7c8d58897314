"""The language-model loss: mean next-token cross-entropy, with the official RWKV L2Wrap term.

L2Wrap (``RWKV-v5/src/model.py:1119-1133``, ``RWKV-v4neo/src/model.py``; docs/training.md#l2wrap) leaves the
loss value alone and adds, in the backward pass, a small gradient on the largest logit of every
position::

    d loss / d logits[b, t, argmax_v logits[b, t, v]]  +=  1e-4 / (B * T) * max_v logits[b, t, v]

which is the gradient of ``1e-4 / (B T) * sum_{b,t} max_v(logits)^2 / 2``: it keeps the logits from
drifting upwards (bf16 training loses precision on large logits). Two details follow the newer
``RWKV-v7/train_temp`` code rather than the older trainers:

* the extra gradient is multiplied by the incoming gradient (the older ``return (grad_output, gy)``
  is wrong whenever the loss is scaled, e.g. divided by the gradient-accumulation count; the v7 code
  says so and returns ``grad_output * gy``);
* positions are counted as ``logits.numel() // V``, so ``[B, T, V]`` and flattened ``[B*T, V]``
  logits give the same factor (the official ``y.shape[0] * y.shape[1]`` assumes 3-D logits).

With a mask (our extension; the official masked-loss path applies L2Wrap to every position and
divides by ``B * T``), masked positions get no L2Wrap gradient, and the factor divides by the number
of unmasked positions, so that the penalty is a mean over the same positions as the cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rwkvkit.errors import InputError

L2WRAP_FACTOR = 1e-4  # the official constant


class L2Wrap(torch.autograd.Function):
    """``L2Wrap.apply(loss, logits, mask=None) -> loss``: identity forward, L2Wrap gradient on logits.

    ``logits`` ``[..., V]``; ``mask`` (optional) a bool tensor of ``logits.shape[:-1]``, True where
    the position counts. The gradient for ``loss`` passes through unchanged.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        loss: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ctx.save_for_backward(logits, mask)
        return loss.clone()  # a new tensor: returning an input unchanged confuses autograd

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor):
        logits, mask = ctx.saved_tensors
        with torch.no_grad():
            maxx, ids = torch.max(logits, dim=-1, keepdim=True)  # [..., 1]
            if mask is None:
                val = maxx * (L2WRAP_FACTOR / (logits.numel() // logits.shape[-1]))
            else:  # a tensor count: no host sync
                m = mask.unsqueeze(-1).to(maxx.dtype)
                val = maxx * m * (L2WRAP_FACTOR / m.sum().clamp_min(1))
            gy = torch.zeros_like(logits).scatter_(-1, ids, val)
            gy = gy * grad_output.to(gy.dtype)
        return grad_output, gy, None


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    l2wrap: bool = True,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the unmasked positions, in fp32, with L2Wrap.

    Args:
        logits: ``[B, T, V]`` (any float dtype; upcast to fp32 here).
        targets: ``[B, T]`` integer token ids (the next token of each position).
        mask: optional ``[B, T]``; positions where it is nonzero count, the others contribute nothing
            to the loss nor to any gradient. A mask with no position set gives a loss of 0.
        l2wrap: add the official L2Wrap gradient (see the module docstring).

    Returns:
        A scalar fp32 loss.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise InputError(
            f"lm_loss needs logits [B, T, V] and targets [B, T], got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if mask is not None and mask.shape != targets.shape:
        raise InputError(
            f"mask must have the shape of targets {tuple(targets.shape)}, got {tuple(mask.shape)}"
        )
    logits = logits.float()
    V = logits.shape[-1]
    if mask is None:
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    else:
        keep = mask.reshape(-1) != 0
        per_pos = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")
        # where() (not a multiply) so that a NaN/inf at a masked position cannot leak into the sum
        loss = torch.where(keep, per_pos, 0.0).sum() / keep.sum().clamp_min(1)
        mask = keep.view(targets.shape)
    if l2wrap:
        loss = L2Wrap.apply(loss, logits, mask)
    return loss


# ---- the output head and the loss, fused, in chunks of tokens -----------------------------------

# One chunk's fp32 logits hold at most this many elements (256 MiB) when the chunk size is automatic.
LOSS_CHUNK_ELEMENTS = 1 << 26


def auto_loss_chunk(vocab_size: int) -> int:
    """Tokens per chunk of :func:`fused_lm_loss` when none is given: as many rows as keep one chunk's
    fp32 logits ``[rows, V]`` within :data:`LOSS_CHUNK_ELEMENTS` (256 MiB), at least 1 (1024 rows
    at V = 65536, 16384 at V = 4096)."""
    return max(1, LOSS_CHUNK_ELEMENTS // max(1, vocab_size))


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` would multiply in here: the autocast dtype where autocast is on for
    the tensors' device, else the common dtype of the two."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunked_lm_loss(
    h: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    keep: torch.Tensor | None,
    l2wrap: bool,
    chunk: int,
    mm_dtype: torch.dtype,
    grads: tuple[bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``lm_loss(h @ w.T)`` of flat ``h [N, C]``, ``y [N]`` (``keep [N]`` bool or None), ``chunk``
    rows at a time, and (``grads``: for h, for w) the gradients of that loss for h ``[N, C]`` and w
    ``[V, C]`` (fp32; None where not asked). Only one chunk's logits exist at a time."""
    N, V = h.shape[0], w.shape[0]
    counted = y != -100  # F.cross_entropy's default ignore_index, as lm_loss uses it
    if keep is None:
        n_ce = counted.sum().clamp_min(1)  # the mean over the targets that are not ignored
        n_l2 = N  # L2Wrap: every position, as lm_loss
    else:
        n_ce = n_l2 = keep.sum().clamp_min(1)  # the mean over the unmasked positions
        counted = counted & keep
    w_mm = w.to(mm_dtype)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    d_h = torch.empty(N, h.shape[1], dtype=torch.float32, device=h.device) if grads[0] else None
    d_w = torch.zeros(V, w.shape[1], dtype=torch.float32, device=h.device) if grads[1] else None
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        h_mm = h[s:e].to(mm_dtype)
        logits = (h_mm @ w_mm.T).float()  # [n, V]: rounded to mm_dtype, as head(x).float() is
        y_c, ok = y[s:e], counted[s:e]
        tgt = torch.where(ok, y_c, 0).unsqueeze(1)
        lse = torch.logsumexp(logits, dim=1, keepdim=True)
        ce = (lse - logits.gather(1, tgt)).squeeze(1)
        total = total + torch.where(ok, ce, 0.0).sum()  # where(): a NaN at a skipped row stays out
        if d_h is None and d_w is None:
            continue
        if l2wrap:
            maxx, ids = logits.max(dim=1, keepdim=True)
        # d loss / d logits = (softmax - onehot(target)) / n_ce at the counted rows, in place
        g = logits.sub_(lse).exp_()
        g.scatter_add_(1, tgt, torch.full_like(lse, -1.0))
        g.mul_((ok.unsqueeze(1) / n_ce).to(g.dtype))
        if l2wrap:  # L2Wrap: + 1e-4 / n * max logit at the argmax (unmasked rows), as L2Wrap.backward
            val = maxx * (L2WRAP_FACTOR / n_l2)
            if keep is not None:
                val = val * keep[s:e].unsqueeze(1).to(val.dtype)
            g.scatter_add_(1, ids, val)
        g_mm = g.to(mm_dtype)
        if d_h is not None:
            d_h[s:e] = g_mm @ w_mm
        if d_w is not None:
            if mm_dtype == torch.float32:
                d_w.addmm_(g_mm.T, h_mm)
            else:
                d_w += (g_mm.T @ h_mm).float()
    return total / n_ce, d_h, d_w


class FusedLinearLMLoss(torch.autograd.Function):
    """``FusedLinearLMLoss.apply(hidden, weight, targets, keep, l2wrap, chunk, mm_dtype) -> loss``.

    The forward computes the loss and, right away, its gradients for ``hidden [N, C]`` and
    ``weight [V, C]`` (a chunk's logits are dropped before the next chunk's are made); it saves only
    those two gradients, and the backward scales them by the incoming gradient (the loss is linear in
    it, L2Wrap's term included). Use :func:`fused_lm_loss`, which checks and reshapes the inputs.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        keep: torch.Tensor | None,
        l2wrap: bool,
        chunk: int,
        mm_dtype: torch.dtype,
    ) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are explicit here
            loss, d_h, d_w = _chunked_lm_loss(
                hidden, weight, targets, keep, l2wrap, chunk, mm_dtype, tuple(ctx.needs_input_grad[:2])
            )
        d_h = d_h.to(hidden.dtype) if d_h is not None else None
        d_w = d_w.to(weight.dtype) if d_w is not None else None
        ctx.save_for_backward(d_h, d_w)
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor):
        d_h, d_w = ctx.saved_tensors
        d_h = d_h * grad_output.to(d_h.dtype) if d_h is not None else None
        d_w = d_w * grad_output.to(d_w.dtype) if d_w is not None else None
        return d_h, d_w, None, None, None, None, None


def fused_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    l2wrap: bool = True,
    *,
    chunk_size: int = 0,
) -> torch.Tensor:
    """``lm_loss(hidden @ weight.T, targets, mask, l2wrap)`` without the ``[B, T, V]`` logits.

    The output head (a bias-free linear layer) and the loss, fused: the ``B*T`` positions are taken
    ``chunk_size`` at a time; each chunk's logits ``[chunk, V]`` give its share of the loss and of
    the gradients for ``hidden`` and ``weight`` (L2Wrap's term included) at once, and are dropped.
    What stays for the backward pass is the two gradients, ``[B, T, C]`` and ``[V, C]``, instead of
    the logits ``[B, T, V]`` in fp32 (and their bf16 copy under autocast). Value and gradients
    equal :func:`lm_loss`'s up to float rounding (tests/training/test_fused_loss.py), with the same
    mask and ignore-index (-100) rules; the one difference: when every target is -100 (no mask),
    the loss is 0, not NaN.

    Precision: the matrix products (logits, and the two gradient products) run in the dtype
    ``nn.Linear`` would use: the autocast dtype (bf16) under autocast, else the inputs' dtype; the
    logits are rounded to that dtype and upcast to fp32 for the log-softmax, as the model's
    ``head(x).float()`` and :func:`lm_loss` do. The weight's gradient is summed over the chunks in
    fp32. Call it inside the forward's autocast context to get the same products as the plain head.

    Args:
        hidden: ``[B, T, C]`` float, the head's input (the model's hidden states after ``ln_out``).
        weight: ``[V, C]``, the head's weight (``nn.Linear(C, V, bias=False).weight``).
        targets: ``[B, T]`` integer token ids; -100 marks a position the cross-entropy ignores.
        mask: optional ``[B, T]``; as in :func:`lm_loss`.
        l2wrap: add the official L2Wrap gradient (see the module docstring).
        chunk_size: positions per chunk; 0 = :func:`auto_loss_chunk` (one chunk's fp32 logits
            within 256 MiB). Any ``B*T`` works (the last chunk is shorter).

    Returns:
        A scalar fp32 loss. Under ``torch.no_grad()`` (or when neither ``hidden`` nor ``weight``
        needs a gradient) only the loss is computed.
    """
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise InputError(
            f"fused_lm_loss needs hidden [B, T, C] and weight [V, C], got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise InputError(f"hidden and weight must be float tensors, got {hidden.dtype} and {weight.dtype}")
    if targets.shape != hidden.shape[:2]:
        raise InputError(
            f"targets must be [B, T] = {tuple(hidden.shape[:2])} (hidden's first two sizes), got "
            f"{tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise InputError(f"targets must be integer token ids, got dtype {targets.dtype}")
    if mask is not None and mask.shape != targets.shape:
        raise InputError(
            f"mask must have the shape of targets {tuple(targets.shape)}, got {tuple(mask.shape)}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise InputError(f"chunk_size must be an int >= 0 (0 = automatic), got {chunk_size!r}")
    V, C = weight.shape
    if targets.device.type == "cpu" and targets.numel():  # a range check costs no device sync here
        bad = (targets != -100) & ((targets < 0) | (targets >= V))
        if bool(bad.any()):
            raise InputError(f"target id {int(targets[bad][0])} is outside the vocabulary [0, {V}) (or -100)")
    chunk = chunk_size or auto_loss_chunk(V)
    mm_dtype = _matmul_dtype(hidden, weight)
    h, y = hidden.reshape(-1, C), targets.reshape(-1).long()
    keep = None if mask is None else mask.reshape(-1) != 0
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        with torch.autocast(hidden.device.type, enabled=False):
            return _chunked_lm_loss(h, weight, y, keep, l2wrap, chunk, mm_dtype, (False, False))[0]
    return FusedLinearLMLoss.apply(h, weight, y, keep, l2wrap, chunk, mm_dtype)
