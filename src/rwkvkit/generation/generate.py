"""Text generation with a recurrent RWKV model: chunked prefill, then token-by-token decoding.

Two layers:

* :func:`generate_tokens` / :class:`TokenStream`: the token-level loop (no tokenizer needed). It
  prefills the prompt ids in chunks, then yields sampled token ids, applying banned tokens,
  the official presence/frequency penalties with decay, and stop tokens. The CLI and a batched
  engine can reuse it.
* :func:`generate` / :class:`Generation`: the text-level API on top, with a tokenizer, stop strings
  and streaming.

The decoding loop follows the official ``PIPELINE.generate`` (``rwkv/utils.py``) step by step:

1. banned tokens get logit ``-inf``;
2. every token generated so far gets ``logit -= presence + occurrence * frequency`` (prompt tokens
   are not counted);
3. a token is sampled (:func:`rwkvkit.generation.sampling.sample`); a stop token ends generation and
   is neither returned nor fed to the model;
4. every occurrence is multiplied by ``penalty_decay``;
5. the token's occurrence grows by 0 if its decoded text is a substring of ``' \\t0123456789'``,
   else by 1 (the token is still "seen", so it still pays the presence penalty).

With ``temperature=0`` the loop is greedy and reproduces the official token sequence exactly.

Differences from the official ``PIPELINE.generate``, all deliberate:

* sampling: ``top_p=1.0`` means no truncation (officially: greedy); see
  :mod:`rwkvkit.generation.sampling`. Draws use a ``torch.Generator`` (``seed``), not ``numpy.random``.
* defaults: presence and frequency penalties default to 0 here (officially 0.2 and 0.2).
* ``generate`` stops at ``tokenizer.eos_id`` unless ``stop_tokens`` says otherwise, and never
  samples ids at or above ``tokenizer.vocab_size`` (it could not decode them).
* text comes from the tokenizer's stream decoder: an invalid byte becomes U+FFFD and output goes on
  (officially, output stalls from the first undecodable token on). Stop strings are added.
* the final state has also consumed the last generated token (officially it is sampled but never
  fed), so a conversation can go on from it; this costs one extra model step, and only when the
  state or logits are read.

Model interface: ``logits, state = model(tokens, state=state)`` with ``tokens`` a LongTensor [1, T]
and ``logits`` float [1, T, V]; ``state=None`` starts a fresh sequence. The state is opaque and is
passed back as returned. The model is not switched to eval mode; call ``model.eval()`` yourself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from numbers import Integral, Real
from typing import Any, Literal

import torch

from rwkvkit.errors import ConfigError, TokenizerError
from rwkvkit.generation.sampling import (
    apply_penalties,
    penalty_weight,
    sample,
    validate_sampling_options,
)

__all__ = ["Generation", "TokenStream", "generate", "generate_tokens"]

StopReason = Literal["length", "stop_token", "stop_string"]


# ----------------------------------------------------------------------------------------------
# option checks


def _check_int(name: str, value: Any, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}: {hint}")
    return int(value)


def _check_real(
    name: str, value: Any, hint: str, low: float | None = None, high: float | None = None
) -> float:
    ok = not isinstance(value, bool) and isinstance(value, Real) and value == value  # rejects NaN
    if ok:
        value = float(value)
        ok = value not in (float("inf"), float("-inf"))
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise ConfigError(f"{name} must be a finite number{_range_text(low, high)}, got {value!r}: {hint}")
    return float(value)


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return ""


def _token_ids(name: str, ids: int | Iterable[int], vocab_size: int | None) -> tuple[int, ...]:
    """Normalize a token id or an iterable of ids; range-check when the vocabulary size is known."""
    if isinstance(ids, (str, bytes)):
        raise ConfigError(f"{name} must be token ids (integers), got the string {ids!r}")
    items = (ids,) if isinstance(ids, Integral) else tuple(ids)
    out = []
    for t in items:
        if isinstance(t, bool) or not isinstance(t, Integral):
            raise ConfigError(f"{name} must contain integer token ids, got {t!r}")
        out.append(int(t))
    if vocab_size is not None:
        bad = [t for t in out if not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(
                f"{name} has ids {bad[:5]} outside the model vocabulary [0, {vocab_size}): "
                "pass ids in range (see tokenizer.encode)"
            )
    return tuple(out)


def _vocab_size(model: Any) -> int | None:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, Integral) and not isinstance(size, bool) else None


def stop_strings(stop: str | Iterable[str]) -> tuple[str, ...]:
    """``stop`` as a tuple of non-empty strings (one string is one stop string)."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"stop must be non-empty strings, got {s!r}: pass e.g. stop=['\\n\\n']")
    return stops


