"""fused_lm_loss: the output head and lm_loss in chunks of tokens equal the plain loss and its
gradients, in the trainer's step too, and never make a tensor of the whole logits' size."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rwkvkit.errors import InputError
from rwkvkit.models.gpt.config import GPTConfig
from rwkvkit.models.gpt.model import GPT
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.training import fused_lm_loss, lm_loss
from rwkvkit.training.config import TrainConfig, default_lora_ranks
from rwkvkit.training.init import official_init_
from rwkvkit.training.loop import model_loss
from rwkvkit.training.loss import auto_loss_chunk
from rwkvkit.training.parallel import parallelize

B, T, C, V = 3, 7, 16, 50  # B*T = 21 positions: no chunk size below but 1, 7 and 21 divides it
N = B * T

# fp32, against lm_loss(hidden @ weight.T): the same products, summed in another order (chunks of
# rows for the weight's gradient; softmax - onehot instead of log_softmax's backward). Measured:
# loss <= 2e-7 relative, gradients <= 3e-7 absolute (their largest entries are ~0.2). The trainer's
# step on a tiny RWKV: loss 1e-7 relative, every parameter's gradient within 8.4e-7 of its largest
# entry (bound: 1e-5).
LOSS_RTOL = 1e-6
GRAD_ATOL = 1e-6
# bf16 autocast: the logits are the plain head's exactly (the loss: measured 0 difference). The
# gradient products round in bf16 at other points (the plain head rounds the scaled gradient of the
# logits, 0.7 * g, and the whole weight gradient once; the fused loss rounds g, sums the weight
# gradient over the chunks in fp32 and scales at the end), so both are compared with the fp64
# gradients (of the unrounded inputs): measured, as a fraction of the largest entry, plain 1.17e-2 /
# 1.22e-2 (hidden / weight), fused 1.20e-2 / 1.23e-2 (the inputs' rounding to bf16 dominates; fused
# against plain: 4.8e-3 / 8.7e-3). Bound: no worse than 1.5x the plain head's error.
BF16_VS_PLAIN = 1.5


def problem(seed: int = 0, masked: bool = False):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(B, T, C, generator=g) * 2).requires_grad_()
    weight = torch.randn(V, C, generator=g).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 2] = -100  # cross_entropy's ignore_index: no loss there (L2Wrap still counts it)
    mask = (torch.rand(B, T, generator=g) > 0.3) if masked else None
    return hidden, weight, targets, mask


def losses_and_grads(fn, hidden, weight, scale: float = 0.7):
    loss = fn()
    d_h, d_w = torch.autograd.grad(loss * scale, (hidden, weight))  # a scaled loss, as the trainer's
    return loss.detach(), d_h, d_w


@pytest.mark.parametrize("chunk", [1, 5, 7, 8, N, 100, 0])
@pytest.mark.parametrize("l2wrap", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_lm_loss_and_its_gradients(chunk, l2wrap, masked):
    hidden, weight, targets, mask = problem(masked=masked)
    ref = losses_and_grads(lambda: lm_loss(hidden @ weight.T, targets, mask, l2wrap), hidden, weight)
    got = losses_and_grads(
        lambda: fused_lm_loss(hidden, weight, targets, mask, l2wrap, chunk_size=chunk), hidden, weight
    )
    torch.testing.assert_close(got[0], ref[0], rtol=LOSS_RTOL, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=GRAD_ATOL)
    torch.testing.assert_close(got[2], ref[2], rtol=0, atol=GRAD_ATOL)


def test_l2wrap_term_is_in_the_fused_gradient():
    """The comparison above would miss a missing L2Wrap term if it were tiny: here it is not."""
    hidden, weight, targets, _ = problem()
    with_l2 = losses_and_grads(lambda: fused_lm_loss(hidden, weight, targets, chunk_size=4), hidden, weight)
    without = losses_and_grads(
        lambda: fused_lm_loss(hidden, weight, targets, l2wrap=False, chunk_size=4), hidden, weight
    )
    assert torch.equal(with_l2[0], without[0])
    assert (with_l2[2] - without[2]).abs().max() > 100 * GRAD_ATOL


def test_bf16_autocast_is_as_accurate_as_the_plain_head():
    hidden, weight, targets, _ = problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = losses_and_grads(
            lambda: lm_loss(torch.nn.functional.linear(hidden, weight).float(), targets), hidden, weight
        )
        got = losses_and_grads(lambda: fused_lm_loss(hidden, weight, targets, chunk_size=4), hidden, weight)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    exact = losses_and_grads(lambda: lm_loss(h64 @ w64.T, targets), h64, w64)
    assert got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], ref[0], rtol=LOSS_RTOL, atol=0)
    for name, g, r, e in zip(("hidden", "weight"), got[1:], ref[1:], exact[1:]):
        err_fused, err_plain = (float((x.double() - e).abs().max() / e.abs().max()) for x in (g, r))
        print(f"bf16 gradient for {name} vs fp64 (of its max): plain {err_plain:.1e}, fused {err_fused:.1e}")
        assert err_fused <= BF16_VS_PLAIN * err_plain


def test_without_gradients_only_the_loss():
    hidden, weight, targets, mask = problem(masked=True)
    ref = lm_loss(hidden @ weight.T, targets, mask)
    with torch.no_grad():
        got = fused_lm_loss(hidden, weight, targets, mask, chunk_size=4)
    assert got.grad_fn is None
    torch.testing.assert_close(got, ref.detach(), rtol=LOSS_RTOL, atol=0)
    frozen = fused_lm_loss(hidden.detach(), weight.detach(), targets, mask, chunk_size=4)
    assert frozen.grad_fn is None and torch.equal(frozen, got)


def test_a_frozen_head_gets_no_gradient():
    hidden, weight, targets, _ = problem()
    loss = fused_lm_loss(hidden, weight.detach(), targets, chunk_size=4)
    (d_h,) = torch.autograd.grad(loss, hidden)
    (ref,) = torch.autograd.grad(lm_loss(hidden @ weight.detach().T, targets), hidden)
    torch.testing.assert_close(d_h, ref, rtol=0, atol=GRAD_ATOL)


def test_auto_chunk_keeps_one_chunk_within_256_mib():
    assert auto_loss_chunk(65536) == 1024 and auto_loss_chunk(4096) == 16384
    assert auto_loss_chunk(1 << 30) == 1


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda h, w, y, m: (h[0], w, y, m, 0), "hidden"),
        (lambda h, w, y, m: (h, w[:, :-1], y, m, 0), "weight"),
        (lambda h, w, y, m: (h, w, y[:, :-1], m, 0), "targets"),
        (lambda h, w, y, m: (h, w, y.float(), m, 0), "integer"),
        (lambda h, w, y, m: (h, w, y, m[:, :-1], 0), "mask"),
        (lambda h, w, y, m: (h, w, y, m, -1), "chunk_size"),
        (lambda h, w, y, m: (h, w, torch.full_like(y, V), m, 0), "outside the vocabulary"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    hidden, weight, targets, mask = problem(masked=True)
    h, w, y, m, chunk = change(hidden, weight, targets, mask)
    with pytest.raises(InputError, match=match):
        fused_lm_loss(h, w, y, m, chunk_size=chunk)


# ---- no tensor of the whole logits' size ---------------------------------------------------------


class Shapes(TorchDispatchMode):
    """Records the element count of every tensor an operation returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
        return out


