"""The OpenAI request and response formats: validation of request bodies, and the JSON shapes sent back.

Every request field the server reads is checked here (type, then range) before anything reaches the
engine; a bad one raises :class:`APIError`, which the app turns into a 4xx response with an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``. Fields the server does not know
are ignored (clients send extras); known OpenAI fields the server cannot honour (``n > 1``,
``logprobs``, ``tools``, ...) are refused with a message rather than silently ignored.

Mapping onto :class:`~rwkvkit.generation.SamplingParams`:

================================ ==========================================================
OpenAI field                     rwkvkit
================================ ==========================================================
``max_tokens`` / ``max_completion_tokens``  ``max_new_tokens`` (server default and cap apply)
``temperature`` (0..2, default 1)  ``temperature`` (0 = greedy)
``top_p`` (default 1)            ``top_p`` (1 = no cut)
``presence_penalty``, ``frequency_penalty`` (-2..2)  the official RWKV penalties: a token seen
                                 before loses ``presence + frequency * count`` (counts decay by
                                 ``penalty_decay`` per token, as in the official chat)
``stop`` (string or list)        ``stop`` (plus the chat format's own stop)
``seed``                         ``seed`` (a private generator per request)
``top_k``, ``penalty_decay``     extensions, as in rwkvkit
================================ ==========================================================
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from rwkvkit.generation import SamplingParams
from rwkvkit.serve.chat import Message

__all__ = ["APIError", "Limits", "ParsedRequest", "parse_chat", "parse_completion"]


class APIError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_ERROR_TYPES = {
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``rwkvkit serve`` options of the same names).

    Attributes:
        max_body_bytes: the largest request body.
        max_prompt_tokens: the longest prompt, in tokens (prefill time grows with it).
        max_tokens: the largest ``max_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when a request does not say.
        max_stop: the most stop strings per request.
    """

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 16384
    max_tokens: int = 4096
    default_max_tokens: int = 256
    max_stop: int = 16


@dataclass
class ParsedRequest:
    """A validated request: which model, the prompt, the options, and how to answer."""

    model: str
    params: SamplingParams
    stream: bool
    include_usage: bool
    prompt: str | list[int] | None = None  # completions: text or ids
    messages: list[Message] | None = None  # chat


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _number(
    body: dict, name: str, default: float, low: float, high: float, *, low_open: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise _bad(f"'{name}' must be a number, got {value!r}", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise _bad(f"'{name}' must be in {bracket}{low:g}, {high:g}], got {value!r}", name, "invalid_value")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _bad(f"'{name}' must be an integer, got {value!r}", name, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}, got {value}", name, "invalid_value")
    return int(value)


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false, got {value!r}", name, "invalid_type")
    return value


def _refuse_unsupported(body: dict, endpoint: str) -> None:
    """Known OpenAI fields whose non-default values this server cannot honour: a clear 400."""
    checks = {
        "n": lambda v: v not in (None, 1),
        "best_of": lambda v: v not in (None, 1),
        "logprobs": lambda v: v not in (None, False, 0),
        "top_logprobs": lambda v: v not in (None, 0),
        "echo": lambda v: v not in (None, False),
        "suffix": lambda v: v not in (None, ""),
        "logit_bias": lambda v: v not in (None, {}),
        "tools": lambda v: v not in (None, []),
        "functions": lambda v: v not in (None, []),
        "tool_choice": lambda v: v not in (None, "none", "auto"),
        "function_call": lambda v: v not in (None, "none", "auto"),
        "response_format": lambda v: v not in (None, {"type": "text"}),
    }
    for name, unsupported in checks.items():
        if name in body and unsupported(body[name]):
            raise _bad(
                f"'{name}' = {body[name]!r} is not supported by rwkvkit serve ({endpoint}); leave it out",
                name,
                "unsupported_parameter",
            )


def _stops(body: dict, limits: Limits) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad(f"'stop' must be a string or a list of strings, got {value!r}", "stop", "invalid_type")
    if len(items) > limits.max_stop:
        raise _bad(f"'stop' has {len(items)} strings; at most {limits.max_stop}", "stop", "invalid_value")
    if any(not s for s in items):
        raise _bad("'stop' strings must not be empty", "stop", "invalid_value")
    return tuple(items)


def _common(
    body: Any, limits: Limits, endpoint: str, default_model: str
) -> tuple[str, SamplingParams, bool, bool]:
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}", None)
    _refuse_unsupported(body, endpoint)
    model = body.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise _bad(f"'model' must be a model id string (see GET /v1/models), got {model!r}", "model")
    max_tokens = _integer(body, "max_tokens", None, 0, limits.max_tokens)
    max_completion = _integer(body, "max_completion_tokens", None, 0, limits.max_tokens)
    if max_tokens is None:
        max_tokens = limits.default_max_tokens if max_completion is None else max_completion
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0, 0, 1 << 30) or 0,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        penalty_decay=_number(body, "penalty_decay", 0.996, 0.0, 1.0),
        stop=_stops(body, limits),
        seed=_integer(body, "seed", None, -(1 << 63), (1 << 64) - 1),
    )
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad(
                f"'stream_options' must be an object, got {options!r}", "stream_options", "invalid_type"
            )
        include_usage = _boolean(options, "include_usage", False)
    return model, params, stream, include_usage


