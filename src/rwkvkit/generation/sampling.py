"""Logit processing and sampling, following the official ``rwkv`` package (``rwkv/utils.py``).

Everything here is a pure function of a float logits tensor whose last dimension is the vocabulary:
shape ``[V]`` (one sequence) or ``[B, V]`` (a batch; every row is processed independently with the
same options). Nothing is modified in place.

The pipeline of one decoding step, in the official order (``PIPELINE.generate``)::

    logits = ban_tokens(logits, banned)                          # banned ids -> -inf
    logits = apply_penalties(logits, occurrence, presence, frequency)
    token = sample(logits, temperature, top_p, top_k, generator)

``sample`` reproduces the official ``PIPELINE.sample_logits`` (CPU path):

1. ``temperature == 0`` means greedy: keep only the most probable token (all of them on an exact tie).
2. ``probs = softmax(logits)`` in float32.
3. top-p: sort descending, take the float32 running sum, find the first index where it reaches
   ``top_p`` and zero every probability below the probability at that index (ties at the cutoff are
   kept, so more than the minimal nucleus may survive).
4. top-k (``0 < top_k < V``): zero all but the ``top_k`` most probable tokens.
5. ``probs ** (1 / temperature)`` -- *after* truncation, so the temperature reshapes the nucleus but
   never changes which tokens are in it.
6. Normalize and draw one token.

Differences from the official code, all deliberate:

* ``top_p >= 1.0`` disables the top-p cut. The official code does the cut anyway, and because the
  float32 running sum of a softmax usually ends slightly *below* 1.0 (e.g. 0.99999 for 65536
  tokens), ``argmax(cum >= 1.0)`` sees no True entry, returns 0, and sampling silently becomes
  greedy. The same happens officially for any ``top_p`` above the final running sum (e.g. 0.99999);
  here a ``top_p`` the running sum never reaches also keeps every token.
* If ``probs ** (1 / temperature)`` underflows to all zeros (tiny temperatures over a flat
  distribution; the official code then divides by zero), the row is recomputed as
  ``(probs / max(probs)) ** (1 / temperature)``, which is the same distribution without underflow.
* The draw uses ``torch.multinomial`` with an optional ``torch.Generator`` (the official CPU path
  uses the global ``numpy.random``), so a seeded generator makes runs reproducible.
* On CPU the running sum is computed with numpy in float32, exactly like the official CPU path
  (``torch.cumsum`` on CPU accumulates in float64, which moves the cutoff in rare cases). On other
  devices ``torch.cumsum`` is used, like the official GPU path.
* Ties at the top-k boundary keep the lowest token ids (the official code leaves them to numpy's
  unstable argsort). With float logits exact ties are rare.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Integral, Real

import numpy as np
import torch
from torch.nn import functional as F

from rwkvkit.errors import ConfigError

__all__ = [
    "PENALTY_FREE_TEXT",
    "apply_penalties",
    "ban_tokens",
    "penalty_weight",
    "sample",
    "sampling_probs",
    "validate_sampling_options",
]

#: The official "does not count for the frequency penalty" rule: a token whose decoded text is a
#: *substring* of this string (a space, a tab, a digit, a run like "12", or the empty string) adds
#: weight 0 to its occurrence count; every other token adds 1.
PENALTY_FREE_TEXT = " \t0123456789"


def penalty_weight(text: str) -> float:
    """Occurrence weight of a generated token whose decoded text is ``text`` (official rule).

    Returns 0.0 if ``text`` is a substring of ``' \\t0123456789'`` (note: a substring test, so
    ``'12'``, ``' \\t'`` and ``''`` give 0 but ``'21'`` gives 1), else 1.0. A token of weight 0 is still
    recorded as seen, so it still pays the presence penalty.
    """
    return 0.0 if text in PENALTY_FREE_TEXT else 1.0


def validate_sampling_options(temperature: float, top_p: float, top_k: int) -> None:
    """Raise :class:`ConfigError` unless ``temperature >= 0``, ``0 < top_p <= 1`` and ``top_k >= 0``."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, Real)
        or not (math.isfinite(temperature) and temperature >= 0)
    ):
        raise ConfigError(
            f"temperature must be a finite number >= 0, got {temperature!r}: use 0 for greedy decoding "
            "and 1.0 for the model's distribution"
        )
    if isinstance(top_p, bool) or not isinstance(top_p, Real) or not (0.0 < top_p <= 1.0):
        raise ConfigError(
            f"top_p must be in (0, 1], got {top_p!r}: use 1.0 to disable nucleus sampling "
            "and temperature=0 for greedy decoding"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 0:
        raise ConfigError(f"top_k must be an integer >= 0, got {top_k!r}: use 0 to disable top-k")


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim not in (1, 2) or logits.shape[-1] == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor of shape [V] or [B, V] with V > 0, got {shape}")


def ban_tokens(logits: torch.Tensor, token_ids: Iterable[int]) -> torch.Tensor:
    """Return a copy of ``logits`` ([V] or [B, V]) with ``logits[..., id] = -inf`` for every id.

    Out-of-range ids raise :class:`ConfigError` (a silent wrap-around of negative ids would ban the
    wrong token).
    """
    _check_logits(logits)
    ids = [int(t) for t in token_ids]
    out = logits.clone()
    if not ids:
        return out
    vocab = logits.shape[-1]
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ConfigError(
            f"banned token ids {bad[:5]} are outside the vocabulary [0, {vocab}): pass ids the model has"
        )
    out[..., ids] = float("-inf")
    return out


def _float64_ok(device: torch.device) -> bool:
    # MPS has no float64; elsewhere keep the penalty arithmetic in float64 like the official Python floats.
    return device.type != "mps"


def apply_penalties(
    logits: torch.Tensor,
    occurrence: Mapping[int, float] | torch.Tensor,
    presence: float,
    frequency: float,
    *,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return ``logits`` minus the official presence/frequency penalty.

    For every token ``n`` that has been generated before::

        logits[..., n] -= presence + occurrence[n] * frequency

    ``occurrence`` is either

    * a mapping ``{token_id: weight}`` like the official dict: every key is penalized, including keys
      whose weight has become 0 (whitespace/digit tokens, see :func:`penalty_weight`); applied to
      every row of a [B, V] tensor; or
    * a dense float tensor of shape [V] or [B, V] (broadcast against ``logits``). The tokens that are
      penalized are those where the bool mask ``seen`` (same shape rules) is True; without ``seen``,
      those with ``occurrence > 0``. Pass ``seen`` to reproduce the official rule that a weight-0
      token still pays the presence penalty.

    The penalty ``presence + occurrence * frequency`` is computed in float64 (the official code uses
    Python floats) and rounded to the logits dtype before the subtraction, which reproduces the
    official in-place ``out[n] -= ...`` bit for bit. ``-inf`` (banned) logits stay ``-inf``.

    Args:
        logits: float tensor [V] or [B, V].
        occurrence: see above.
        presence: constant penalty of any token seen before (official ``alpha_presence``).
        frequency: penalty per unit of (decayed) occurrence (official ``alpha_frequency``).
        seen: optional bool mask for the dense form.

    Returns:
        A new tensor with the shape and dtype of ``logits``.
    """
    _check_logits(logits)
    vocab = logits.shape[-1]
    wide = torch.float64 if _float64_ok(logits.device) else torch.float32
    if isinstance(occurrence, Mapping):
        out = logits.clone()
        if not occurrence:
            return out
        ids = [int(k) for k in occurrence]
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"occurrence has token ids {bad[:5]} outside the vocabulary [0, {vocab})")
        weights = torch.tensor([float(occurrence[k]) for k in occurrence], dtype=wide, device=logits.device)
        # Two separate roundings (multiply, then add) like the Python expression; no fused multiply-add.
        penalty = weights * frequency
        penalty = penalty + presence
        idx = torch.tensor(ids, dtype=torch.long, device=logits.device)
        out[..., idx] = out[..., idx] - penalty.to(logits.dtype)
        return out
    if not isinstance(occurrence, torch.Tensor) or occurrence.shape[-1] != vocab:
        raise ValueError("a dense occurrence must be a tensor whose last dimension is the vocabulary size")
    mask = seen if seen is not None else occurrence > 0
    penalty = occurrence.to(device=logits.device, dtype=wide) * frequency
    penalty = penalty + presence
    penalty = torch.where(mask.to(logits.device), penalty, torch.zeros((), dtype=wide, device=logits.device))
    return logits - penalty.to(logits.dtype)


def _cumsum_f32(sorted_probs: torch.Tensor) -> torch.Tensor:
    """Float32 running sum along the last dim, accumulated in float32 like the official code."""
    if sorted_probs.device.type == "cpu":
        # numpy's add.accumulate is sequential in float32, exactly the official CPU path.
        return torch.from_numpy(np.cumsum(sorted_probs.numpy(), axis=-1))
    return torch.cumsum(sorted_probs, dim=-1)


# The top-p search starts with this many candidates and widens by _TOP_P_GROWTH until the running
# sum reaches top_p: a full sort of 65536 probabilities costs ~10x a top-1024 on CPU.
_TOP_P_FIRST = 1024
_TOP_P_GROWTH = 8


def _top_p_cutoff(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per-row probability below which tokens are dropped ([..., 1]; 0 keeps everything).

    The cutoff is the sorted probability at the first index whose float32 running sum reaches
    ``top_p``. Only the largest probabilities are sorted: the running sum over the top-k prefix is the
    same float32 sequence of additions as over the full sort, so the result is exact.
    """
    vocab = probs.shape[-1]
    k = min(vocab, _TOP_P_FIRST)
    while True:
        top = torch.topk(probs, k, dim=-1, sorted=True).values  # descending
        cum = _cumsum_f32(top).to(probs.device)
        # The comparison is in float32 (the Python float is cast), as in the official numpy code.
        reached = cum >= top_p
        hit = reached.any(dim=-1, keepdim=True)
        if k == vocab or bool(hit.all()):
            break
        k = min(vocab, k * _TOP_P_GROWTH)
    first = reached.to(torch.uint8).argmax(dim=-1, keepdim=True)
    cutoff = top.gather(-1, first)
    # Deviation (documented): a top_p the float32 running sum never reaches keeps every token instead
    # of collapsing to greedy (cutoff = max prob, the official result of argmax over all-False).
    return torch.where(hit, cutoff, torch.zeros_like(cutoff))


def _top_k_mask(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Bool mask of exactly ``top_k`` tokens per row: the most probable, ties broken by lowest id."""
    kth = torch.topk(probs, top_k, dim=-1, sorted=True).values[..., -1:]
    above = probs > kth
    # Fill the remaining places with the tokens equal to the k-th value, lowest ids first.
    room = top_k - above.sum(dim=-1, keepdim=True)
    tied = probs == kth
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def sampling_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.85, top_k: int = 0
) -> torch.Tensor:
    """The normalized probability vector :func:`sample` draws from, after truncation and temperature.

    See the module docstring for the exact procedure and the differences from the official
    ``PIPELINE.sample_logits`` (notably: ``top_p >= 1.0`` means no top-p truncation, whereas the
    official code turns ``top_p=1.0`` into greedy decoding).

    Args:
        logits: float tensor [V] or [B, V] (any float dtype; softmax runs in float32).
        temperature: 0 for greedy, else the exponent ``1/temperature`` applied after truncation.
        top_p: nucleus mass in (0, 1]; 1.0 disables the top-p cut.
        top_k: keep only the ``top_k`` most probable tokens; 0 (or >= V) disables it.

    Returns:
        float32 tensor with the shape of ``logits``; each row sums to 1 (up to rounding) and is
        zero outside the kept tokens.
    """
    _check_logits(logits)
    validate_sampling_options(temperature, top_p, top_k)
    # Sampling needs no gradient; detach so the numpy cumsum also works on tensors that require grad.
    probs = F.softmax(logits.detach().float(), dim=-1)
    vocab = probs.shape[-1]

    if temperature == 0:
        # Official: temperature 0 -> top_p = 0 -> cutoff = max prob; every token at the max is kept.
        top = probs.amax(dim=-1, keepdim=True)
        probs = torch.where(probs >= top, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
        return probs / probs.sum(dim=-1, keepdim=True)

    top_k = int(top_k)
    use_top_p = top_p < 1.0
    use_top_k = 0 < top_k < vocab
    zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
    # Officially both masks come from the untruncated probabilities. Taking the top-k after the top-p
    # cut gives the same set: the top-p survivors are an upper set (every prob >= cutoff).
    if use_top_p:
        probs = torch.where(probs < _top_p_cutoff(probs, float(top_p)), zero, probs)
    if use_top_k:
        probs = torch.where(_top_k_mask(probs, top_k), probs, zero)

    if temperature != 1.0:
        exponent = 1.0 / temperature
        powered = probs**exponent
        total = powered.sum(dim=-1, keepdim=True)
        underflow = total == 0
        if bool(underflow.any()):
            # Same distribution, scaled so the largest entry is 1 and cannot underflow.
            stable = (probs / probs.amax(dim=-1, keepdim=True)) ** exponent
            powered = torch.where(underflow, stable, powered)
        probs = powered
    return probs / probs.sum(dim=-1, keepdim=True)


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row with the official ``sample_logits`` semantics (see the module docstring).

    Differences from the official code: ``top_p >= 1.0`` disables the top-p cut (officially
    ``top_p=1.0`` silently becomes greedy because the float32 running sum ends below 1.0), and the
    draw uses ``torch.multinomial`` with ``generator`` so a seeded generator is reproducible.

    Args:
        logits: float tensor [V] or [B, V]; ``-inf`` entries (banned tokens) are never drawn.
        temperature: 0 for greedy (exact ties are drawn uniformly), else applied as
            ``probs ** (1/temperature)`` after truncation.
        top_p: nucleus mass in (0, 1]; 1.0 disables the top-p cut.
        top_k: 0 disables; else keep the ``top_k`` most probable tokens.
        generator: a ``torch.Generator`` on the device of ``logits``; None uses torch's global RNG.

    Returns:
        int64 tensor of shape ``logits.shape[:-1]`` (0-dim for [V] input; ``int(sample(...))`` gives a
        Python int).

    Raises:
        ConfigError: on invalid options, or when a row has no finite logit (every token banned).
    """
    probs = sampling_probs(logits, temperature=temperature, top_p=top_p, top_k=top_k)
    if not bool(torch.isfinite(probs).all()):
        raise ConfigError(
            "no token can be sampled: every logit of a row is -inf or NaN (are all tokens banned?); "
            "ban fewer tokens, or check the model output"
        )
    if probs.ndim == 1:
        return torch.multinomial(probs, 1, generator=generator)[0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
