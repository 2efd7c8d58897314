"""The options of one generation request, declared and validated in one place: :class:`SamplingParams`.

:func:`rwkvkit.generate`, :func:`~rwkvkit.generation.generate_tokens` (:class:`TokenStream`),
:meth:`BatchEngine.add <rwkvkit.generation.BatchEngine.add>` and ``rwkvkit generate`` all take these
options, as keyword arguments or as one object::

    params = SamplingParams(max_new_tokens=64, temperature=0.8, top_p=0.9, seed=0)
    text = rwkvkit.generate(model, tok, prompt, params=params)
    text = rwkvkit.generate(model, tok, prompt, params=params, seed=1)   # a keyword overrides a field

Construction checks every option that does not depend on the model (types and ranges) and raises
:class:`~rwkvkit.errors.ConfigError` naming the option and a sensible value; the checks that need the
vocabulary size (:meth:`SamplingParams.check_vocab`) run once the model is known.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

from rwkvkit.errors import ConfigError
from rwkvkit.generation.sampling import validate_sampling_options

__all__ = ["SamplingParams", "check_int", "token_ids"]


def check_int(name: str, value: Any, minimum: int, hint: str) -> int:
    """``value`` as an int ``>= minimum`` (bools refused), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}: {hint}")
    return int(value)


def check_real(
    name: str, value: Any, hint: str, low: float | None = None, high: float | None = None
) -> float:
    """``value`` as a finite float in ``[low, high]`` (bools and NaN refused), else a ConfigError."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and value == value  # rejects NaN
    if ok:
        value = float(value)
        ok = value not in (float("inf"), float("-inf"))
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f" in [{low}, {high}]" if low is not None and high is not None else ""
        raise ConfigError(f"{name} must be a finite number{bounds}, got {value!r}: {hint}")
    return float(value)


def token_ids(name: str, ids: int | Iterable[int], vocab_size: int | None = None) -> tuple[int, ...]:
    """A token id or an iterable of ids as a tuple of ints; range-checked when ``vocab_size`` is given."""
    if isinstance(ids, (str, bytes)):
        raise ConfigError(f"{name} must be token ids (integers), got the string {ids!r}")
    items = (ids,) if isinstance(ids, Integral) else tuple(ids)
    for t in items:
        if isinstance(t, bool) or not isinstance(t, Integral):
            raise ConfigError(f"{name} must contain integer token ids, got {t!r}")
    out = tuple(int(t) for t in items)
    if vocab_size is not None:
        bad = [t for t in out if not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(
                f"{name} has ids {bad[:5]} outside the model vocabulary [0, {vocab_size}): "
                "pass ids in range (see tokenizer.encode)"
            )
    return out


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SamplingParams:
    """How to sample and when to stop; the defaults are rwkvkit's (see :func:`rwkvkit.generate`).

    Attributes:
        max_new_tokens: the most tokens to sample (0: only prefill, e.g. to build a state).
        temperature: 0 is greedy; else applied after truncation (official semantics).
        top_p: nucleus mass in (0, 1]; 1.0 disables the cut (officially it becomes greedy; see
            :mod:`rwkvkit.generation.sampling`).
        top_k: 0 disables; else keep the ``top_k`` most probable tokens.
        presence_penalty, frequency_penalty, penalty_decay: the official ``alpha_presence``,
            ``alpha_frequency``, ``alpha_decay`` (defaults here 0, 0, 0.996; officially 0.2, 0.2, 0.996;
            the official chat demo uses 0.5, 0.5, 0.996).
        banned_tokens: ids never sampled (one id or an iterable; stored as a tuple).
        stop_tokens: ids that end generation (neither returned nor fed to the model). None: the
            tokenizer's ``eos_id`` where there is a tokenizer (:meth:`for_tokenizer`), else none.
        stop: stop strings (one string or an iterable; stored as a tuple): generation ends when one
            appears and the text ends right before it. Needs a tokenizer.
        seed: seed of a private ``torch.Generator`` (same seed, same tokens); None uses torch's
            global RNG.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.85
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 0.996  # the official alpha_decay
    banned_tokens: tuple[int, ...] = ()
    stop_tokens: tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        # Normalise in place (the dataclass is frozen, so through object.__setattr__): ints stay ints,
        # numbers become floats, id and string collections become tuples.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put(
            "max_new_tokens",
            check_int(
                "max_new_tokens", self.max_new_tokens, 0, "the number of tokens to generate (0 only prefills)"
            ),
        )
        validate_sampling_options(self.temperature, self.top_p, self.top_k)
        put("temperature", float(self.temperature))
        put("top_p", float(self.top_p))
        put("top_k", int(self.top_k))
        hint = "0 disables it; the official chat demo uses 0.5"
        put("presence_penalty", check_real("presence_penalty", self.presence_penalty, hint))
        put("frequency_penalty", check_real("frequency_penalty", self.frequency_penalty, hint))
        decay_hint = "the per-step decay of occurrence counts (official: 0.996)"
        put("penalty_decay", check_real("penalty_decay", self.penalty_decay, decay_hint, 0.0, 1.0))
        put("banned_tokens", token_ids("banned_tokens", self.banned_tokens))
        if self.stop_tokens is not None:
            put("stop_tokens", token_ids("stop_tokens", self.stop_tokens))
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"stop must be non-empty strings, got {s!r}: pass e.g. stop=['\\n\\n']")
        put("stop", stops)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, Integral)):
            raise ConfigError(f"seed must be an integer or None, got {self.seed!r}")
        put("seed", None if self.seed is None else int(self.seed))

    @classmethod
    def build(cls, params: SamplingParams | None = None, /, **options: Any) -> SamplingParams:
        """``params`` (default: all defaults) with the fields in ``options`` replaced and checked.

        This is how the public functions turn their keyword arguments into one object.
        ``max_new_tokens=None`` keeps the value of ``params``. An unknown name raises ``TypeError``
        like any unexpected keyword argument.
        """
        if options.get("max_new_tokens", 0) is None:
            del options["max_new_tokens"]
        unknown = sorted(set(options) - set(_FIELDS))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r}; the sampling options are {', '.join(_FIELDS)}"
            )
        if params is None:
            return cls(**options)
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"params must be a SamplingParams, got {type(params).__name__}")
        return dataclasses.replace(params, **options) if options else params

    @property
    def penalize(self) -> bool:
        """True when a presence or frequency penalty is set (occurrences must then be counted)."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def for_tokenizer(self, tokenizer: Any) -> SamplingParams:
        """These params with ``stop_tokens=None`` made explicit: the tokenizer's ``eos_id``, if any."""
        if self.stop_tokens is not None:
            return self
        eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
        return dataclasses.replace(self, stop_tokens=() if eos is None else (eos,))

    def check_vocab(self, vocab_size: int, vocab_limit: int | None = None) -> None:
        """The checks that need the model's vocabulary size: banned and stop ids in range, and at least
        one id below ``min(vocab_size, vocab_limit)`` (what the tokenizer can decode) left allowed."""
        token_ids("banned_tokens", self.banned_tokens, vocab_size)
        token_ids("stop_tokens", self.stop_tokens or (), vocab_size)
        allowed = vocab_size if vocab_limit is None else min(vocab_size, vocab_limit)
        if len({t for t in self.banned_tokens if t < allowed}) >= allowed:
            raise ConfigError(
                "banned_tokens bans the whole vocabulary (of the ids the tokenizer can decode): "
                "leave at least one token allowed"
            )


_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
