"""The engine thread: one :class:`~rwkvkit.generation.BatchEngine` serving every HTTP request.

Model calls block for milliseconds to seconds, so they run in one background thread, not on the
event loop that handles HTTP. The two sides meet in :class:`EngineWorker`:

* the HTTP side calls :meth:`EngineWorker.submit` with a :class:`Job` (prompt ids, sampling options,
  the model id as the cache namespace and an optional initial state) and reads the job's
  ``asyncio.Queue``; :meth:`EngineWorker.cancel` (a client went away) frees the job's batch row at the
  next step;
* the thread adds new jobs to the engine (resuming from the longest cached prompt prefix, see
  :mod:`rwkvkit.serve.cache`), steps it while it has work (every active request advances by one token
  per step: continuous batching) and posts each step's text to the jobs' queues with
  ``loop.call_soon_threadsafe``; it sleeps on a condition variable when idle.

What a job's queue receives: ``("text", str)`` pieces, then one ``("done", RequestResult)`` or
``("error", Exception)``. After a request ends, the states after its prompt and after its answer go
into the cache, keyed by the ids fed to reach them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import torch

from rwkvkit.generation import BatchEngine, SamplingParams, StepEvent
from rwkvkit.serve.cache import StateCache

__all__ = ["EngineWorker", "Job"]

log = logging.getLogger("rwkvkit.serve")


@dataclass(eq=False)
class Job:
    """One request on its way through the engine.

    Attributes:
        namespace: the served model id; keys the state cache (a named initial state is its own id).
        prompt: the prompt's token ids (all of them; the worker skips a cached prefix).
        params: sampling options; a missing seed is filled with a random one, so every request has
            its own generator.
        initial_state: the state the prompt starts from (a named state), or None for a fresh one.
        loop, queue: where the worker posts the job's pieces (set by :meth:`EngineWorker.submit`).
        cached_tokens: prompt ids resumed from the cache instead of prefilled (set by the worker).
    """

    namespace: str
    prompt: list[int]
    params: SamplingParams
    initial_state: Any = None
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue | None = None
    cached_tokens: int = 0
    engine_id: int | None = None
    cancelled: bool = False

    def post(self, kind: str, value: Any) -> None:
        """Hand ``(kind, value)`` to the job's event loop (from any thread)."""
        loop, queue = self.loop, self.queue
        if loop is None or queue is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed between the check and the call (shutdown)
            pass


