"""The one-token decoding step replayed from a captured CUDA graph (used by generation on CUDA;
user-level summary: docs/sampling.md#decoding-on-cuda).

Decoding a small model token by token is bound by kernel launches and Python, not by the GPU: the
RWKV-7 0.1B step is a few hundred small kernels, each launched from Python. A CUDA graph records
those launches once and replays them with one call. :class:`CudaGraphStep` does this for any
:class:`~rwkvkit.models.recurrent.RecurrentLM`::

    step = CudaGraphStep(model)
    logits, state = step(ids, state)   # ids: one int per row (or LongTensor [B, 1]); state: B rows

* **Buckets.** A batch of ``B`` rows runs in the smallest bucket ``Bb >= B`` of ``(1, 2, 4, 8, 16,
  32, 64)``; the ``Bb - B`` padding rows decode a valid id from a valid state and are ignored (every
  row of an RWKV forward is computed independently of the others, so they cannot touch the real
  rows). A graph is captured the first time its bucket is used (warm-up on a side stream, then
  capture), and replayed from then on. ``B`` above the largest bucket runs eagerly.
* **Static, resident state.** Each bucket owns static input buffers (token ids ``[Bb, 1]`` and every
  state tensor ``[L, Bb, ...]``); the captured graph runs the model and copies the new state back
  into those buffers. The state returned is a :class:`~rwkvkit.state.State` whose tensors are views
  of the buffers: passing it back on the next call costs no copy at all. Any other state (a new
  sequence, rows added or removed) is copied in first. The previous holder of the buffers is not
  left dangling: if its State object is still alive when another state is copied in, its tensors
  are first replaced by private copies (so two interleaved generations on one model stay correct).
* **No host synchronisation in the step.** Ids given as Python ints are copied from pinned memory
  with ``non_blocking=True``; ids on the device are copied device to device; then one replay, and a
  device copy of the logits. The caller's sampling still reads the chosen token on the host (to
  decode text and test for stop tokens and stop strings): that is the one synchronisation per step
  that cannot be avoided.

Contract: a state returned by the step is *consumed* by the next call that passes it (its tensors
then show the newer state); code that keeps a state beyond that clones it (:meth:`owns` tells).
:func:`rwkvkit.generate` and :class:`~rwkvkit.generation.BatchEngine` do: the states and logits they
hand out are always values. The step is not thread-safe; :func:`decode_step` keeps one per thread.

How generation uses it (:func:`decode_step`): automatically when the model is a ``RecurrentLM`` on
a CUDA device, never on another device. Turn it off with ``cuda_graphs=False`` (``generate``,
``generate_tokens``, ``TokenStream``, ``BatchEngine``) or for the whole process with the environment
variable ``RWKVKIT_CUDA_GRAPHS=0``. If a capture fails (a model whose step reads a tensor on the
host, an out-of-memory error), the step logs one warning and runs eagerly from then on.

The capture is injectable (``graph_factory``): :class:`EagerGraph` keeps ``torch.cuda.CUDAGraph``'s
semantics (static outputs written in place by each replay) while simply re-running the captured
callable, so the bookkeeping is tested on the CPU (``tests/generation/test_cuda_graph.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.generation.model import check_prompt_tokens, forward_last
from rwkvkit.models.recurrent import RecurrentLM
from rwkvkit.state import State

__all__ = ["BUCKETS", "CudaGraph", "CudaGraphStep", "EagerGraph", "Graph", "decode_step", "graphs_enabled"]

log = logging.getLogger("rwkvkit.generation")

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
ENV_VAR = "RWKVKIT_CUDA_GRAPHS"
_OFF = ("0", "false", "no", "off")


class Graph(Protocol):
    """What :class:`CudaGraphStep` needs from a graph: capture a callable once, replay it."""

    def capture(self, fn: Callable[[], Any]) -> Any:
        """Record ``fn()``; returns its outputs, which every :meth:`replay` overwrites in place."""
        ...

    def replay(self) -> None: ...


class CudaGraph:
    """A ``torch.cuda.CUDAGraph``: ``warmup`` calls on a side stream (lazy initialisation, cuBLAS
    workspaces, Triton autotuning happen there, not in the capture), then one captured call into the
    graph's private memory pool."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup
        self._graph: torch.cuda.CUDAGraph | None = None

    def capture(self, fn: Callable[[], Any]) -> Any:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls during the capture do not invalidate it
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
        self._graph = graph
        return out

    def replay(self) -> None:
        self._graph.replay()


