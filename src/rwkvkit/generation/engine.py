"""Batched generation with continuous batching: many sequences decoded by one model call per step.

:class:`BatchEngine` keeps a set of requests, each with its own prompt, sampling options, seeded
generator and recurrent state, and advances all of them together::

    engine = BatchEngine(model, tokenizer, max_batch=32)
    a = engine.add("The Eiffel tower is in", max_new_tokens=64, seed=0)
    b = engine.add("Once upon a time", temperature=0, stop="\\n\\n")
    while engine.has_work:
        for event in engine.step():
            print(event.request_id, repr(event.text))
    text_a = engine.pop_result(a).text

    texts = engine.generate_many(["Hello", "Bonjour"], max_new_tokens=32, temperature=0)

Each :meth:`BatchEngine.step`:

1. feeds the token every active sequence sampled in the previous step: **one** batched forward
   ``model(tokens [B, 1], state)`` over the batch State (rows are sequences);
2. drops the sequences that finished, and admits queued requests up to ``max_batch`` rows (continuous
   batching: sequences join and leave between steps, the others go on undisturbed);
3. prefills the admitted prompts. A prompt is cut into chunks exactly like :func:`generate` does
   (``prefill_chunk`` = its ``chunk_len``) and only chunks of *equal length* share a forward, so no
   sequence ever sees a padding token: padding a recurrent model's input would change its state;
4. samples one token per sequence from its own logits, with its own options and ``torch.Generator``.

Per request, the decoding step is the one :func:`generate` runs: a
:class:`~rwkvkit.generation.TokenSampler` (bans, penalties, generator, stop tokens) and a
:class:`~rwkvkit.generation.TextTracker` (text and stop strings); only the batching is the engine's.

A request's result equals :func:`rwkvkit.generate` run alone with the same arguments: same tokens,
text, stop reason, final state and logits. Every row of a batched forward is computed independently,
so the only difference is floating-point rounding: batched matrix products can differ from batch-1
ones in the last bits (~1e-6 on logits), which changes a token only on a near-tie. The sampling side
is exact: given the same logits row, a request draws exactly the token ``generate`` would draw.

Speed notes (the decode path runs once per token for every sequence):

* greedy rows (``temperature=0``) are decided together from one ``topk(2)`` over the batch; only a row
  whose two best logits are within ``1e-4`` (a possible tie of the softmax probabilities) goes through
  :func:`rwkvkit.generation.sampling.sample`, with its generator advanced as ``generate`` would have;
* penalties and bans cost nothing for requests that do not use them; the tokenizer's vocabulary limit
  (World: ids >= 65530) is one slice assignment for the whole batch;
* sampled rows (``temperature > 0``) call :func:`~rwkvkit.generation.sampling.sample` one row at a
  time: a batched softmax/top-p/``pow``/``sum`` is not bitwise equal to the per-row one (SIMD lanes and
  reduction splits differ), and each row needs its own generator anyway;
* the batch state is re-indexed (``state.select`` / ``type(state).cat``) only on the steps where a
  sequence joins or leaves;
* on CUDA the decoding forward is replayed from a CUDA graph (``cuda_graphs=True``, the default;
  :mod:`rwkvkit.generation.cuda_graph`), and the batch state stays in the graph's static buffers
  between the steps where no sequence joins or leaves. Finished requests get copies
  (``state.select``), never views of those buffers. Sampling reads the chosen tokens on the host
  once per step (``tolist``, needed for text and stops): the one synchronisation left.

The engine is not thread-safe: call ``add``, ``cancel`` and ``step`` from one thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rwkvkit.errors import ConfigError
from rwkvkit.generation.cuda_graph import CudaGraphStep, decode_step
from rwkvkit.generation.generate import TokenSampler, start_point
from rwkvkit.generation.model import forward_last, model_device, model_vocab_size
from rwkvkit.generation.params import SamplingParams, check_int
from rwkvkit.generation.text import TextTracker, prompt_ids, token_weights, vocab_limit_of
from rwkvkit.inference.auto import fast_view

__all__ = ["BatchEngine", "RequestResult", "StepEvent"]

EngineStopReason = Literal["length", "stop_token", "stop_string", "cancelled"]

# A greedy row whose two best logits are further apart than this has a unique most probable token
# after the float32 softmax (exp(-1e-4) is ~1700 ulps below 1), so argmax equals what sample() draws.
_GREEDY_MARGIN = 1e-4


@dataclass
class RequestResult:
    """The outcome of one request.

    Attributes:
        request_id: the id :meth:`BatchEngine.add` returned.
        prompt_tokens: the prompt ids.
        tokens: the generated ids (includes the tokens that completed a stop string, excludes a stop
            token), as :attr:`rwkvkit.generation.Generation.tokens`.
        text: the generated text, cut right before a stop string ('' without a tokenizer).
        stop_reason: ``"length"``, ``"stop_token"``, ``"stop_string"`` or ``"cancelled"``.
        state: the model state (batch 1) after the prompt and every id in ``tokens``, as
            ``generate(..., return_state=True)`` returns it; None if the request was added with
            ``return_state=False`` or was cancelled.
        logits: float32 [V] logits after ``state`` (pass as ``logits=`` to continue with an empty
            prompt); None when ``state`` is None.
    """

    request_id: int
    prompt_tokens: list[int]
    tokens: list[int]
    text: str
    stop_reason: EngineStopReason
    state: Any = None
    logits: torch.Tensor | None = None


@dataclass(frozen=True)
class StepEvent:
    """What one :meth:`BatchEngine.step` did for one request.

    Attributes:
        request_id: the request.
        token: the id sampled in this step, or None (the request ended on a stop token, or this event
            only reports the end of a request whose last token came in an earlier step).
        text: text released by this step ('' while a character or a possible stop string is
            incomplete); the pieces of a request concatenate to its final text.
        finished: True on the request's last event; ``result`` is then set.
        result: the :class:`RequestResult` (also kept until :meth:`BatchEngine.pop_result`).
    """

    request_id: int
    token: int | None
    text: str
    finished: bool = False
    result: RequestResult | None = None


class _Request:
    """One sequence's options and progress (internal)."""

    __slots__ = (
        "cursor",
        "finish_reason",
        "id",
        "logits",
        "on_prefill",
        "params",
        "pending",
        "prompt",
        "return_state",
        "sampler",
        "state",
        "text",
        "tokens",
    )

    def __init__(
        self,
        request_id: int,
        params: SamplingParams,
        prompt: list[int],
        state: Any,
        logits: torch.Tensor | None,
        return_state: bool,
        text: TextTracker,
        on_prefill: Callable[[Any, torch.Tensor], None] | None = None,
    ) -> None:
        self.id = request_id
        self.on_prefill = on_prefill  # called with (state, logits) once the prompt is prefilled
        self.params = params
        self.prompt = prompt
        self.cursor = 0  # prompt ids prefilled so far
        self.state = state  # batch-1 state while prefilling (None: fresh)
        self.logits = logits  # [V] after ``state`` while not in the batch
        self.return_state = return_state
        self.text = text
        self.sampler: TokenSampler | None = None  # built on the first sampling step (V known then)
        self.tokens: list[int] = []
        self.pending: int | None = None  # sampled, not yet fed to the model
        self.finish_reason: EngineStopReason | None = None  # set when done, pending maybe still to feed


