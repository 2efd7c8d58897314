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