def _flat(out: Any) -> list[torch.Tensor]:
    return [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]


class EagerGraph:
    """A stand-in for :class:`CudaGraph` on any device: :meth:`capture` runs ``fn`` once and keeps
    its outputs as the static outputs; :meth:`replay` runs ``fn`` again and copies the results into
    them, which is what a CUDA graph does (same inputs read from the same buffers, outputs written to
    the same memory). For tests of the bookkeeping on the CPU."""

    def __init__(self) -> None:
        self._fn: Callable[[], Any] | None = None
        self._out: list[torch.Tensor] = []
        self.replays = 0

    def capture(self, fn: Callable[[], Any]) -> Any:
        self._fn = fn
        out = fn()
        self._out = _flat(out)
        return out

    def replay(self) -> None:
        for static, new in zip(self._out, _flat(self._fn()), strict=True):
            static.copy_(new)
        self.replays += 1


class _Bucket:
    """The static buffers and the graph of one batch size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.graph: Graph | None = None
        self.tokens: torch.Tensor | None = None  # [Bb, 1] ids, static input
        self.state: dict[str, torch.Tensor] = {}  # [L, Bb, ...] static input, updated by every replay
        self.logits: torch.Tensor | None = None  # [Bb, 1, V] static output
        self.state_logits: torch.Tensor | None = None  # [Bb, V] static output (State.logits)
        self.owner: weakref.ref[State] | None = None  # the State whose tensors are views of .state
        self.rows = 0  # the owner's batch size


class CudaGraphStep:
    """One-token decoding step of ``model`` replayed from CUDA graphs; see the module docstring.

    Args:
        model: a :class:`~rwkvkit.models.recurrent.RecurrentLM` (held by a weak reference).
        buckets: the captured batch sizes, ascending; larger batches run eagerly.
        graph_factory: makes one :class:`Graph` per bucket (default: :class:`CudaGraph`). With the
            default the step captures only on a CUDA device and runs eagerly elsewhere.

    Counters (for tests and benchmarks): ``captures``, ``replays``, ``loads`` (states copied into the
    buffers), ``evictions`` (held states given private copies), ``eager_steps``.
    """

    def __init__(
        self,
        model: RecurrentLM,
        *,
        buckets: Sequence[int] = BUCKETS,
        graph_factory: Callable[[], Graph] | None = None,
    ) -> None:
        if not isinstance(model, RecurrentLM):
            raise ConfigError(f"CudaGraphStep needs an rwkvkit RecurrentLM, got {type(model).__name__}")
        sizes = [int(b) for b in buckets]
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ConfigError(f"buckets must be ascending distinct positive sizes, got {tuple(buckets)}")
        self._model = weakref.ref(model)
        self._buckets = {b: _Bucket(b) for b in sizes}
        self._factory = graph_factory
        self.failed: str | None = None  # why graphs were turned off for this step (a capture failed)
        self.fingerprint = _fingerprint(model)
        self.captures = self.replays = self.loads = self.evictions = self.eager_steps = 0

    @property
    def model(self) -> RecurrentLM:
        model = self._model()
        if model is None:
            raise ConfigError("the model of this CudaGraphStep no longer exists")
        return model

    @property
    def buckets(self) -> tuple[int, ...]:
        return tuple(self._buckets)

    def bucket_size(self, batch_size: int) -> int | None:
        """The bucket a batch of ``batch_size`` rows runs in, or None (it runs eagerly)."""
        return next((b for b in self._buckets if b >= batch_size), None)

    def owns(self, state: Any) -> bool:
        """True when ``state`` is the resident state of a bucket (the next replay will change it)."""
        if state is None:
            return False
        return any(b.owner is not None and b.owner() is state for b in self._buckets.values())

    def __call__(
        self, tokens: Sequence[int] | torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, State]:
        """Feed one id per row: ``tokens`` ``[B]`` / ``[B, 1]`` (ints or a LongTensor), ``state`` a State
        of ``B`` rows (None: fresh sequences). Returns ``(logits [B, 1, V], state)``: the logits are a
        new tensor, the state is resident (see :meth:`owns`)."""
        model = self.model
        with torch.inference_mode():
            ids = self._check_ids(model, tokens)
            B = ids.shape[0] if isinstance(ids, torch.Tensor) else len(ids)
            if state is not None:
                model.check_state(state, B)
            size = self.bucket_size(B)
            if size is None or self.failed is not None or not self._can_capture(model):
                return self._eager(model, ids, state)
            bucket = self._buckets[size]
            if bucket.graph is None and not self._capture(model, bucket):
                return self._eager(model, ids, state)
            resident = state is not None and bucket.owner is not None and bucket.owner() is state
            if not (resident and bucket.rows == B):
                self._load(model, bucket, state, B)
            self._put_ids(bucket, ids, B)
            bucket.graph.replay()
            self.replays += 1
            logits = bucket.logits[:B].clone()
            version = model.state_config.version
            new = State({n: t[:, :B] for n, t in bucket.state.items()}, version, bucket.state_logits[:B])
            bucket.owner, bucket.rows = weakref.ref(new), B
            return logits, new

    # -- internals -----------------------------------------------------------------------------

    def _can_capture(self, model: RecurrentLM) -> bool:
        return self._factory is not None or model.device.type == "cuda"

    def _check_ids(self, model: RecurrentLM, tokens: Any) -> list[int] | torch.Tensor:
        """Ids as a host list (range-checked: free) or a ``[B, 1]`` tensor (on the device: unchecked,
        as in the model's forward, since reading it would synchronise)."""
        vocab = model.config.vocab_size
        if isinstance(tokens, torch.Tensor):
            if tokens.dim() == 1:
                tokens = tokens.unsqueeze(1)
            if tokens.dim() != 2 or tokens.shape[1] != 1 or tokens.shape[0] == 0:
                raise InputError(f"a decoding step takes [B, 1] ids, got shape {tuple(tokens.shape)}")
            if tokens.device.type == "cpu":
                return self._check_ids(model, tokens.reshape(-1).tolist())
            return tokens
        ids = [int(t) for t in tokens]
        if not ids:
            raise InputError("a decoding step needs at least one id")
        check_prompt_tokens(ids, vocab)
        return ids

    def _eager(self, model: RecurrentLM, ids: list[int] | torch.Tensor, state: State | None):
        self.eager_steps += 1
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor(ids, dtype=torch.long, device=model.device).view(-1, 1)
        return forward_last(model, ids, state)

    def _capture(self, model: RecurrentLM, bucket: _Bucket) -> bool:
        """Allocate the bucket's buffers and capture its graph; False (and graphs off) on failure."""
        Bb, version = bucket.size, model.state_config.version
        try:
            bucket.tokens = torch.zeros(Bb, 1, dtype=torch.long, device=model.device)
            bucket.state = {n: t.clone() for n, t in model.initial_state(Bb).tensors.items()}

            def body() -> tuple[torch.Tensor, torch.Tensor]:
                logits, new = model(bucket.tokens, State(bucket.state, version), full_output=False)
                for name, buf in bucket.state.items():
                    buf.copy_(new.tensors[name])
                return logits, new.logits

            graph = self._factory() if self._factory is not None else CudaGraph()
            bucket.logits, bucket.state_logits = graph.capture(body)
        except Exception as e:  # noqa: BLE001 -- any failure means: decode eagerly, still correct
            bucket.tokens, bucket.state = None, {}
            self.failed = f"{type(e).__name__}: {e}"
            log.warning("CUDA graph capture failed (%s); decoding eagerly from now on", self.failed)
            return False
        bucket.graph = graph
        bucket.owner, bucket.rows = None, 0
        self.captures += 1
        return True

    def _load(self, model: RecurrentLM, bucket: _Bucket, state: State | None, B: int) -> None:
        """Copy ``state`` into the first ``B`` rows of the bucket (after evicting the old holder)."""
        old = bucket.owner() if bucket.owner is not None else None
        if old is not None and old is not state:
            # Someone may still hold it (another generation on this model): give it private tensors.
            old.tensors = {n: t.clone() for n, t in old.tensors.items()}
            if old.logits is not None:
                old.logits = old.logits.clone()
            self.evictions += 1
        bucket.owner, bucket.rows = None, 0
        if state is None:
            state = model.initial_state(B)
        for name, buf in bucket.state.items():
            buf[:, :B].copy_(state.tensors[name])
        self.loads += 1

    def _put_ids(self, bucket: _Bucket, ids: list[int] | torch.Tensor, B: int) -> None:
        """Rows ``:B`` of the static ids (padding rows keep earlier valid ids); no host sync."""
        dst = bucket.tokens[:B]
        if isinstance(ids, torch.Tensor):
            dst.copy_(ids, non_blocking=True)
            return
        host = torch.tensor(ids, dtype=torch.long).view(B, 1)
        if dst.is_cuda:
            # pinned: the copy is asynchronous (pageable memory would synchronise); the caching host
            # allocator keeps the block until the copy has run
            host = host.pin_memory()
        dst.copy_(host, non_blocking=True)


def _fingerprint(model: torch.nn.Module) -> tuple:
    """Where the model's tensors live: a graph reads them by address, so it is stale once this
    changes (``model.to(...)``, new parameters assigned)."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((t.data_ptr(), t.dtype, t.device, tuple(t.shape)) for t in tensors)


def graphs_enabled() -> bool:
    """False when the environment variable ``RWKVKIT_CUDA_GRAPHS`` is ``0`` (or false/no/off)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


_steps: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, CudaGraphStep]] = weakref.WeakKeyDictionary()
_steps_lock = threading.Lock()


