"""The HTTP application: OpenAI-compatible routes and the chat page, on Starlette.

Why Starlette (with uvicorn as the server): it is the small, well-kept ASGI toolkit that FastAPI is
built on, with streaming responses, a lifespan hook and a test client, and nothing more. FastAPI's
extra layer (pydantic models, generated docs) would answer a malformed request with its own 422 body,
not the OpenAI error format clients expect, so the few fields are validated by hand in
:mod:`rwkvkit.serve.protocol`, each with an OpenAI-style error.

Routes:

* ``GET /`` the chat page (one static file in the package); ``GET /health`` liveness;
* ``GET /v1/models`` (and ``/v1/models/{id}``); ``POST /v1/completions``;
  ``POST /v1/chat/completions`` (``stream: true`` sends server-sent events in OpenAI's chunk format,
  ending with ``data: [DONE]``);
* ``GET /v1/stats``: engine and state-cache counters (not an OpenAI route).

Safety: with ``api_key`` set, every ``/v1`` route needs ``Authorization: Bearer <key>`` (401
otherwise); request bodies, prompt lengths and ``max_tokens`` are bounded (:class:`Limits`); when
``max_batch + max_queue`` requests are already in flight a new one gets 429 with ``Retry-After``.
Every refusal is a JSON error body, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rwkvkit.errors import RWKVKitError
from rwkvkit.generation import SamplingParams
from rwkvkit.serve import protocol as P
from rwkvkit.serve.cache import StateCache
from rwkvkit.serve.chat import ChatFormat, chat_format
from rwkvkit.serve.protocol import APIError, Limits, ParsedRequest
from rwkvkit.serve.worker import EngineWorker, Job

__all__ = ["ServedModel", "ServerConfig", "create_app"]

log = logging.getLogger("rwkvkit.serve")


@dataclass(frozen=True)
class ServedModel:
    """A model id the server answers to: the loaded model, optionally from a named initial state.

    ``default`` serves the model from a fresh state; ``default:NAME`` (``--state NAME=PATH``) serves it
    from a saved state, e.g. a state-tuned one.
    """

    id: str
    chat: ChatFormat
    initial_state: Any = None


@dataclass
class ServerConfig:
    """Options of :func:`create_app` (the ``rwkvkit serve`` flags of the same names).

    Attributes:
        model_id: the id of the loaded model (``"default"`` for the shipped one).
        chat_format: ``"world"`` or ``"plain"`` (see :mod:`rwkvkit.serve.chat`).
        states: named initial states, ``{name: State}``, served as ``"<model_id>:<name>"``.
        api_key: when set, ``/v1`` routes need ``Authorization: Bearer <api_key>``.
        limits: request limits (:class:`~rwkvkit.serve.protocol.Limits`).
        max_batch: requests decoded together; more wait.
        max_queue: requests waiting beyond ``max_batch`` before new ones get 429.
        cache_mb: the state cache's bound in MiB (0: off).
        prefill_chunk: prompt chunk length (``generate``'s ``chunk_len``).
        prefill_budget: prompt tokens prefilled per engine step, between decoding steps (None: every
            admitted prompt whole, stalling the others' decoding meanwhile).
        engine_thread: True: the app's lifespan runs the engine in a thread of its own. False: the
            caller runs ``app.state.server.worker.run()`` itself (``rwkvkit serve`` runs it on the main
            thread, where torch's CPU thread pool is fastest; see :meth:`EngineWorker.run`).
    """

    model_id: str = "default"
    chat_format: str = "world"
    states: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 32
    max_queue: int = 64
    cache_mb: float = 512.0
    prefill_chunk: int = 256
    prefill_budget: int | None = 512
    engine_thread: bool = True


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class Server:
    """The state behind the routes: the model, tokenizer, worker, served ids and limits."""

    def __init__(self, model: Any, tokenizer: Any, config: ServerConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.limits = config.limits
        fmt = chat_format(config.chat_format)
        self.models: dict[str, ServedModel] = {config.model_id: ServedModel(config.model_id, fmt)}
        for name, state in config.states.items():
            served = f"{config.model_id}:{name}"
            self.models[served] = ServedModel(served, fmt, state)
        self.cache = StateCache(int(config.cache_mb * (1 << 20)))
        self.worker = EngineWorker(
            model,
            tokenizer,
            self.cache,
            max_batch=config.max_batch,
            prefill_chunk=config.prefill_chunk,
            prefill_budget=config.prefill_budget,
        )
        self.vocab_size = int(getattr(getattr(model, "config", None), "vocab_size", 0)) or None
        self.created = int(time.time())

    # -- request plumbing ------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                "(the key given to rwkvkit serve --api-key)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def read_json(self, request: Request) -> Any:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body is {declared} bytes; the server takes at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the request body is over {limit} bytes, the server's limit")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None

    def served(self, model_id: str) -> ServedModel:
        served = self.models.get(model_id)
        if served is None:
            raise APIError(
                404,
                f"the model {model_id!r} does not exist here; served: {', '.join(self.models)}",
                param="model",
                code="model_not_found",
            )
        return served

    def prompt_ids(self, req: ParsedRequest, served: ServedModel) -> tuple[list[int], SamplingParams]:
        """The prompt's ids and the request's options with the chat format's stop strings added."""
        params = req.params
        if req.messages is not None:
            ids = served.chat.prompt_ids(self.tokenizer, req.messages)
            if served.chat.stop:
                params = SamplingParams.build(params, stop=params.stop + served.chat.stop)
        elif isinstance(req.prompt, str):
            ids = self.tokenizer.encode(req.prompt) if req.prompt else []
        else:
            ids = list(req.prompt or [])
        if self.vocab_size is not None:
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(
                    400,
                    f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})",
                    param="prompt",
                    code="invalid_value",
                )
        if not ids and (
            served.initial_state is None or getattr(served.initial_state, "logits", None) is None
        ):
            raise APIError(400, "the prompt is empty: send some text", param="prompt", code="invalid_value")
        if len(ids) > self.limits.max_prompt_tokens:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; this server takes at most "
                f"{self.limits.max_prompt_tokens} (rwkvkit serve --max-prompt-tokens)",
                param="messages" if req.messages is not None else "prompt",
                code="context_length_exceeded",
            )
        return ids, params

    def admit(self) -> None:
        if not self.worker.running:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        limit = self.config.max_batch + self.config.max_queue
        if self.worker.live >= limit:
            raise APIError(
                429,
                f"the server is busy: {self.worker.live} requests in flight (the limit is {limit}); "
                "retry after a second",
                code="server_busy",
                headers={"Retry-After": "1"},
            )

    # -- routes ----------------------------------------------------------------------------------

    async def chat_page(self, request: Request) -> Response:
        page = resources.files("rwkvkit.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok" if self.worker.running else "stopping"})

    async def list_models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse(P.models_body(list(self.models), self.created))

    async def get_model(self, request: Request) -> Response:
        self.authorize(request)
        served = self.served(request.path_params["model_id"])
        return JSONResponse(P.models_body([served.id], self.created)["data"][0])

    async def stats(self, request: Request) -> Response:
        self.authorize(request)
        w = self.worker
        return JSONResponse(
            {
                "in_flight": w.live,
                "active": w.engine.num_active,
                "queued": w.engine.num_queued,
                "steps": w.steps,
                "tokens_generated": w.tokens_generated,
                "cache": self.cache.stats(),
            }
        )

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        self.authorize(request)
        body = await self.read_json(request)
        parse = P.parse_chat if chat else P.parse_completion
        req = parse(body, self.limits, self.config.model_id)
        served = self.served(req.model)
        ids, params = await asyncio.get_running_loop().run_in_executor(None, self.prompt_ids, req, served)
        self.admit()
        job = Job(served.id, ids, params, served.initial_state)
        try:
            self.worker.submit(job)
        except RuntimeError as e:
            raise APIError(503, str(e), code="shutting_down") from None
        strip = chat and served.chat.strip_answer
        if req.stream:
            return _EventStream(
                self._stream(request, job, req, chat, strip),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._collect(request, job, req, chat, strip)

    async def _pieces(self, request: Request, job: Job) -> AsyncIterator[tuple[str, Any]]:
        """The job's pieces (``("text", str)``, then ``("done", RequestResult)``); an engine error is
        raised as an :class:`APIError`. Ends early, cancelling the job, when the client disconnects
        or the consumer stops (then the job's batch row is freed at the engine's next step)."""
        watcher = asyncio.ensure_future(_watch_disconnect(request))
        finished = False
        try:
            while True:
                get = asyncio.ensure_future(job.queue.get())
                try:
                    await asyncio.wait({get, watcher}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not get.done():
                        get.cancel()
                if not get.done() or get.cancelled():
                    return  # the client went away
                kind, value = get.result()
                if kind == "error":
                    finished = True
                    raise value if isinstance(value, APIError) else _engine_error(value)
                if kind == "done":
                    finished = True
                yield kind, value
                if finished:
                    return
        finally:
            watcher.cancel()
            if not finished:
                self.worker.cancel(job)

    async def _collect(
        self, request: Request, job: Job, req: ParsedRequest, chat: bool, strip: bool
    ) -> Response:
        pieces: list[str] = []
        result = None
        async for kind, value in self._pieces(request, job):
            if kind == "text":
                pieces.append(value)
            else:
                result = value
        if result is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        text = "".join(pieces)
        if strip:
            text = text.lstrip()
        finish = P.FINISH[result.stop_reason]
        use = P.usage(len(job.prompt), len(result.tokens), job.cached_tokens)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        make = P.chat_body if chat else P.completion_body
        return JSONResponse(make(rid, req.model, text, finish, use))

    async def _stream(
        self, request: Request, job: Job, req: ParsedRequest, chat: bool, strip: bool
    ) -> AsyncIterator[bytes]:
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        model = req.model
        obj = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            yield _sse(P.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None))
        started = False
        ended = False
        try:
            async for kind, value in self._pieces(request, job):
                if kind == "text":
                    if strip and not started:
                        value = value.lstrip()
                        if not value:
                            continue
                    started = True
                    if chat:
                        yield _sse(P.chat_chunk(rid, model, created, {"content": value}, None))
                    else:
                        yield _sse(P.completion_chunk(rid, model, created, value, None))
                    continue
                ended = True
                finish = P.FINISH[value.stop_reason]
                if chat:
                    yield _sse(P.chat_chunk(rid, model, created, {}, finish))
                else:
                    yield _sse(P.completion_chunk(rid, model, created, "", finish))
                if req.include_usage:
                    use = P.usage(len(job.prompt), len(value.tokens), job.cached_tokens)
                    yield _sse(P.usage_chunk(rid, model, created, obj, use))
        except APIError as e:
            # Headers are gone: the error travels as an event, as OpenAI's streams do.
            ended = True
            yield _sse(e.body())
        if ended:  # else the client went away
            yield _sse("[DONE]")


class _EventStream(StreamingResponse):
    """A server-sent event stream whose client may leave at any time: that ends it quietly."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with contextlib.suppress(ClientDisconnect, OSError):
            await super().__call__(scope, receive, send)


def _engine_error(error: BaseException) -> APIError:
    if isinstance(error, RWKVKitError):  # a request the engine refused (checked before any model call)
        return APIError(400, str(error), code="invalid_value")
    if isinstance(error, RuntimeError) and "shutting down" in str(error):
        return APIError(503, str(error), code="shutting_down")
    return APIError(500, f"the model failed on this request: {type(error).__name__}: {error}")


async def _watch_disconnect(request: Request) -> None:
    """Returns when the client of a non-streamed request disconnects."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(model: Any, tokenizer: Any, config: ServerConfig | None = None, **options: Any) -> Starlette:
    """The server as an ASGI app (run it with uvicorn, or use ``rwkvkit serve``).

    ``model`` is in eval mode (a plain :class:`~rwkvkit.RWKV` decodes through the fast CPU path by
    itself), ``tokenizer`` the one it was trained with; ``config`` or its fields as keyword arguments
    (:class:`ServerConfig`). The engine thread starts with the app's lifespan and stops with it: every
    request still running then ends with a 503 error event.
    """
    if config is None:
        config = ServerConfig(**options)
    elif options:
        raise TypeError("pass either config or its fields as keyword arguments, not both")
    server = Server(model, tokenizer, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.engine_thread:
            server.worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, server.worker.stop)

    def guarded(handler):
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as e:
                return _error_response(e)
            except ClientDisconnect:
                return Response(status_code=499)

        return route

    routes = [
        Route("/", guarded(server.chat_page), methods=["GET"]),
        Route("/health", guarded(server.health), methods=["GET"]),
        Route("/v1/models", guarded(server.list_models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", guarded(server.get_model), methods=["GET"]),
        Route("/v1/stats", guarded(server.stats), methods=["GET"]),
        Route("/v1/completions", guarded(server.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(server.chat_completions), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {
            404: f"no route {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        err = APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=code)
        return _error_response(err)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}"))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.server = server
    return app