def prompt_ids(prompt: str | Sequence[int] | torch.Tensor, tokenizer: Any, hint: str = "") -> list[int]:
    """A prompt (text, ids or a tensor of ids) as a list of ids; text needs ``tokenizer``."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ConfigError(f"a text prompt needs a tokenizer{hint}")
        return list(tokenizer.encode(prompt)) if prompt else []
    if isinstance(prompt, bytes):
        raise ConfigError("prompt must be a str or a sequence of token ids, not bytes: decode it first")
    if isinstance(prompt, torch.Tensor):
        return prompt.reshape(-1).tolist()
    return list(prompt)


def default_stop_tokens(tokenizer: Any) -> tuple[int, ...]:
    """The tokenizer's end-of-text id, if it has one: generation stops there unless told otherwise."""
    eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
    return () if eos is None else (eos,)


def forward_last(model: Any, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """``model(tokens [B, T], state)`` -> ``(logits [B, T or 1, V], state)``; only the last position is used.

    Models with a true ``accepts_full_output`` attribute (rwkvkit's RWKV) are asked for the last
    position's logits only (``full_output=False``: the output head then costs one row per sequence,
    not ``T``); any other model is called plainly.
    """
    if getattr(model, "accepts_full_output", False):
        out, state = model(tokens, state=state, full_output=False)
    else:
        out, state = model(tokens, state=state)
    B, T = tokens.shape
    if out.ndim != 3 or out.shape[0] != B or out.shape[1] not in (1, T):
        raise RuntimeError(
            f"the model returned logits of shape {tuple(out.shape)}, expected [{B}, {T}, V] "
            f"for tokens [{B}, {T}]"
        )
    return out, state


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# token level


class TokenStream(Iterator[int]):
    """Iterator of sampled token ids for one sequence; build it with :func:`generate_tokens`.

    Attributes (readable at any time):
        tokens: the ids yielded so far (a stop token is never included).
        stop_reason: None while running, then ``"length"`` (``max_new_tokens`` reached) or
            ``"stop_token"``.
        state: the model state after the prompt and every id in ``tokens`` (reading it may run one
            model step to feed the last yielded token, which is otherwise fed lazily when the next
            token is requested).
        logits: float32 [V], the model's logits after ``state`` (what the next token would be
            sampled from, before bans and penalties); None if nothing has been fed yet.

    The prompt is prefilled on the first ``next()`` (or the first read of ``state``/``logits``), not
    at construction, so an unused stream costs nothing.
    """

    def __init__(
        self,
        model: Any,
        prompt_tokens: Sequence[int],
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 0.85,
        top_k: int = 0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        penalty_decay: float = 0.996,
        banned_tokens: int | Iterable[int] = (),
        stop_tokens: int | Iterable[int] = (),
        token_weight: Callable[[int], float] | None = None,
        vocab_limit: int | None = None,
        state: Any = None,
        logits: torch.Tensor | None = None,
        chunk_len: int = 256,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        vocab = _vocab_size(model)
        self.max_new_tokens = _check_int(
            "max_new_tokens", max_new_tokens, 0, "the number of tokens to generate (0 only prefills)"
        )
        validate_sampling_options(temperature, top_p, top_k)
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k)
        self.presence_penalty = _check_real(
            "presence_penalty", presence_penalty, "0 disables it; the official chat demo uses 0.5"
        )
        self.frequency_penalty = _check_real(
            "frequency_penalty", frequency_penalty, "0 disables it; the official chat demo uses 0.5"
        )
        self.penalty_decay = _check_real(
            "penalty_decay",
            penalty_decay,
            "the per-step decay of occurrence counts (official: 0.996)",
            0.0,
            1.0,
        )
        self.chunk_len = _check_int(
            "chunk_len", chunk_len, 1, "the prefill chunk length in tokens (e.g. 256)"
        )
        self.banned_tokens = _token_ids("banned_tokens", banned_tokens, vocab)
        self.stop_tokens = frozenset(_token_ids("stop_tokens", stop_tokens, vocab))
        self.vocab_limit = (
            None
            if vocab_limit is None
            else _check_int("vocab_limit", vocab_limit, 1, "the tokenizer's vocab_size, or None")
        )
        if vocab is not None:
            self._check_not_all_banned(vocab)

        if isinstance(prompt_tokens, (str, bytes)):
            raise ConfigError("prompt_tokens must be token ids; encode text with the tokenizer first")
        if isinstance(prompt_tokens, torch.Tensor):
            prompt_tokens = prompt_tokens.reshape(-1).tolist()
        prompt = [int(t) for t in _token_ids("prompt_tokens", prompt_tokens, None)]
        if vocab is not None:
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise TokenizerError(
                    f"the prompt has token ids {bad[:5]} outside the model vocabulary [0, {vocab}): "
                    "the tokenizer does not fit this model; load the tokenizer the model was trained with"
                )
        if not prompt and state is None:
            raise ConfigError(
                "the prompt is empty and no state was given: pass some prompt text, or a state "
                "(with its logits) to continue from"
            )
        if not prompt and logits is None and self.max_new_tokens > 0:
            raise ConfigError(
                "an empty prompt with a state needs the logits of the last token the state consumed: "
                "pass logits=... (e.g. Generation.logits), or put at least one token in the prompt"
            )
        if seed is not None and generator is not None:
            raise ConfigError("pass either seed or generator, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)):
            raise ConfigError(f"seed must be an integer or None, got {seed!r}")

        self._model = model
        self._vocab = vocab
        self._device = _model_device(model)
        self._prompt = prompt
        self._state = state
        self._logits: torch.Tensor | None = None
        if logits is not None:
            if not isinstance(logits, torch.Tensor) or logits.ndim == 0:
                raise ConfigError("logits must be a tensor whose last dimension is the vocabulary")
            # Accept [V], [1, V] or [1, T, V]: the last row is the one after the state's last token.
            self._logits = logits.detach().reshape(-1, logits.shape[-1])[-1].float()
        self._seed = None if seed is None else int(seed)
        self._generator = generator
        self._token_weight = token_weight if token_weight is not None else (lambda _t: 1.0)
        self._penalize = self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        self._occurrence: torch.Tensor | None = None  # dense [V] float64 (official: dict of floats)
        self._seen: torch.Tensor | None = None  # dense [V] bool: keys of the official dict
        self._ban_index: torch.Tensor | None = None
        self._prefilled = False
        self._ready = False  # _setup done
        self._pending: int | None = None  # yielded but not yet fed to the model
        self.tokens: list[int] = []
        self.stop_reason: StopReason | None = None

    # -- model steps ---------------------------------------------------------------------------

    def _run(self, ids: list[int]) -> None:
        tokens = torch.tensor([ids], dtype=torch.long, device=self._device)
        out, self._state = forward_last(self._model, tokens, self._state)
        # Keep only the last position: the next token is sampled from it.
        self._logits = out[0, -1].float()

    def _ensure_prefilled(self) -> None:
        if self._prefilled:
            return
        # Chunked prefill: the recurrent state carries across chunks, so the result equals one call
        # on the whole prompt while the [chunk_len, V] logits bound the peak memory.
        for start in range(0, len(self._prompt), self.chunk_len):
            self._run(self._prompt[start : start + self.chunk_len])
        self._prefilled = True

    def _feed_pending(self) -> None:
        if self._pending is not None:
            token, self._pending = self._pending, None
            self._run([token])

    @property
    def state(self) -> Any:
        with torch.inference_mode():
            self._ensure_prefilled()
            self._feed_pending()
        return self._state

    @property
    def logits(self) -> torch.Tensor | None:
        with torch.inference_mode():
            self._ensure_prefilled()
            self._feed_pending()
        return self._logits

    # -- decoding ------------------------------------------------------------------------------

    def _setup(self, logits: torch.Tensor) -> None:
        """Lazy per-device setup on the first sampling step (the vocabulary size is now known)."""
        vocab = logits.shape[-1]
        if self._vocab is None:
            # The model has no config.vocab_size: check the ids now that the logits tell the size.
            _token_ids("banned_tokens", self.banned_tokens, vocab)
            _token_ids("stop_tokens", self.stop_tokens, vocab)
            self._check_not_all_banned(vocab)
            self._vocab = vocab
        banned = set(self.banned_tokens)
        if self.vocab_limit is not None:
            # Ids the tokenizer cannot decode (e.g. the 6 padding rows of a World model's 65536).
            banned.update(range(self.vocab_limit, vocab))
        if banned:
            self._ban_index = torch.tensor(sorted(banned), dtype=torch.long, device=logits.device)
        if self._penalize:
            wide = torch.float64 if logits.device.type != "mps" else torch.float32
            self._occurrence = torch.zeros(vocab, dtype=wide, device=logits.device)
            self._seen = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
        if self._generator is None and self._seed is not None:
            self._generator = torch.Generator(device=logits.device)
            self._generator.manual_seed(self._seed)

    def _check_not_all_banned(self, vocab: int) -> None:
        allowed = vocab if self.vocab_limit is None else min(vocab, self.vocab_limit)
        if len({t for t in self.banned_tokens if t < allowed}) >= allowed:
            raise ConfigError(
                "banned_tokens bans the whole vocabulary (of the ids the tokenizer can decode): "
                "leave at least one token allowed"
            )

    def _finish(self, reason: StopReason) -> None:
        self.stop_reason = reason

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self.stop_reason is not None:
            raise StopIteration
        with torch.inference_mode():
            self._ensure_prefilled()
            if len(self.tokens) >= self.max_new_tokens:
                self._finish("length")
                raise StopIteration
            self._feed_pending()
            if self._logits is None:  # excluded by the constructor checks; kept as a clear failure
                raise ConfigError("no logits to sample from: pass a prompt or the state's logits")
            if not self._ready:
                self._setup(self._logits)
                self._ready = True
            logits = self._logits
            # Official order: ban, then penalties (a banned -inf stays -inf), then sample.
            if self._ban_index is not None:
                logits = logits.index_fill(-1, self._ban_index, float("-inf"))
            if self._occurrence is not None:
                logits = apply_penalties(
                    logits, self._occurrence, self.presence_penalty, self.frequency_penalty, seen=self._seen
                )
            token = int(sample(logits, self.temperature, self.top_p, self.top_k, generator=self._generator))
            if token in self.stop_tokens:
                self._finish("stop_token")
                raise StopIteration
            if self._occurrence is not None:
                # Decay the old counts first, then add this token's weight (official order).
                self._occurrence.mul_(self.penalty_decay)
                self._occurrence[token] += self._token_weight(token)
                self._seen[token] = True
            self.tokens.append(token)
            self._pending = token
            return token


def generate_tokens(model: Any, prompt_tokens: Sequence[int], **options: Any) -> TokenStream:
    """Token-level generation for one sequence: returns a :class:`TokenStream` of sampled ids.

    Args:
        model: ``logits, state = model(LongTensor[1, T], state=state)``, logits float [1, T, V].
        prompt_tokens: the prompt ids, prefilled in chunks of ``chunk_len``. May be empty when
            continuing from ``state`` with its ``logits``.
        max_new_tokens: the most ids to sample (a sampled stop token counts, as officially).
        temperature, top_p, top_k: see :func:`rwkvkit.generation.sampling.sample`.
        presence_penalty, frequency_penalty, penalty_decay: the official ``alpha_presence``,
            ``alpha_frequency`` and ``alpha_decay`` (defaults here 0, 0, 0.996; officially 0.2, 0.2,
            0.996).
        banned_tokens: ids that are never sampled.
        stop_tokens: ids that end generation; they are neither yielded nor fed to the model.
        token_weight: ``id -> occurrence weight`` (the official rule is
            ``penalty_weight(tokenizer.decode([id]))``); default 1 for every token.
        vocab_limit: ids ``>= vocab_limit`` are never sampled; pass the tokenizer's ``vocab_size`` when
            the model's vocabulary is larger (World: 65530 ids, 65536 logits). None: no limit.
        state: the state to continue from (None: a fresh sequence). Passed to the model as is; rwkvkit
            models return a new state and leave this one unchanged, so it can be reused.
        logits: the logits the model returned for the last token ``state`` consumed ([V], [1, V] or
            [1, T, V]); needed only with an empty prompt.
        chunk_len: prefill chunk length.
        seed: seeds a new ``torch.Generator`` on the logits' device (reproducible runs).
        generator: use this generator instead (mutually exclusive with ``seed``); with neither, torch's
            global RNG is used.

    Raises:
        ConfigError: on invalid options (checked here, before any model call).
        TokenizerError: when a prompt id is outside the model vocabulary.
    """
    return TokenStream(model, prompt_tokens, **options)


# ----------------------------------------------------------------------------------------------
# text level


class _DecodeStreamDecoder:
    """Stream decoder for tokenizers without ``stream_decoder()``: the official strategy.

    Pending tokens are decoded together and released once the text has no U+FFFD (so a character
    split across tokens is never emitted half-way); ``flush`` releases whatever is left.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._pending: list[int] = []

    def push(self, token_id: int) -> str:
        self._pending.append(token_id)
        text = self._tokenizer.decode(self._pending)
        if "\ufffd" in text:
            return ""
        self._pending = []
        return text

    def flush(self) -> str:
        text = self._tokenizer.decode(self._pending) if self._pending else ""
        self._pending = []
        return text


def _held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class Generation(Iterator[str]):
    """Streaming text generation: an iterator of text pieces, returned by ``generate(stream=True)``.

    Each piece is complete text (never half a UTF-8 character); the pieces concatenate to exactly
    the text ``generate(stream=False)`` returns with the same arguments. Text that could be the start
    of a stop string is held back until it is known not to be one.

    Attributes:
        text: the text yielded so far.
        tokens: the generated token ids so far (includes the tokens that completed a stop string,
            excludes a stop token).
        stop_reason: None while running, then ``"length"``, ``"stop_token"`` or ``"stop_string"``.
        state: the model state after the prompt and every id in ``tokens`` (use it after the
            iteration to continue the conversation; ``state.save(path)`` persists it).
        logits: float32 [V] logits after ``state`` (pass as ``logits=`` to continue with an empty
            prompt).
        finished: True once the iteration is over.
    """

    def __init__(self, tokens: TokenStream, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._stream = tokens
        make = getattr(tokenizer, "stream_decoder", None)
        self._decoder = make() if callable(make) else _DecodeStreamDecoder(tokenizer)
        self._stop = stop
        self._buffer = ""  # decoded text not yet yielded (a possible stop-string prefix)
        self._queue: deque[str] = deque()
        self._stop_string_hit = False
        self.finished = False
        self.text = ""

    @property
    def tokens(self) -> list[int]:
        return self._stream.tokens

    @property
    def stop_reason(self) -> StopReason | None:
        return "stop_string" if self._stop_string_hit else self._stream.stop_reason

    @property
    def state(self) -> Any:
        return self._stream.state

    @property
    def logits(self) -> torch.Tensor | None:
        return self._stream.logits

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        while not self._queue:
            if self.finished:
                raise StopIteration
            self._advance()
        return self._queue.popleft()

    def _emit(self, piece: str) -> None:
        if piece:
            self.text += piece
            self._queue.append(piece)

    def _advance(self) -> None:
        try:
            piece = self._decoder.push(next(self._stream))
            last = False
        except StopIteration:
            piece = self._decoder.flush()
            last = True
        self._buffer += piece
        if self._stop:
            # The buffer never held a whole stop string before, so any match involves the new piece;
            # cut at the earliest one.
            hits = [i for i in (self._buffer.find(s) for s in self._stop) if i >= 0]
            if hits:
                self._emit(self._buffer[: min(hits)])
                self._buffer = ""
                self._stop_string_hit = True
                self.finished = True
                return
        if last:
            self._emit(self._buffer)
            self._buffer = ""
            self.finished = True
            return
        hold = _held_suffix(self._buffer, self._stop) if self._stop else 0
        cut = len(self._buffer) - hold
        self._emit(self._buffer[:cut])
        self._buffer = self._buffer[cut:]


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    max_new_tokens: int = 64,
    *,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    penalty_decay: float = 0.996,
    banned_tokens: int | Iterable[int] = (),
    stop: str | Iterable[str] = (),
    stop_tokens: int | Iterable[int] | None = None,
    seed: int | None = None,
    stream: bool = False,
    state: Any = None,
    logits: torch.Tensor | None = None,
    chunk_len: int = 256,
    return_state: bool = False,
) -> str | tuple[str, Any] | Generation:
    """Generate text after ``prompt`` with a recurrent model (chunked prefill, then one token a step).

    Example::

        text = generate(model, tok, "The Eiffel tower is in", max_new_tokens=64, temperature=1.0,
                        top_p=0.85, seed=0)
        for piece in generate(model, tok, prompt, stream=True):
            print(piece, end="", flush=True)

    Args:
        model: ``logits, state = model(LongTensor[1, T], state=state)``; logits float [1, T, V] and
            ``model.config.vocab_size == V`` when available.
        tokenizer: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``eos_id`` and
            preferably ``stream_decoder()``.
        prompt: text (or token ids) to prefill. May be empty only when ``state`` (and ``logits``) is
            given.
        max_new_tokens: the most tokens to sample (0: only prefill, e.g. to build a state).
        temperature: 0 is greedy; else applied after truncation (official semantics).
        top_p: nucleus mass in (0, 1]. 1.0 disables the cut (officially top_p=1.0 silently becomes
            greedy; see :mod:`rwkvkit.generation.sampling`).
        top_k: 0 disables; else keep the top_k most probable tokens.
        presence_penalty, frequency_penalty, penalty_decay: the official ``alpha_presence``,
            ``alpha_frequency``, ``alpha_decay``. Defaults 0, 0, 0.996 (officially 0.2, 0.2, 0.996; the
            official chat demo uses 0.5, 0.5, 0.996). Whitespace and digit tokens (decoded text a
            substring of ``' \\t0123456789'``) only pay the presence penalty.
        banned_tokens: token ids never sampled (the official chat demo bans 0). Ids at or above
            ``tokenizer.vocab_size`` are always banned (the tokenizer cannot decode them; the World
            models have 65536 logits for 65530 ids).
        stop: a string or strings; generation ends when one appears and the returned text ends
            right before it.
        stop_tokens: token ids that end generation (not returned). None (default): the tokenizer's
            ``eos_id`` if it has one, else none; ``()`` disables.
        seed: seed of a private ``torch.Generator`` (same seed, same text); None uses torch's global RNG.
        stream: return a :class:`Generation` (iterator of text pieces) instead of the text.
        state: continue from this state (None: fresh). rwkvkit models never modify it, so one saved
            state (e.g. a system prompt) can seed many generations.
        logits: with an empty prompt, the logits after ``state`` (e.g. ``Generation.logits``).
        chunk_len: prefill chunk length (memory/speed only; the result is the same).
        return_state: without ``stream``, return ``(text, state)``. The state has consumed the
            prompt and every generated token (also those of a stop string; not a stop token). With
            ``stream=True`` use ``Generation.state`` instead.

    Returns:
        ``text``; ``(text, state)`` if ``return_state``; a :class:`Generation` if ``stream``.

    Raises:
        ConfigError: on invalid options, raised at the call (also with ``stream=True``).
        TokenizerError: when the prompt has ids outside the model vocabulary.
    """
    stops = stop_strings(stop)
    prompt_tokens = prompt_ids(prompt, tokenizer)
    if stop_tokens is None:
        stop_tokens = default_stop_tokens(tokenizer)

    # Never sample an id the tokenizer cannot decode (a model's embedding may be padded past it).
    vocab_limit = getattr(tokenizer, "vocab_size", None)
    if isinstance(vocab_limit, bool) or not isinstance(vocab_limit, Integral) or vocab_limit < 1:
        vocab_limit = None
    cache: dict[int, float] = {}

    def token_weight(token: int) -> float:
        # Official rule: decode the single token and apply the substring test; cached per call.
        if token not in cache:
            cache[token] = penalty_weight(tokenizer.decode([token]))
        return cache[token]

    tokens = TokenStream(
        model,
        prompt_tokens,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        penalty_decay=penalty_decay,
        banned_tokens=banned_tokens,
        stop_tokens=stop_tokens,
        token_weight=token_weight,
        vocab_limit=vocab_limit,
        state=state,
        logits=logits,
        chunk_len=chunk_len,
        seed=seed,
    )
    gen = Generation(tokens, tokenizer, stops)
    if stream:
        return gen
    text = "".join(gen)
    return (text, gen.state) if return_state else text