def parse_completion(body: Any, limits: Limits, default_model: str) -> ParsedRequest:
    """``POST /v1/completions``: ``prompt`` is a string or token ids (or a list holding one of them)."""
    model, params, stream, usage = _common(body, limits, "/v1/completions", default_model)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, list):
        if any(isinstance(t, list) or isinstance(t, str) for t in prompt):
            raise _bad("one prompt per request: send several requests (they are batched)", "prompt")
        if any(isinstance(t, bool) or not isinstance(t, Integral) for t in prompt):
            raise _bad("'prompt' must be a string or a list of token ids", "prompt", "invalid_type")
        prompt = [int(t) for t in prompt]
    elif not isinstance(prompt, str):
        raise _bad(
            f"'prompt' must be a string or a list of token ids, got {prompt!r}", "prompt", "invalid_type"
        )
    return ParsedRequest(model, params, stream, usage, prompt=prompt)


def _content(value: Any, i: int) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: only text parts
        texts = []
        for part in value:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise _bad(
                    f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                    f"messages[{i}].content",
                    "invalid_type",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(
        f"messages[{i}].content must be a string, got {value!r}", f"messages[{i}].content", "invalid_type"
    )


def parse_chat(body: Any, limits: Limits, default_model: str) -> ParsedRequest:
    """``POST /v1/chat/completions``: ``messages`` with roles system/developer, user, assistant."""
    model, params, stream, usage = _common(body, limits, "/v1/chat/completions", default_model)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad(
            "'messages' must be a non-empty list of {role, content} objects", "messages", "invalid_type"
        )
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise _bad(
                f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]", "invalid_type"
            )
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _bad(
                f"messages[{i}].role must be 'system', 'user' or 'assistant', got {role!r}",
                f"messages[{i}].role",
                "invalid_value",
            )
        messages.append(Message("system" if role == "developer" else role, _content(m.get("content"), i)))
    return ParsedRequest(model, params, stream, usage, messages=messages)


# -- responses -------------------------------------------------------------------------------------

FINISH = {"length": "length", "stop_token": "stop", "stop_string": "stop", "cancelled": "stop"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_body(
    rid: str, model: str, text: str, finish: str, use: dict[str, Any], created: int | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": use,
    }


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def chat_body(
    rid: str, model: str, text: str, finish: str, use: dict[str, Any], created: int | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": use,
    }


def chat_chunk(
    rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def usage_chunk(rid: str, model: str, created: int, obj: str, use: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def models_body(ids: Sequence[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": created, "owned_by": "rwkvkit"} for i in ids],
    }
