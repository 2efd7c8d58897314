"""lm_loss and L2Wrap: the forward is plain cross-entropy, the backward adds the official term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rwkvkit.errors import InputError
from rwkvkit.training import L2Wrap, lm_loss

B, T, V = 2, 5, 11


def batch(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    return logits, targets


def l2wrap_term(logits: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
    """By hand: at each counted position, +1e-4 / n * max logit, at the argmax."""
    extra = torch.zeros(B, T, V, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            if positions[b, t]:
                row = logits[b, t].detach().double()
                extra[b, t, int(row.argmax())] = 1e-4 / n * row.max()
    return extra


def test_forward_equals_cross_entropy():
    logits, targets = batch()
    ref = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    assert torch.equal(lm_loss(logits, targets), ref)
    assert torch.equal(lm_loss(logits, targets, l2wrap=False), ref)


def test_gradient_is_ce_gradient_plus_l2wrap_term():
    logits, targets = batch(1)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)), logits)
    (grad,) = torch.autograd.grad(lm_loss(logits, targets), logits)
    extra = l2wrap_term(logits, torch.ones(B, T, dtype=torch.bool), B * T)
    torch.testing.assert_close(grad.double(), ce_grad.double() + extra, rtol=0, atol=1e-7)
    assert extra.abs().sum() > 0  # the term is there (and is what makes the difference)
    (plain,) = torch.autograd.grad(lm_loss(logits, targets, l2wrap=False), logits)
    torch.testing.assert_close(plain, ce_grad, rtol=0, atol=1e-7)


def test_l2wrap_scales_with_the_incoming_gradient():
    """A scaled loss (gradient accumulation) scales the L2Wrap term too (the RWKV-7 trainer's fix)."""
    logits, targets = batch(2)
    (g1,) = torch.autograd.grad(lm_loss(logits, targets), logits)
    (g3,) = torch.autograd.grad(lm_loss(logits, targets) * 0.25, logits)
    torch.testing.assert_close(g3, g1 * 0.25, rtol=1e-6, atol=1e-9)


def test_l2wrap_function_on_flat_logits_counts_positions():
    logits, _ = batch(3)
    loss = torch.tensor(1.5, requires_grad=True)
    flat = logits.detach().reshape(B * T, V).requires_grad_()
    out = L2Wrap.apply(loss, flat)
    assert out.item() == 1.5
    out.backward()
    extra = l2wrap_term(logits, torch.ones(B, T, dtype=torch.bool), B * T).reshape(B * T, V)
    torch.testing.assert_close(flat.grad.double(), extra, rtol=1e-6, atol=0)  # fp32 products
    assert loss.grad.item() == 1.0


def test_masked_positions_contribute_nothing():
    logits, targets = batch(4)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    loss = lm_loss(logits, targets, mask)
    keep = mask.reshape(-1)
    ref = F.cross_entropy(logits.reshape(-1, V)[keep], targets.reshape(-1)[keep])
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad[~mask] == 0).all()
    # the unmasked gradient: CE over the kept positions + L2Wrap divided by their count
    (ce_grad,) = torch.autograd.grad(ref, logits)
    extra = l2wrap_term(logits, mask, int(mask.sum()))
    torch.testing.assert_close(grad.double(), ce_grad.double() + extra, rtol=0, atol=1e-7)
    # changing a masked position's logits or target changes nothing
    logits2 = logits.detach().clone()
    logits2[~mask] = 100.0
    targets2 = targets.clone()
    targets2[~mask] = 0
    torch.testing.assert_close(lm_loss(logits2, targets2, mask), loss.detach(), rtol=0, atol=0)


def test_all_masked_gives_zero_loss_and_zero_gradient():
    logits, targets = batch(5)
    loss = lm_loss(logits, targets, torch.zeros(B, T))
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad == 0).all()


def test_low_precision_logits_are_upcast():
    logits, targets = batch(6, torch.bfloat16)
    loss = lm_loss(logits, targets)
    assert loss.dtype == torch.float32
    ref = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))
    assert torch.equal(loss, ref)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_shape_errors():
    logits, targets = batch()
    with pytest.raises(InputError):
        lm_loss(logits[0], targets[0])
    with pytest.raises(InputError):
        lm_loss(logits, targets, torch.ones(B, T + 1))
