"""Text generation with a recurrent RWKV model: chunked prefill, then token-by-token decoding.

Two layers:

* :func:`generate_tokens` / :class:`TokenStream`: the token-level loop (no tokenizer needed). It
  prefills the prompt ids in chunks, then yields sampled token ids, applying banned tokens,
  the official presence/frequency penalties with decay, and stop tokens. The CLI and a batched
  engine can reuse it.
* :func:`generate` / :class:`Generation`: the text-level API on top, with a tokenizer, stop strings
  and streaming (:class:`rwkvkit.generation.text.TextTracker`).

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
passed back as returned (the contract: :mod:`rwkvkit.generation.model`). The model is not switched
to eval mode; call ``model.eval()`` yourself. The options are one :class:`SamplingParams`
(:mod:`rwkvkit.generation.params`), given as keyword arguments or as ``params=``.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch

from rwkvkit.errors import ConfigError
from rwkvkit.generation.cuda_graph import CudaGraphStep, decode_step
from rwkvkit.generation.model import check_prompt_tokens, forward_last, model_device, model_vocab_size
from rwkvkit.generation.params import SamplingParams, check_int, token_ids
from rwkvkit.generation.sampling import apply_penalties, sample
from rwkvkit.generation.text import TextTracker, prompt_ids, token_weights, vocab_limit_of
from rwkvkit.inference.auto import fast_view

__all__ = ["Generation", "TokenSampler", "TokenStream", "generate", "generate_tokens", "start_point"]

StopReason = Literal["length", "stop_token", "stop_string"]


def start_point(
    prompt_tokens: Sequence[int] | torch.Tensor,
    state: Any,
    logits: torch.Tensor | None,
    max_new_tokens: int,
    vocab_size: int | None,
) -> tuple[list[int], torch.Tensor | None]:
    """Check where a sequence starts; returns the prompt ids and the float32 ``[V]`` logits row to
    sample from when the prompt is empty (None when ``logits`` is None).

    The prompt ids are checked against the model's vocabulary here (when its size is known), before
    any model call. An empty prompt needs a ``state``, and ``logits`` unless nothing is sampled.
    """
    if isinstance(prompt_tokens, (str, bytes)):
        raise ConfigError("prompt_tokens must be token ids; encode text with the tokenizer first")
    if isinstance(prompt_tokens, torch.Tensor):
        prompt_tokens = prompt_tokens.reshape(-1).tolist()
    prompt = list(token_ids("prompt_tokens", prompt_tokens))
    if vocab_size is not None:
        check_prompt_tokens(prompt, vocab_size)
    if not prompt and state is None:
        raise ConfigError(
            "the prompt is empty and no state was given: pass some prompt text, or a state "
            "(with its logits) to continue from"
        )
    if not prompt and logits is None and max_new_tokens > 0:
        raise ConfigError(
            "an empty prompt with a state needs the logits of the last token the state consumed: "
            "pass logits=... (e.g. Generation.logits), or put at least one token in the prompt"
        )
    if logits is None:
        return prompt, None
    if not isinstance(logits, torch.Tensor) or logits.ndim == 0:
        raise ConfigError("logits must be a tensor whose last dimension is the vocabulary")
    # Accept [V], [1, V] or [1, T, V]: the last row is the one after the state's last token.
    return prompt, logits.detach().reshape(-1, logits.shape[-1])[-1].float()


# ----------------------------------------------------------------------------------------------
# token level


class TokenSampler:
    """One sequence's sampling state: bans, penalty counts, generator and stop tokens.

    Built once the vocabulary size is known (from the first logits); shared by :class:`TokenStream`
    and :class:`~rwkvkit.generation.BatchEngine`. One decoding step, in the official order::

        token = sampler.draw(sampler.adjust(logits))  # banned ids -inf, then penalties; then sample
        if token in sampler.stop_tokens: ...          # ends the sequence; not recorded, not fed
        sampler.record(token)                         # decay the counts, then count this token

    Args:
        params: the request's options (``stop_tokens`` resolved; see :meth:`SamplingParams.for_tokenizer`).
        vocab_size: the number of logits ``V``.
        device: the logits' device (penalty counts, ban index and a seeded generator live there).
        token_weight: ``id -> occurrence weight`` (:func:`rwkvkit.generation.text.token_weights`);
            default 1 for every id.
        vocab_limit: ids ``>= vocab_limit`` are banned too (None: no limit).
        generator: draw with this generator instead of one seeded with ``params.seed``.
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        device: torch.device,
        *,
        token_weight: Callable[[int], float] | None = None,
        vocab_limit: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.params = params
        self.stop_tokens = frozenset(params.stop_tokens or ())
        banned = set(params.banned_tokens)
        if vocab_limit is not None:
            # Ids the tokenizer cannot decode (e.g. the 6 padding rows of a World model's 65536).
            banned.update(range(vocab_limit, vocab_size))
        self.ban_index = torch.tensor(sorted(banned), dtype=torch.long, device=device) if banned else None
        self.occurrence: torch.Tensor | None = None  # dense [V] float64 (official: a dict of floats)
        self.seen: torch.Tensor | None = None  # dense [V] bool: the keys of the official dict
        if params.penalize:
            wide = torch.float64 if device.type != "mps" else torch.float32
            self.occurrence = torch.zeros(vocab_size, dtype=wide, device=device)
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if generator is None and params.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(params.seed)
        self.generator = generator
        self._weight = token_weight if token_weight is not None else (lambda _t: 1.0)
        self._vocab_size = vocab_size
        self._skipped_draws = 0

    @property
    def adjusts(self) -> bool:
        """True when :meth:`adjust` changes logits (there are bans or penalties)."""
        return self.ban_index is not None or self.occurrence is not None

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [V] with the banned ids at -inf, then the penalties applied (a new tensor)."""
        if self.ban_index is not None:
            logits = logits.index_fill(-1, self.ban_index, float("-inf"))
        if self.occurrence is not None:
            p = self.params
            logits = apply_penalties(
                logits, self.occurrence, p.presence_penalty, p.frequency_penalty, seen=self.seen
            )
        return logits

    def draw(self, logits: torch.Tensor) -> int:
        """Sample one id from adjusted ``logits`` [V] with the request's temperature, top-p and top-k."""
        if self._skipped_draws:
            # Replay the draws skipped by skip_draw(): a draw's use of the generator depends only on
            # the vocabulary size, not on the probabilities.
            dummy = torch.ones(self._vocab_size, dtype=torch.float32, device=logits.device)
            for _ in range(self._skipped_draws):
                torch.multinomial(dummy, 1, generator=self.generator)
            self._skipped_draws = 0
        p = self.params
        return int(sample(logits, p.temperature, p.top_p, p.top_k, generator=self.generator))

    def skip_draw(self) -> None:
        """Note a greedy step decided without :meth:`draw` (a clear argmax): ``draw`` would have used
        the generator once; the next ``draw`` catches up, so the generator stays in step."""
        self._skipped_draws += self.generator is not None

    def record(self, token: int) -> None:
        """Count a generated (non-stop) token for the penalties: decay the old counts first, then add
        this token's weight (official order)."""
        if self.occurrence is not None:
            self.occurrence.mul_(self.params.penalty_decay)
            self.occurrence[token] += self._weight(token)
            self.seen[token] = True