def largest_tensor(fn) -> int:
    with Shapes() as shapes:
        fn()
    return max(shapes.numels)


def test_the_whole_logits_are_never_made():
    hidden, weight, targets, mask = problem(masked=True)
    chunk = 4
    saved: list[int] = []

    def fused():
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = fused_lm_loss(hidden, weight, targets, mask, chunk_size=chunk)
        loss.backward()

    def plain():
        lm_loss(hidden @ weight.T, targets, mask).backward()

    assert largest_tensor(plain) >= N * V  # the detector sees the plain logits
    assert largest_tensor(fused) == max(chunk * V, V * C, N * C) < N * V
    assert max(saved) <= max(N * C, V * C)  # kept for the backward: the two gradients, not logits


def test_a_training_step_never_makes_the_whole_logits():
    model = tiny_rwkv(n_layer=1, vocab_size=512)  # the logits [48, 512] outsize every other tensor
    x = torch.randint(0, 512, (2, 24))
    cfg = TrainConfig(precision="fp32", loss_chunk=8)
    n_logits = x.numel() * 512

    def step(cfg):
        return lambda: model_loss(model, model, x, x, None, cfg, "cpu")[0].backward()

    assert largest_tensor(step(cfg.replace(fused_loss=False))) >= n_logits
    assert largest_tensor(step(cfg)) < n_logits


