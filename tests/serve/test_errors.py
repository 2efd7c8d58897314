"""rwkvkit serve refuses bad requests with a 4xx and an OpenAI-style error body, and keeps serving.

The table below is the bad-input table of the issue: each malformed request, the status it gets, and
the error's ``param``/``code``; after every row the server must still answer a good request.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.serve.helpers import NeverStops, request, running_server

pytest.importorskip("starlette", reason="rwkvkit serve needs the serve extra (starlette, uvicorn)")
from rwkvkit.serve import Limits, create_app  # noqa: E402

LIMITS = Limits(max_body_bytes=8192, max_prompt_tokens=64, max_tokens=100, default_max_tokens=8)
C, CHAT = "/v1/completions", "/v1/chat/completions"
OK_CHAT = [{"role": "user", "content": "hi"}]

# (name, path, body (dict, or raw bytes), status, param, code)
BAD = [
    ("malformed JSON", C, b'{"prompt": "x",', 400, None, "invalid_json"),
    ("empty body", C, b"", 400, None, "invalid_json"),
    ("not UTF-8", C, b'{"prompt": "\xff"}', 400, None, "invalid_json"),
    ("body is a list", C, [1, 2], 400, None, None),
    ("temperature a string", C, {"prompt": "x", "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("temperature negative", C, {"prompt": "x", "temperature": -1}, 400, "temperature", "invalid_value"),
    ("temperature huge", C, {"prompt": "x", "temperature": 1e300}, 400, "temperature", "invalid_value"),
    ("temperature NaN", C, b'{"prompt": "x", "temperature": NaN}', 400, "temperature", "invalid_type"),
    ("top_p zero", C, {"prompt": "x", "top_p": 0}, 400, "top_p", "invalid_value"),
    ("top_p above one", C, {"prompt": "x", "top_p": 1.5}, 400, "top_p", "invalid_value"),
    ("top_k negative", C, {"prompt": "x", "top_k": -1}, 400, "top_k", "invalid_value"),
    (
        "presence_penalty huge",
        C,
        {"prompt": "x", "presence_penalty": 5},
        400,
        "presence_penalty",
        "invalid_value",
    ),
    (
        "frequency_penalty a list",
        C,
        {"prompt": "x", "frequency_penalty": [1]},
        400,
        "frequency_penalty",
        "invalid_type",
    ),
    ("max_tokens negative", C, {"prompt": "x", "max_tokens": -5}, 400, "max_tokens", "invalid_value"),
    (
        "max_tokens over the limit",
        C,
        {"prompt": "x", "max_tokens": 10**9},
        400,
        "max_tokens",
        "invalid_value",
    ),
    ("max_tokens fractional", C, {"prompt": "x", "max_tokens": 3.5}, 400, "max_tokens", "invalid_type"),
    ("max_tokens a bool", C, {"prompt": "x", "max_tokens": True}, 400, "max_tokens", "invalid_type"),
    ("stop a number", C, {"prompt": "x", "stop": 123}, 400, "stop", "invalid_type"),
    ("stop empty string", C, {"prompt": "x", "stop": [""]}, 400, "stop", "invalid_value"),
    ("too many stops", C, {"prompt": "x", "stop": ["a"] * 17}, 400, "stop", "invalid_value"),
    ("seed a string", C, {"prompt": "x", "seed": "abc"}, 400, "seed", "invalid_type"),
    ("seed huge", C, {"prompt": "x", "seed": 2**80}, 400, "seed", "invalid_value"),
    ("stream a string", C, {"prompt": "x", "stream": "yes"}, 400, "stream", "invalid_type"),
    (
        "stream_options a number",
        C,
        {"prompt": "x", "stream_options": 5},
        400,
        "stream_options",
        "invalid_type",
    ),
    ("model a number", C, {"prompt": "x", "model": 123}, 400, "model", None),
    ("unknown model", C, {"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("n = 2", C, {"prompt": "x", "n": 2}, 400, "n", "unsupported_parameter"),
    ("logprobs", C, {"prompt": "x", "logprobs": 5}, 400, "logprobs", "unsupported_parameter"),
    ("echo", C, {"prompt": "x", "echo": True}, 400, "echo", "unsupported_parameter"),
    ("prompt a number", C, {"prompt": 5}, 400, "prompt", "invalid_type"),
    ("prompt mixed list", C, {"prompt": [1, "a"]}, 400, "prompt", None),
    ("two prompts", C, {"prompt": ["a", "b"]}, 400, "prompt", None),
    ("prompt id out of vocabulary", C, {"prompt": [1, 99999999]}, 400, "prompt", "invalid_value"),
    ("prompt id negative", C, {"prompt": [-1]}, 400, "prompt", "invalid_value"),
    ("prompt empty", C, {"prompt": ""}, 400, "prompt", "invalid_value"),
    ("prompt too long", C, {"prompt": "x = 1\n" * 200}, 400, "prompt", "context_length_exceeded"),
    ("body too large", C, {"prompt": "x" * 10000}, 413, None, None),
    ("messages missing", CHAT, {"model": "default"}, 400, "messages", "invalid_type"),
    ("messages empty", CHAT, {"messages": []}, 400, "messages", "invalid_type"),
    ("messages a string", CHAT, {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("message not an object", CHAT, {"messages": [5]}, 400, "messages[0]", "invalid_type"),
    (
        "unknown role",
        CHAT,
        {"messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages[0].role",
        "invalid_value",
    ),
    (
        "content a number",
        CHAT,
        {"messages": [{"role": "user", "content": 5}]},
        400,
        "messages[0].content",
        "invalid_type",
    ),
    (
        "image content",
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages[0].content",
        "invalid_type",
    ),
    (
        "tools",
        CHAT,
        {"messages": OK_CHAT, "tools": [{"type": "function"}]},
        400,
        "tools",
        "unsupported_parameter",
    ),
    (
        "chat too long",
        CHAT,
        {"messages": [{"role": "user", "content": "y = 2\n" * 200}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
]


@pytest.fixture(scope="module")
def url(lm):
    model, tok = lm
    with running_server(
        create_app(model, tok, chat_format="plain", limits=LIMITS, max_batch=2, max_queue=2)
    ) as base:
        yield base


def good(url):
    status, _, out = request(url + C, {"prompt": "def f(x):", "max_tokens": 4, "temperature": 0})
    return status == 200 and out["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize("name,path,body,status,param,code", BAD, ids=[row[0] for row in BAD])
def test_bad_request(url, name, path, body, status, param, code):
    got, headers, out = request(url + path, body)
    assert got == status, out
    assert headers["content-type"].startswith("application/json")
    err = out["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert err["param"] == param and err["code"] == code
    assert good(url)  # and the server goes on serving


@pytest.mark.parametrize(
    "method,path,status", [("GET", "/v1/nothing", 404), ("GET", C, 405), ("DELETE", "/v1/models", 405)]
)
def test_unknown_routes_answer_json(url, method, path, status):
    got, _, out = request(url + path, method=method)
    assert got == status and "message" in out["error"]


def test_defaults_apply(url):
    out = request(url + C, {"prompt": "def f(x):", "temperature": 0})[2]
    assert out["usage"]["completion_tokens"] <= LIMITS.default_max_tokens
    # max_tokens 0 only prefills (useful to warm the state cache): an empty answer
    out = request(url + C, {"prompt": "def f(x):", "max_tokens": 0})[2]
    assert out["choices"][0] == {"index": 0, "text": "", "finish_reason": "length", "logprobs": None}


def test_api_key(lm):
    model, tok = lm
    openai = pytest.importorskip("openai")
    with running_server(create_app(model, tok, chat_format="plain", api_key="s3cret")) as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            got, hdrs, out = request(base + "/v1/models", headers=headers)
            assert got == 401 and out["error"]["code"] == "invalid_api_key"
            assert hdrs.get("www-authenticate") == "Bearer"
            got, _, _ = request(base + C, {"prompt": "x", "max_tokens": 1}, headers=headers)
            assert got == 401
        assert request(base + "/v1/models", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert request(base + "/")[0] == 200  # the page itself is public; it asks for the key
        assert request(base + "/health")[0] == 200
        client = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="default", prompt="x", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).models.list()


def test_full_server_answers_429_with_retry_after(lm):
    model, tok = lm
    app = create_app(model, NeverStops(tok), chat_format="plain", max_batch=1, max_queue=0)
    with running_server(app) as base:
        parts = urlsplit(base)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        body = {"prompt": "def f(x):", "max_tokens": 4000, "stream": True}
        conn.request("POST", C, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.readline()  # decoding
        got, headers, out = request(base + C, {"prompt": "x", "max_tokens": 1})
        assert got == 429 and headers["retry-after"] == "1"
        assert out["error"]["type"] == "rate_limit_error"
        conn.sock.close()
        conn.close()
        deadline = time.monotonic() + 30
        while request(base + "/v1/stats")[2]["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert good(base)


def test_engine_failure_is_a_500_and_the_server_recovers(lm, monkeypatch):
    """A model error on one step ends the requests in flight with a 500 error; later requests work."""
    model, tok = lm
    app = create_app(model, tok, chat_format="plain")
    engine_cls = type(app.state.server.worker.engine)
    real_step, calls = engine_cls.step, threading.Event()

    def failing_step(self):
        if not calls.is_set():
            calls.set()
            raise RuntimeError("simulated out of memory")
        return real_step(self)

    monkeypatch.setattr(engine_cls, "step", failing_step)
    with running_server(app) as base:
        got, _, out = request(base + C, {"prompt": "x", "max_tokens": 3})
        assert got == 500 and "simulated out of memory" in out["error"]["message"]
        assert good(base)