class TokenStream(Iterator[int]):
    """Iterator of sampled token ids for one sequence; build it with :func:`generate_tokens`.

    Attributes (readable at any time):
        params: the :class:`SamplingParams` in use.
        tokens: the ids yielded so far (a stop token is never included).
        stop_reason: None while running, then ``"length"`` (``max_new_tokens`` reached) or
            ``"stop_token"``.
        state: the model state after the prompt and every id in ``tokens`` (reading it may run one
            model step to feed the last yielded token, which is otherwise fed lazily when the next
            token is requested).
        logits: float32 [V], the model's logits after ``state`` (what the next token would be
            sampled from, before bans and penalties); None if nothing has been fed yet.

    The prompt is prefilled on the first ``next()`` (or the first read of ``state``/``logits``), not
    at construction, so an unused stream costs nothing. On CUDA the one-token steps are replayed from
    CUDA graphs unless ``cuda_graphs=False`` (see :func:`generate_tokens`); ``state`` is then a copy
    of the state the graph keeps in its buffers.
    """

    def __init__(
        self,
        model: Any,
        prompt_tokens: Sequence[int] | torch.Tensor,
        *,
        params: SamplingParams | None = None,
        token_weight: Callable[[int], float] | None = None,
        vocab_limit: int | None = None,
        state: Any = None,
        logits: torch.Tensor | None = None,
        chunk_len: int = 256,
        generator: torch.Generator | None = None,
        cuda_graphs: bool | CudaGraphStep = True,
        **sampling: Any,
    ) -> None:
        self.params = SamplingParams.build(params, **sampling)
        if self.params.stop:
            raise ConfigError("stop strings need text: use rwkvkit.generate (a TokenStream yields ids)")
        self.chunk_len = check_int("chunk_len", chunk_len, 1, "the prefill chunk length in tokens (e.g. 256)")
        self.vocab_limit = (
            None
            if vocab_limit is None
            else check_int("vocab_limit", vocab_limit, 1, "the tokenizer's vocab_size, or None")
        )
        vocab = model_vocab_size(model)
        if vocab is not None:
            self.params.check_vocab(vocab, self.vocab_limit)
        self._prompt, self._logits = start_point(
            prompt_tokens, state, logits, self.params.max_new_tokens, vocab
        )
        if self.params.seed is not None and generator is not None:
            raise ConfigError("pass either seed or generator, not both")

        self._model = fast_view(model)  # the CPU fast path of a plain RWKV (rwkvkit.inference.auto)
        self._graph_step = decode_step(model, cuda_graphs)  # None: every step is a plain forward
        self._vocab = vocab
        self._device = model_device(model)
        self._state = state
        self._generator = generator
        self._token_weight = token_weight
        self._sampler: TokenSampler | None = None  # built on the first sampling step
        self._prefilled = False
        self._pending: int | None = None  # yielded but not yet fed to the model
        self.tokens: list[int] = []
        self.stop_reason: StopReason | None = None

    # -- model steps ---------------------------------------------------------------------------

    def _run(self, ids: list[int]) -> None:
        if len(ids) == 1 and self._graph_step is not None:
            # one token: the graph-replayed step (its state stays in the step's buffers)
            out, self._state = self._graph_step(ids, self._state)
        else:
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
            if self._graph_step is not None and self._graph_step.owns(self._state):
                # the resident state changes with the next step: hand out a value
                return self._state.clone()
        return self._state

    @property
    def logits(self) -> torch.Tensor | None:
        with torch.inference_mode():
            self._ensure_prefilled()
            self._feed_pending()
        return self._logits

    # -- decoding ------------------------------------------------------------------------------

    def _make_sampler(self, logits: torch.Tensor) -> TokenSampler:
        vocab = logits.shape[-1]
        if self._vocab is None:  # the model has no config.vocab_size: check the ids now
            self.params.check_vocab(vocab, self.vocab_limit)
            self._vocab = vocab
        return TokenSampler(
            self.params,
            vocab,
            logits.device,
            token_weight=self._token_weight,
            vocab_limit=self.vocab_limit,
            generator=self._generator,
        )

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self.stop_reason is not None:
            raise StopIteration
        with torch.inference_mode():
            self._ensure_prefilled()
            if len(self.tokens) >= self.params.max_new_tokens:
                self.stop_reason = "length"
                raise StopIteration
            self._feed_pending()
            if self._logits is None:  # excluded by the constructor checks; kept as a clear failure
                raise ConfigError("no logits to sample from: pass a prompt or the state's logits")
            if self._sampler is None:
                self._sampler = self._make_sampler(self._logits)
            token = self._sampler.draw(self._sampler.adjust(self._logits))
            if token in self._sampler.stop_tokens:
                self.stop_reason = "stop_token"
                raise StopIteration
            self._sampler.record(token)
            self.tokens.append(token)
            self._pending = token
            return token