def decode_step(model: Any, cuda_graphs: bool | CudaGraphStep = True) -> CudaGraphStep | None:
    """The graph step generation uses for ``model``'s one-token steps, or None (plain forward).

    ``cuda_graphs``: True (default) uses CUDA graphs when the model is a ``RecurrentLM`` on a CUDA
    device and ``RWKVKIT_CUDA_GRAPHS`` is not ``0``, sharing one step per model and thread (captured
    graphs are reused by later calls; a new step is made when the model's tensors moved); False never
    does; a :class:`CudaGraphStep` is used as given (also off CUDA, e.g. with :class:`EagerGraph`).
    """
    if isinstance(cuda_graphs, CudaGraphStep):
        if cuda_graphs.model is not model:
            raise ConfigError("cuda_graphs= got a CudaGraphStep made for another model")
        return cuda_graphs
    if not isinstance(cuda_graphs, bool):
        raise ConfigError(f"cuda_graphs must be True, False or a CudaGraphStep, got {cuda_graphs!r}")
    if not cuda_graphs or not graphs_enabled() or not isinstance(model, RecurrentLM):
        return None
    if model.device.type != "cuda":
        return None
    thread = threading.get_ident()
    with _steps_lock:
        per_thread = _steps.setdefault(model, {})
        step = per_thread.get(thread)
        if step is None or step.fingerprint != _fingerprint(model):
            step = per_thread[thread] = CudaGraphStep(model)
    return step
