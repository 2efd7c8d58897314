"""State tuning: learn the initial WKV state of a frozen RWKV model.

An RWKV model reads its whole past through its recurrent state, so a learned *initial* state acts
like a learned prompt of unbounded length that costs nothing per token: the official "state tuning"
recipe (RWKV-LM's ``--train_type states``) trains only the per-layer WKV matrices that every
sequence starts from. :class:`StateTuned` wraps a frozen RWKV-5, 6 or 7 model with one trainable
tensor ``wkv [L, H, K, V]`` (fp32, zero at the start, so the wrapper begins as the plain model); the
token-shift states start at zero as usual. Gradients reach it through the WKV operator's initial
state: ``impl="auto"`` is the pure-PyTorch chunked form on the CPU and the Triton kernels on a CUDA
device, both differentiable in the initial state (``tests/finetune/test_state_tuning.py`` checks the
gradient against the naive recurrence and finite differences); the forward-only C++ tier
(``impl="kernel"``) is replaced by ``"chunk"`` whenever a gradient is needed.

RWKV-4 is refused: its state is a ratio of running sums (``aa / bb`` with a shared maximum
exponent ``pp``), whose denominator must stay positive; a free trainable tensor there is not the
same simple object, and the official recipe tunes v5+ states only.

The result is an ordinary :class:`rwkvkit.State` (:meth:`StateTuned.export_state`), which
``rwkvkit.generate(..., state=)``, ``BatchEngine.add(..., state=)`` and ``rwkvkit generate
--state-in`` take, with the base model unchanged. Its size, for the RWKV-7 0.1B shape (L = 12,
C = 768, 12 heads of 64)::

    >>> tuned = StateTuned(rwkvkit.load("rwkv7-0.1b.pth"))
    >>> ...                                                   # train tuned.wkv
    >>> tuned.export_state().save("chat.state")             # 2.4 MB (wkv 2.36 MB + shifts 74 KB)
    >>> # against the model's 191 M parameters: 764 MB in fp32, 382 MB in bf16 (~0.3 % of it)
    >>> rwkvkit.generate(base, tok, "User: hi\\n\\nAssistant:", state=rwkvkit.State.load("chat.state"))
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError
from rwkvkit.state import State

__all__ = ["StateTuned"]


class StateTuned(nn.Module):
    """A frozen RWKV model whose sequences start from a trainable WKV state.

    ``logits, state = tuned(tokens)`` runs the base model from the learned state (expanded over the
    batch, so every sequence starts from it); ``tuned(tokens, state)`` continues ``state`` as the
    base model would (the trainer's later chunks of a long window). The base model's parameters are
    frozen (``requires_grad=False``); the only trainable parameter is :attr:`wkv`.

    Args:
        model: an RWKV-5/6/7 :class:`~rwkvkit.models.rwkv.model.RWKV` (or another
            ``RecurrentLM`` whose state has a matrix ``wkv``).
        init: a batch-1 :class:`rwkvkit.State` to start from (e.g. one exported earlier, to train
            on); None: zeros, i.e. exactly the plain model.

    Example::

        >>> tuned = StateTuned(model)
        >>> opt = torch.optim.AdamW([tuned.wkv], lr=1e-2)
        >>> logits, _ = tuned(x)                          # x [B, T]
        >>> loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()); loss.backward(); opt.step()
        >>> tuned.export_state().save("tuned.state")
    """

    accepts_full_output = True

    def __init__(self, model: nn.Module, init: State | None = None) -> None:
        super().__init__()
        config = model.state_config
        if not config.spec.has_heads:
            raise ConfigError(
                f"state tuning needs a WKV matrix state (RWKV-5, 6 or 7); RWKV-{config.version}'s state is "
                "running sums with a shared maximum exponent (aa, bb, pp), which this wrapper does not train"
            )
        model.requires_grad_(False)
        self.model = model
        start = model.initial_state(1)
        if init is not None:
            init.check_fits(config, 1)
            start = init
        # [L, H, K, V]: one sequence's WKV state, the batch axis dropped
        self.wkv = nn.Parameter(start["wkv"][:, 0].detach().to(torch.float32).clone())

    # ---- what generation and the trainer read of a model -------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def state_config(self):
        return self.model.state_config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def check_state(self, state: State, batch_size: int) -> None:
        self.model.check_state(state, batch_size)

    def start_state(self, batch_size: int) -> State:
        """The start state of ``batch_size`` sequences: the learned WKV (expanded over the batch,
        differentiable: pass it to the base model and the gradient reaches :attr:`wkv`), zero token
        shifts. What :meth:`forward` uses for ``state=None``."""
        fresh = self.model.initial_state(batch_size)
        L, H, K, V = self.wkv.shape
        wkv = self.wkv.unsqueeze(1).expand(L, batch_size, H, K, V)
        return State({**fresh.tensors, "wkv": wkv}, fresh.version)

    _start = start_state  # the name the first callers used

    def initial_state(self, batch_size: int = 1) -> State:
        """The learned start state for ``batch_size`` sequences (a detached copy: what ``state=None``
        means for this wrapper)."""
        start = self.start_state(batch_size)
        return State({n: t.detach().clone() for n, t in start.tensors.items()}, start.version)

    def export_state(self) -> State:
        """The learned start as a batch-1 :class:`rwkvkit.State` for the *base* model (no logits:
        generation from it needs a prompt). ``state.save(path)`` writes it."""
        return self.initial_state(1)

    # ---- forward ---------------------------------------------------------------------------------
    def forward(
        self, tokens: torch.Tensor, state: State | None = None, **kwargs
    ) -> tuple[torch.Tensor, State]:
        """The base model's forward (same arguments and results) from the learned state when
        ``state`` is None, else from ``state``."""
        if kwargs.get("impl") == "kernel" and torch.is_grad_enabled() and self.wkv.requires_grad:
            kwargs["impl"] = "chunk"  # the C++ tier is forward-only: no gradient for the start state
        if state is None:
            if not isinstance(tokens, torch.Tensor):
                tokens = torch.as_tensor(tokens, dtype=torch.long)
            B = tokens.shape[0] if tokens.dim() == 2 else 1  # the model checks the shape itself
            state = self.start_state(B)
        return self.model(tokens, state, **kwargs)