def generate_tokens(model: Any, prompt_tokens: Sequence[int], **options: Any) -> TokenStream:
    """Token-level generation for one sequence: returns a :class:`TokenStream` of sampled ids.

    Args:
        model: ``logits, state = model(LongTensor[1, T], state=state)``, logits float [1, T, V]
            (the contract: :class:`rwkvkit.generation.model.GenerativeModel`).
        prompt_tokens: the prompt ids, prefilled in chunks of ``chunk_len``. May be empty when
            continuing from ``state`` with its ``logits``.
        params: a :class:`SamplingParams`; the sampling keyword arguments (``max_new_tokens``,
            ``temperature``, ``top_p``, ``top_k``, ``presence_penalty``, ``frequency_penalty``,
            ``penalty_decay``, ``banned_tokens``, ``stop_tokens``, ``seed``) override its fields.
            ``stop_tokens`` default to none here (no tokenizer); stop strings need
            :func:`generate`. A sampled stop token counts towards ``max_new_tokens``, as officially.
        token_weight: ``id -> occurrence weight`` (the official rule is
            ``penalty_weight(tokenizer.decode([id]))``); default 1 for every token.
        vocab_limit: ids ``>= vocab_limit`` are never sampled; pass the tokenizer's ``vocab_size`` when
            the model's vocabulary is larger (World: 65530 ids, 65536 logits). None: no limit.
        state: the state to continue from (None: a fresh sequence). Passed to the model as is; rwkvkit
            models return a new state and leave this one unchanged, so it can be reused.
        logits: the logits the model returned for the last token ``state`` consumed ([V], [1, V] or
            [1, T, V]); needed only with an empty prompt.
        chunk_len: prefill chunk length.
        generator: draw with this ``torch.Generator`` instead of one seeded with ``seed`` (mutually
            exclusive); with neither, torch's global RNG is used.
        cuda_graphs: on a CUDA device, replay the one-token steps from captured CUDA graphs
            (:mod:`rwkvkit.generation.cuda_graph`; same tokens, much less launch overhead). False:
            plain forwards (also for the whole process: ``RWKVKIT_CUDA_GRAPHS=0``). Never used on
            other devices. A :class:`~rwkvkit.generation.cuda_graph.CudaGraphStep` is used as given.

    Raises:
        ConfigError: on invalid options (checked here, before any model call).
        VocabularyError: when a prompt id is outside the model vocabulary (an ``InputError`` and a
            ``TokenizerError``).
    """
    return TokenStream(model, prompt_tokens, **options)