class EngineWorker:
    """Runs a :class:`BatchEngine` in a daemon thread; see the module docstring.

    Args:
        model, tokenizer: as for :class:`BatchEngine` (the model in eval mode).
        cache: the prefix-state cache (``StateCache(0)`` turns it off).
        max_batch: the most requests decoded together; later ones wait in the engine's queue.
        prefill_chunk: prompt chunk length (``generate``'s ``chunk_len``).
        prefill_budget: prompt tokens prefilled per engine step (None: whole prompts at once); a long
            prompt then does not stall the other requests' decoding for its whole prefill.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        cache: StateCache,
        *,
        max_batch: int = 32,
        prefill_chunk: int = 256,
        prefill_budget: int | None = 512,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.engine = self._new_engine()
        self._cond = threading.Condition()
        self._incoming: list[Job] = []
        self._cancels: list[Job] = []
        self._jobs: dict[int, Job] = {}  # engine id -> job
        self._live = 0  # jobs submitted and not finished (read by the HTTP side for its queue limit)
        self._stopping = False
        self._accepting = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.tokens_generated = 0

    def _new_engine(self) -> BatchEngine:
        return BatchEngine(
            self.model,
            self.tokenizer,
            max_batch=self.max_batch,
            prefill_chunk=self.prefill_chunk,
            prefill_budget=self.prefill_budget,
        )

    # -- HTTP side -----------------------------------------------------------------------------

    @property
    def live(self) -> int:
        """Jobs submitted and not yet finished (decoding or waiting)."""
        return self._live

    @property
    def running(self) -> bool:
        """True from :meth:`open` (or :meth:`start`) until :meth:`stop`: jobs are taken."""
        return self._accepting

    def open(self) -> None:
        """Take jobs from now on; they wait until :meth:`run` (in some thread) serves them."""
        with self._cond:
            self._stopping = False
            self._accepting = True

    def start(self) -> None:
        """:meth:`open`, then :meth:`run` in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.open()
        self._thread = threading.Thread(target=self.run, name="rwkvkit-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job (each gets an error ``"server shutting down"``) and end :meth:`run`."""
        with self._cond:
            self._stopping = True
            self._accepting = False
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> None:
        """Queue ``job``; its pieces arrive on ``job.queue`` in the calling event loop."""
        job.loop = asyncio.get_running_loop()
        job.queue = asyncio.Queue()
        if job.params.seed is None:
            job.params = SamplingParams.build(job.params, seed=secrets.randbits(63))
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._live += 1
            self._incoming.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (its client went away): its batch row is freed at the next step."""
        with self._cond:
            if job.cancelled:
                return
            job.cancelled = True
            self._cancels.append(job)
            self._cond.notify()

    # -- engine thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve jobs in the calling thread until :meth:`stop`.

        ``rwkvkit serve`` calls it on the main thread, where the model was loaded: torch's OpenMP
        pool hands work to its threads fastest there. Once the main thread has run a parallel region,
        a team started from another thread is throttled (libgomp spins less when more OpenMP threads
        exist than cores): measured on 2 cores, an elementwise op took 56 us on the main thread and
        100 us on another, and the engine decoded up to 2x slower.
        """
        with torch.no_grad():  # not set_grad_enabled(False): that would outlive run() on the caller's thread
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not (self._incoming or self._cancels or self._stopping or self.engine.has_work):
                    self._cond.wait()
                incoming, self._incoming = self._incoming, []
                cancels, self._cancels = self._cancels, []
                stopping = self._stopping
            if stopping:
                self._fail_all(incoming, RuntimeError("the server is shutting down"))
                self.engine = self._new_engine()  # a later run() starts clean
                return
            for job in cancels:
                if job.engine_id is not None:
                    self.engine.cancel(job.engine_id)
            for job in incoming:
                if job.cancelled:
                    self._done(job)
                    continue
                try:
                    self._add(job)
                except Exception as e:  # a request the engine refuses (checked before any model call)
                    job.post("error", e)
                    self._done(job)
            if self.engine.has_work:
                try:
                    events = self.engine.step()
                except Exception as e:  # the model failed: every request in flight gets the error
                    log.exception("engine step failed; the requests in flight are ended")
                    self._fail_all([], e)
                    self.engine = self._new_engine()
                    continue
                self.steps += 1
                for event in events:
                    self._dispatch(event)

    def _add(self, job: Job) -> None:
        namespace, prompt = job.namespace, job.prompt
        hit = self.cache.get(namespace, prompt) if prompt else None
        if hit is not None:
            state, logits, rest = hit.state, hit.logits, prompt[hit.length :]
            job.cached_tokens = hit.length
        else:
            state = None if job.initial_state is None else job.initial_state.clone()
            logits = None if state is None else getattr(state, "logits", None)
            rest = prompt

        on_prefill = None
        if self.cache.enabled and rest:

            def on_prefill(state: Any, logits: torch.Tensor, key: list[int] = prompt) -> None:
                self.cache.put(namespace, key, state, logits)

        job.engine_id = self.engine.add(
            rest,
            params=job.params,
            state=state,
            logits=logits,
            return_state=self.cache.enabled,
            on_prefill=on_prefill,
        )
        self._jobs[job.engine_id] = job

    def _dispatch(self, event: StepEvent) -> None:
        job = self._jobs.get(event.request_id)
        if job is None:
            return
        if event.token is not None:
            self.tokens_generated += 1
        if event.text:
            job.post("text", event.text)
        if event.finished:
            result = event.result
            del self._jobs[event.request_id]
            self.engine.pop_result(event.request_id)
            if result is not None and result.state is not None and result.logits is not None:
                self.cache.put(job.namespace, job.prompt + result.tokens, result.state, result.logits)
                result.state = result.logits = None  # the cache keeps its own copies
            job.post("done", result)
            self._done(job)

    def _done(self, job: Job) -> None:
        with self._cond:
            self._live -= 1

    def _fail_all(self, extra: list[Job], error: Exception) -> None:
        for job in list(self._jobs.values()) + extra:
            job.post("error", error)
            self._done(job)
        self._jobs.clear()