class BatchEngine:
    """Decode many sequences at once with continuous batching; see the module docstring.

    Args:
        model: ``logits, state = model(LongTensor[B, T], state=state)`` returning float logits
            ``[B, T, V]`` and a state with ``select(indices)`` and ``type(state).cat(states)``, e.g. an
            rwkvkit RWKV model and its :class:`rwkvkit.state.State` (the contract:
            :mod:`rwkvkit.generation.model`). Every batch row must be computed independently of the
            others (true of the RWKV models). Call ``model.eval()`` yourself.
        tokenizer: needed for text prompts, text output, stop strings and the official penalty weights
            (whitespace/digit tokens weigh 0); None works with token ids only (weights 1, text '').
        max_batch: the most sequences decoded together; further requests wait in a queue (FIFO).
        prefill_chunk: prompts are prefilled in chunks of this many tokens (like ``generate``'s
            ``chunk_len``; pass the same value to get the same arithmetic), and one prefill forward
            processes at most this many tokens in total (rows x chunk length), which bounds the
            ``[tokens, V]`` logits memory as ``chunk_len`` does for one sequence.
        cuda_graphs: True (default): on a CUDA device, the batched decoding forward is one replay of
            a CUDA graph captured for the batch padded to 1, 2, 4, ..., 64 rows, and the batch state
            stays in the graph's buffers while no row joins or leaves
            (:mod:`rwkvkit.generation.cuda_graph`; more than 64 rows decode eagerly). False: plain
            forwards (``RWKVKIT_CUDA_GRAPHS=0`` turns graphs off process-wide). Ignored off CUDA.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        max_batch: int = 64,
        prefill_chunk: int = 256,
        *,
        cuda_graphs: bool | CudaGraphStep = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = check_int("max_batch", max_batch, 1, "the most sequences decoded together (e.g. 64)")
        self.prefill_chunk = check_int(
            "prefill_chunk", prefill_chunk, 1, "the prefill chunk length in tokens (e.g. 256)"
        )
        self._device = model_device(model)
        self._graph_step = decode_step(model, cuda_graphs)  # None: plain batched forwards
        self._vocab = model_vocab_size(model)  # None: learned from the first logits
        self._vocab_limit = vocab_limit_of(tokenizer)
        self._weight = token_weights(tokenizer)  # official penalty weight per token id, cached
        self._next_id = 0
        self._queue: deque[_Request] = deque()
        self._rows: list[_Request] = []  # the sequences of the batch, in the row order of _state
        self._state: Any = None  # batch State of _rows
        self._logits: torch.Tensor | None = None  # [len(_rows), V] next-token logits of _rows
        self._cancelled: set[int] = set()
        self._events: list[StepEvent] = []  # events produced outside step() (cancel of queued requests)
        self._results: dict[int, RequestResult] = {}

    # -- public API ----------------------------------------------------------------------------

    @property
    def num_active(self) -> int:
        """Sequences currently in the batch (prefilled, decoding or about to finish)."""
        return len(self._rows)

    @property
    def num_queued(self) -> int:
        """Requests waiting for a row."""
        return len(self._queue)

    @property
    def has_work(self) -> bool:
        """True while a call to :meth:`step` would do something."""
        return bool(self._rows or self._queue or self._events)

    def add(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        *,
        params: SamplingParams | None = None,
        state: Any = None,
        logits: torch.Tensor | None = None,
        return_state: bool = True,
        on_prefill: Callable[[Any, torch.Tensor], None] | None = None,
        **sampling: Any,
    ) -> int:
        """Queue a request; returns its id. It joins the batch at the next :meth:`step` with a free row.

        The options mean what they mean for :func:`rwkvkit.generate` (a :class:`SamplingParams` as
        ``params=`` and/or its fields as keyword arguments; same defaults, same checks, raised here as
        :class:`~rwkvkit.errors.ConfigError` / ``VocabularyError``, before any model call). ``prompt``
        may be token ids; text needs a tokenizer. ``state`` (batch 1) continues a sequence; with an
        empty prompt it also needs ``logits``, which default to ``state.logits`` when the state
        carries them. ``return_state=False`` skips the final model step that feeds the last token (the
        result then has no state), so the request leaves the batch one step earlier.

        ``on_prefill(state, logits)``, if given, is called (in :meth:`step`, before any token is
        sampled) with the batch-1 state after the whole prompt and the float32 ``[V]`` logits after
        it; a server keeps them to resume a later request that starts with the same prompt. It is not
        called for an empty prompt. Treat both as read-only (clone to keep them).
        """
        tokenizer = self.tokenizer
        params = SamplingParams.build(params, max_new_tokens=max_new_tokens, **sampling).for_tokenizer(
            tokenizer
        )
        if params.stop and tokenizer is None:
            raise ConfigError("stop strings need a tokenizer: pass BatchEngine(model, tokenizer)")
        prompt_tokens = prompt_ids(prompt, tokenizer, hint=": pass BatchEngine(model, tokenizer)")
        if not prompt_tokens and logits is None and state is not None:
            logits = getattr(state, "logits", None)
        if not isinstance(return_state, bool):
            raise ConfigError(f"return_state must be True or False, got {return_state!r}")
        if on_prefill is not None and not callable(on_prefill):
            raise ConfigError(f"on_prefill must be a function (state, logits) or None, got {on_prefill!r}")
        if self._vocab is not None:
            params.check_vocab(self._vocab, self._vocab_limit)
        prompt_tokens, row = start_point(prompt_tokens, state, logits, params.max_new_tokens, self._vocab)
        text = TextTracker(tokenizer, params.stop)
        r = _Request(self._next_id, params, prompt_tokens, state, row, return_state, text, on_prefill)
        self._next_id += 1
        self._queue.append(r)
        return r.id

    def cancel(self, request_id: int) -> bool:
        """Stop a queued or active request; its result (stop reason ``"cancelled"``, no state) comes in
        the next :meth:`step`'s events. Returns False if the id is unknown or already finished."""
        for r in self._queue:
            if r.id == request_id:
                self._queue.remove(r)
                self._events.append(self._finish(r, "cancelled", None, None, token=None, text=""))
                return True
        if any(r.id == request_id and r.finish_reason is None for r in self._rows):
            self._cancelled.add(request_id)
            return True
        return False

    def pop_result(self, request_id: int) -> RequestResult:
        """Take (and forget) the result of a finished request. Raises KeyError if it is not finished."""
        return self._results.pop(request_id)

    def step(self) -> list[StepEvent]:
        """Advance every request by one token (see the module docstring); returns this step's events."""
        with torch.inference_mode():
            events, self._events = self._events, []
            drop = self._drop_cancelled(events)
            self._decode(events, drop)
            self._admit_and_prefill(events)
            if self._rows:
                self._sample(events)
        return events

    def run(self) -> dict[int, RequestResult]:
        """Step until every request is finished; returns (and forgets) all stored results by id."""
        while self.has_work:
            self.step()
        results, self._results = self._results, {}
        return results

    def generate_many(
        self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int | None = None, **options: Any
    ) -> list[str]:
        """Generate for every prompt (queued beyond ``max_batch``); returns the texts in prompt order.

        ``options`` are those of :meth:`add`, shared by all prompts, except ``seed`` which may also be
        a sequence with one seed per prompt (an int gives every request its own generator seeded with
        it). Requests added earlier keep running; their results stay available via :meth:`pop_result`.
        """
        if self.tokenizer is None:
            raise ConfigError("generate_many returns text and needs a tokenizer; use add()/step() with ids")
        seed = options.pop("seed", None)
        seeds = list(seed) if isinstance(seed, Sequence) else [seed] * len(prompts)
        if len(seeds) != len(prompts):
            raise ConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts: pass one per prompt")
        options.setdefault("return_state", False)  # texts only: skip the final state step
        ids = [self.add(p, max_new_tokens, seed=s, **options) for p, s in zip(prompts, seeds, strict=True)]
        waiting = set(ids)
        while waiting:
            for event in self.step():
                if event.finished:
                    waiting.discard(event.request_id)
        return [self.pop_result(i).text for i in ids]

    # -- internals -----------------------------------------------------------------------------

    def _finish(
        self,
        r: _Request,
        reason: EngineStopReason,
        state: Any,
        logits: torch.Tensor | None,
        *,
        token: int | None,
        text: str,
    ) -> StepEvent:
        result = RequestResult(
            request_id=r.id,
            prompt_tokens=r.prompt,
            tokens=r.tokens,
            text=r.text.text,
            stop_reason=reason,
            state=state,
            logits=None if logits is None else logits.clone(),
        )
        # Release the per-request tensors now; a long-running engine keeps only the results.
        r.state = r.logits = r.sampler = None
        self._results[r.id] = result
        return StepEvent(r.id, token, text, finished=True, result=result)

    def _drop_cancelled(self, events: list[StepEvent]) -> list[int]:
        """Finish the cancelled active rows; returns their row indices (removed after the decode)."""
        if not self._cancelled:
            return []
        drop = []
        for i, r in enumerate(self._rows):
            if r.id in self._cancelled:
                events.append(self._finish(r, "cancelled", None, None, token=None, text=""))
                r.finish_reason = "cancelled"
                drop.append(i)
        self._cancelled.clear()
        return drop

    def _reindex(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` of the batch (no copy when nothing is dropped)."""
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._state, self._logits = None, None
            return
        self._state = self._state.select(keep)
        self._logits = self._logits[torch.tensor(keep, device=self._logits.device)]

    def _decode(self, events: list[StepEvent], drop: list[int]) -> None:
        """Feed every row's pending token in one forward; finish the rows that only awaited it."""
        if drop:
            dropped = set(drop)
            self._reindex([i for i in range(len(self._rows)) if i not in dropped])
        if not self._rows:
            return
        # Every row has a pending token: rows that finished without one left the batch at once.
        ids = [r.pending for r in self._rows]
        if self._graph_step is not None:
            # a graph replay; the state stays in the step's buffers while the rows do not change
            out, self._state = self._graph_step(ids, self._state)
        else:
            tokens = torch.tensor(ids, dtype=torch.long, device=self._device)
            out, self._state = forward_last(fast_view(self.model), tokens.view(-1, 1), self._state)
        self._logits = out[:, -1].float()
        keep = []
        for i, r in enumerate(self._rows):
            r.pending = None
            if r.finish_reason is None:
                keep.append(i)
            else:  # finished last step; it rode along only to give its final state
                events.append(
                    self._finish(
                        r, r.finish_reason, self._state.select([i]), self._logits[i], token=None, text=""
                    )
                )
        self._reindex(keep)

    def _initial_state(self) -> Any:
        make = getattr(self.model, "initial_state", None)
        if not callable(make):
            raise ConfigError(
                "mixing fresh and given states in one prefill needs model.initial_state(batch_size)"
            )
        return make(1)

    def _admit_and_prefill(self, events: list[StepEvent]) -> None:
        """Move queued requests into free rows, prefill their prompts and join them to the batch."""
        admitted: list[_Request] = []
        while self._queue and len(self._rows) + len(admitted) < self.max_batch:
            admitted.append(self._queue.popleft())
        if not admitted:
            return
        todo = [r for r in admitted if r.cursor < len(r.prompt)]
        while todo:
            # Rows share a forward only when their next chunks have the same length: no padding, and
            # each prompt is cut into the same chunks as generate() cuts it.
            groups: dict[int, list[_Request]] = {}
            for r in todo:
                groups.setdefault(min(self.prefill_chunk, len(r.prompt) - r.cursor), []).append(r)
            for n, group in groups.items():
                rows_per_call = max(1, self.prefill_chunk // n)  # bound the [rows * n, V] logits
                for start in range(0, len(group), rows_per_call):
                    self._prefill(group[start : start + rows_per_call], n)
            todo = [r for r in todo if r.cursor < len(r.prompt)]

        joined: list[_Request] = []
        for r in admitted:
            if r.on_prefill is not None and r.prompt:
                r.on_prefill(r.state, r.logits)
                r.on_prefill = None
            if r.params.max_new_tokens == 0:  # generate() then only prefills
                text = r.text.close()
                state = r.state if r.return_state else None
                logits = r.logits if r.return_state else None
                events.append(self._finish(r, "length", state, logits, token=None, text=text))
            else:
                joined.append(r)
        if not joined:
            return
        states = ([self._state] if self._rows else []) + [r.state for r in joined]
        logits = ([self._logits] if self._rows else []) + [r.logits.view(1, -1) for r in joined]
        self._state = type(states[0]).cat(states) if len(states) > 1 else states[0]
        self._logits = torch.cat(logits) if len(logits) > 1 else logits[0]
        self._rows.extend(joined)
        for r in joined:
            r.state = r.logits = None  # now held by the batch

    def _prefill(self, group: list[_Request], n: int) -> None:
        """Run the next ``n`` prompt tokens of every request of ``group`` in one forward."""
        tokens = torch.tensor(
            [r.prompt[r.cursor : r.cursor + n] for r in group], dtype=torch.long, device=self._device
        )
        if all(r.state is None for r in group):
            state = None
        elif len(group) == 1:
            state = group[0].state
        else:
            states = [r.state if r.state is not None else self._initial_state() for r in group]
            state = type(states[0]).cat(states)
        out, new_state = forward_last(fast_view(self.model), tokens, state)
        for j, r in enumerate(group):
            r.state = new_state if len(group) == 1 else new_state.select([j])
            r.logits = out[j, -1].float()
            r.cursor += n

    def _setup(self, r: _Request, logits: torch.Tensor) -> None:
        """The request's sampler, built once the vocabulary size is known (as in TokenStream)."""
        vocab = logits.shape[-1]
        if self._vocab is None:
            self._vocab = vocab
        # Checked again here for requests added before the size was known (no config.vocab_size).
        r.params.check_vocab(vocab, self._vocab_limit)
        # Ids >= the tokenizer's vocab_size are banned for the whole batch in _sample, not per request.
        r.sampler = TokenSampler(r.params, vocab, logits.device, token_weight=self._weight)

    def _sample(self, events: list[StepEvent]) -> None:
        """Sample one token per row, then update each request (text, stops, finish)."""
        rows, logits = self._rows, self._logits
        for r in rows:
            if r.sampler is None:
                self._setup(r, logits)

        # Ban, then penalise (official order), on a copy: self._logits stays the model's output.
        vocab = logits.shape[-1]
        limit = self._vocab_limit if self._vocab_limit is not None and self._vocab_limit < vocab else None
        special = [i for i, r in enumerate(rows) if r.sampler.adjusts]
        work = logits
        if limit is not None or special:
            work = logits.clone()
            if limit is not None:
                work[:, limit:] = float("-inf")
            for i in special:
                work[i] = rows[i].sampler.adjust(work[i])

        tokens: list[int] = [0] * len(rows)
        greedy = [i for i, r in enumerate(rows) if r.params.temperature == 0]
        if greedy:
            self._sample_greedy(work, greedy, tokens)
        for i, r in enumerate(rows):
            if r.params.temperature != 0:
                tokens[i] = r.sampler.draw(work[i])

        keep = []
        for i, (r, token) in enumerate(zip(rows, tokens, strict=True)):
            if token in r.sampler.stop_tokens:
                # A stop token is neither returned nor fed: the state is already final.
                text = r.text.close()
                reason: EngineStopReason = "stop_string" if r.text.stop_hit else "stop_token"
                state, last = (self._state.select([i]), logits[i]) if r.return_state else (None, None)
                events.append(self._finish(r, reason, state, last, token=None, text=text))
                continue
            r.sampler.record(token)
            r.tokens.append(token)
            text = r.text.push(token)
            if not r.text.stop_hit and len(r.tokens) >= r.params.max_new_tokens:
                text += r.text.close()
                r.finish_reason = "length"
            if r.text.stop_hit:  # also a stop string completed by the final flush
                r.finish_reason = "stop_string"
            if r.finish_reason is not None and not r.return_state:
                events.append(self._finish(r, r.finish_reason, None, None, token=token, text=text))
                continue
            # Still running, or finished but waiting one step for its last token to be fed.
            r.pending = token
            events.append(StepEvent(r.id, token, text))
            keep.append(i)
        self._reindex(keep)

    def _sample_greedy(self, work: torch.Tensor, greedy: list[int], tokens: list[int]) -> None:
        """Greedy rows: one topk(2) for all of them; near-ties go through sample() exactly."""
        rows = self._rows
        sub = work if len(greedy) == len(rows) else work[torch.tensor(greedy, device=work.device)]
        if sub.shape[-1] >= 2:
            values, indices = torch.topk(sub, 2, dim=-1)
            clear = (values[:, 0] - values[:, 1] > _GREEDY_MARGIN) & torch.isfinite(values[:, 0])
            best, clear_list = indices[:, 0].tolist(), clear.tolist()
        else:
            best, clear_list = [0] * len(greedy), [False] * len(greedy)
        for j, i in enumerate(greedy):
            if clear_list[j]:
                tokens[i] = best[j]
                rows[i].sampler.skip_draw()  # generate() draws once even when greedy: catch up later
            else:
                # A possible tie (or a non-finite row, where sample() raises the usual error): draw
                # exactly like generate(), after replaying the draws skipped on the clear steps.
                tokens[i] = rows[i].sampler.draw(work[i])