# ---- the trainer's step --------------------------------------------------------------------------


def tiny_rwkv(version: str = "7", n_layer: int = 2, vocab_size: int = 96) -> RWKV:
    cfg = RWKVConfig(version=version, n_layer=n_layer, n_embd=32, vocab_size=vocab_size, head_size=16,
                     **default_lora_ranks(version, 32))  # fmt: skip
    model = RWKV(cfg)
    official_init_(model, seed=0)
    with torch.no_grad():  # the official init zeroes some projections: make every gradient nonzero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def step_grads(model, cfg: TrainConfig, x, y, wrapped=None) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, _ = model_loss(model, wrapped or model, x, y, None, cfg, "cpu")
    (loss * 0.5).backward()
    return float(loss.detach()), {
        n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()  # names under activation checkpointing
        for n, p in model.named_parameters()
        if p.grad is not None
    }


def assert_same_step(a, b):
    assert a[0] == pytest.approx(b[0], rel=LOSS_RTOL)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        scale = float(b[1][name].abs().max())
        torch.testing.assert_close(a[1][name], b[1][name], rtol=0, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("version", ["7", "6"])
def test_training_step_equals_the_plain_loss(version):
    """The trainer's step (model_loss) with the fused loss: the loss and every parameter's gradient
    of the plain logits + lm_loss, up to fp32 rounding (1e-5 of each gradient's largest entry)."""
    model = tiny_rwkv(version)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 96, (2, 11), generator=g), torch.randint(0, 96, (2, 11), generator=g)
    cfg = TrainConfig(precision="fp32", loss_chunk=5)
    plain = step_grads(model, cfg.replace(fused_loss=False), x, y)
    fused = step_grads(model, cfg, x, y)
    assert_same_step(fused, plain)


def test_activation_checkpointing_with_the_fused_loss():
    model = tiny_rwkv()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 96, (2, 9), generator=g), torch.randint(0, 96, (2, 9), generator=g)
    cfg = TrainConfig(precision="fp32", loss_chunk=7)
    plain = step_grads(model, cfg.replace(fused_loss=False), x, y)
    ac_model = copy.deepcopy(model)
    wrapped = parallelize(ac_model, "none", activation_checkpointing=True)
    assert "checkpoint" in type(ac_model.blocks[0]).__name__.lower()
    assert_same_step(step_grads(ac_model, cfg, x, y, wrapped), plain)


def test_gpt_step_equals_the_plain_loss():
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=96, block_size=32)).init_weights(0)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(0, 96, (2, 13), generator=g), torch.randint(0, 96, (2, 13), generator=g)
    cfg = TrainConfig(arch="gpt", precision="fp32", loss_chunk=6, l2wrap=False)
    assert_same_step(step_grads(model, cfg, x, y), step_grads(model, cfg.replace(fused_loss=False), x, y))


def test_return_hidden_is_the_heads_input():
    model = tiny_rwkv().eval()
    x = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        logits, state = model(x)
        hidden, state_h = model(x, return_hidden=True)
    assert hidden.shape == (2, 9, 32)
    torch.testing.assert_close(model.head(hidden).float(), logits, rtol=0, atol=0)
    # the state's logits: a one-row product, equal to the full head's row up to fp32 rounding
    torch.testing.assert_close(state_h.logits, state.logits, rtol=0, atol=1e-6)
    for name in ("att_shift", "wkv", "ffn_shift"):
        assert torch.equal(state_h[name], state[name])


def test_a_run_saved_without_the_new_fields_resumes():
    cfg = TrainConfig(precision="fp32")
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("fused_loss", "loss_chunk")}
    assert cfg.resume_changes(saved) == []
    assert TrainConfig.from_dict(saved) == cfg  # an old config.toml: the defaults fill the new fields
    assert cfg.replace(fused_loss=False).resume_changes(cfg.to_dict())  # may change on resume