# ----------------------------------------------------------------------------------------------
# text level


class Generation(Iterator[str]):
    """Streaming text generation: an iterator of text pieces, returned by ``generate(stream=True)``.

    Each piece is complete text (never half a UTF-8 character); the pieces concatenate to exactly
    the text ``generate(stream=False)`` returns with the same arguments. Text that could be the start
    of a stop string is held back until it is known not to be one (:class:`TextTracker`).

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
        self._tracker = TextTracker(tokenizer, stop)
        self._queue: deque[str] = deque()
        self.finished = False

    @property
    def text(self) -> str:
        return self._tracker.text

    @property
    def tokens(self) -> list[int]:
        return self._stream.tokens

    @property
    def stop_reason(self) -> StopReason | None:
        return "stop_string" if self._tracker.stop_hit else self._stream.stop_reason

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
            try:
                piece = self._tracker.push(next(self._stream))
            except StopIteration:
                piece = self._tracker.close()
                self.finished = True
            self.finished = self.finished or self._tracker.stop_hit
            if piece:
                self._queue.append(piece)
        return self._queue.popleft()


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    max_new_tokens: int | None = None,
    *,
    params: SamplingParams | None = None,
    stream: bool = False,
    state: Any = None,
    logits: torch.Tensor | None = None,
    chunk_len: int = 256,
    return_state: bool = False,
    cuda_graphs: bool | CudaGraphStep = True,
    **sampling: Any,
) -> str | tuple[str, Any] | Generation:
    """Generate text after ``prompt`` with a recurrent model (chunked prefill, then one token a step).

    Example::

        text = generate(model, tok, "The Eiffel tower is in", max_new_tokens=64, temperature=1.0,
                        top_p=0.85, seed=0)
        for piece in generate(model, tok, prompt, stream=True):
            print(piece, end="", flush=True)

    Args:
        model: ``logits, state = model(LongTensor[1, T], state=state)``; logits float [1, T, V] and
            ``model.config.vocab_size == V`` when available (the contract:
            :class:`rwkvkit.generation.model.GenerativeModel`).
        tokenizer: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``eos_id`` and
            preferably ``stream_decoder()``.
        prompt: text (or token ids) to prefill. May be empty only when ``state`` (and ``logits``) is
            given.
        max_new_tokens: the most tokens to sample (0: only prefill, e.g. to build a state); None:
            ``params.max_new_tokens`` (default 64).
        params: a :class:`SamplingParams` holding the sampling options; the keyword arguments
            ``temperature``, ``top_p``, ``top_k``, ``presence_penalty``, ``frequency_penalty``,
            ``penalty_decay``, ``banned_tokens``, ``stop``, ``stop_tokens`` and ``seed`` (see
            :class:`SamplingParams` for their meaning and defaults) override its fields. Here
            ``stop_tokens=None`` (the default) means the tokenizer's ``eos_id`` if it has one (``()``
            disables), and ids at or above ``tokenizer.vocab_size`` are always banned (the tokenizer
            cannot decode them; the World models have 65536 logits for 65530 ids). Whitespace and
            digit tokens (decoded text a substring of ``' \\t0123456789'``) only pay the presence
            penalty.
        stream: return a :class:`Generation` (iterator of text pieces) instead of the text.
        state: continue from this state (None: fresh). rwkvkit models never modify it, so one saved
            state (e.g. a system prompt) can seed many generations.
        logits: with an empty prompt, the logits after ``state`` (e.g. ``Generation.logits``).
        chunk_len: prefill chunk length (memory/speed only; the result is the same).
        return_state: without ``stream``, return ``(text, state)``. The state has consumed the
            prompt and every generated token (also those of a stop string; not a stop token). With
            ``stream=True`` use ``Generation.state`` instead.
        cuda_graphs: True (default): when the model is an rwkvkit recurrent model on a CUDA device,
            each one-token decoding step is one replay of a captured CUDA graph
            (:mod:`rwkvkit.generation.cuda_graph`), with the same tokens as plain forwards. False:
            plain forwards; ``RWKVKIT_CUDA_GRAPHS=0`` in the environment turns graphs off everywhere.
            Ignored on other devices.

    Returns:
        ``text``; ``(text, state)`` if ``return_state``; a :class:`Generation` if ``stream``.

    Raises:
        ConfigError: on invalid options, raised at the call (also with ``stream=True``).
        VocabularyError: when the prompt has ids outside the model vocabulary (an ``InputError`` and a
            ``TokenizerError``), raised before any model call.
    """
    params = SamplingParams.build(params, max_new_tokens=max_new_tokens, **sampling).for_tokenizer(tokenizer)
    tokens = TokenStream(
        model,
        prompt_ids(prompt, tokenizer),
        params=dataclasses.replace(params, stop=()),  # stop strings are text: Generation applies them
        token_weight=token_weights(tokenizer),
        vocab_limit=vocab_limit_of(tokenizer),
        state=state,
        logits=logits,
        chunk_len=chunk_len,
        cuda_graphs=cuda_graphs,
    )
    gen = Generation(tokens, tokenizer, params.stop)
    if stream:
        return gen
    text = "".join(gen)
    return (text, gen.state) if return_state else text
