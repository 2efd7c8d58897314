"""rwkvkit serve end to end: a real uvicorn server in a thread, the shipped model, HTTP from the standard
library and from the official ``openai`` client.

Greedy answers through the server must equal :func:`rwkvkit.generate` run alone, token for token, with
one client or sixteen at once: the server adds batching and HTTP, never a different answer. (Batched
products may differ from batch-1 ones in the last bits, which changes a greedy token only on a near-tie;
the prompts here have none.)
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import rwkvkit
from rwkvkit.serve.chat import CHAT_FORMATS, Message
from tests.serve.helpers import NeverStops, request, running_server, stream_events, streamed_text

pytest.importorskip("starlette", reason="rwkvkit serve needs the serve extra (starlette, uvicorn)")
from rwkvkit.serve import create_app  # noqa: E402

PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\n",
    "class Stack:\n    def push(self, item):",
    "for i in range(10):",
    "# Read a file and count its lines\n",
    "def parse_args(argv):\n    parser = ",
    "try:\n    import json\nexcept ImportError:",
    "while True:\n    line = input()",
]
WORLD_STOP = CHAT_FORMATS["world"].stop


@pytest.fixture(scope="module")
def url(lm):
    """A server with the World chat format and the cache off (parity: every prompt prefilled whole)."""
    model, tok = lm
    with running_server(create_app(model, tok, chat_format="world", cache_mb=0, max_batch=32)) as base:
        yield base


def reference(lm, prompt, n, stop=()):
    """What rwkvkit.generate gives alone, greedy: (text, number of tokens, stop reason)."""
    model, tok = lm
    gen = rwkvkit.generate(model, tok, prompt, max_new_tokens=n, temperature=0, stop=stop, stream=True)
    text = "".join(gen)
    return text, len(gen.tokens), gen.stop_reason


def chat_reference(lm, messages, n):
    model, tok = lm
    ids = CHAT_FORMATS["world"].prompt_ids(tok, [Message(**m) for m in messages])
    text, count, reason = reference(lm, ids, n, WORLD_STOP)
    return text.lstrip(), count, reason, len(ids)


def finish_of(reason):
    return "length" if reason == "length" else "stop"


# -- parity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_completion_equals_generate(lm, url, stream):
    prompt, n = PROMPTS[0], 24
    want, count, reason = reference(lm, prompt, n)
    body = {"model": "default", "prompt": prompt, "max_tokens": n, "temperature": 0}
    if stream:
        events = stream_events(
            url + "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert events[-1] == "[DONE]"
        assert all(e["object"] == "text_completion" for e in events[:-1])
        text, finish, usage = streamed_text(events, chat=False)
    else:
        status, _, out = request(url + "/v1/completions", body)
        assert status == 200, out
        assert out["object"] == "text_completion" and out["model"] == "default"
        text, finish, usage = out["choices"][0]["text"], out["choices"][0]["finish_reason"], out["usage"]
    assert text == want
    assert finish == finish_of(reason)
    _, tok = lm
    assert usage["prompt_tokens"] == len(tok.encode(prompt))
    assert usage["completion_tokens"] == count
    assert usage["total_tokens"] == usage["prompt_tokens"] + count


@pytest.mark.parametrize("stream", [False, True])
def test_chat_equals_generate(lm, url, stream):
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Write a function.\n\n\nIt adds numbers."},
    ]
    want, count, reason, n_prompt = chat_reference(lm, messages, 20)
    body = {"model": "default", "messages": messages, "max_tokens": 20, "temperature": 0}
    if stream:
        events = stream_events(
            url + "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
        text, finish, usage = streamed_text(events, chat=True)
    else:
        status, _, out = request(url + "/v1/chat/completions", body)
        assert status == 200, out
        assert out["object"] == "chat.completion"
        assert out["choices"][0]["message"]["role"] == "assistant"
        text, finish, usage = (
            out["choices"][0]["message"]["content"],
            out["choices"][0]["finish_reason"],
            out["usage"],
        )
    assert text == want
    assert finish == finish_of(reason)
    assert usage["prompt_tokens"] == n_prompt and usage["completion_tokens"] == count


def test_sixteen_clients_at_once_equal_generate_alone(lm, url):
    jobs = [(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), 16 + i) for i in range(16)]
    want = [reference(lm, p, n)[0] for p, n in jobs]

    def one(i):
        p, n = jobs[i]
        body = {"prompt": p, "max_tokens": n, "temperature": 0}
        if i % 2:  # half stream, half not
            return streamed_text(
                stream_events(url + "/v1/completions", {**body, "stream": True}), chat=False
            )[0]
        return request(url + "/v1/completions", body)[2]["choices"][0]["text"]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(16)))
    assert got == want


def test_seeded_sampling_is_reproducible_and_private(url):
    """Sampling draws from the request's own generator: the same seed gives the same text whatever else
    runs at the same time."""
    body = {"prompt": PROMPTS[1], "max_tokens": 24, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    alone = request(url + "/v1/completions", body)[2]["choices"][0]["text"]
    others = {"prompt": PROMPTS[2], "max_tokens": 40, "temperature": 1.0}
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(request, url + "/v1/completions", others) for _ in range(5)]
        mine = pool.submit(request, url + "/v1/completions", body)
        together = mine.result()[2]["choices"][0]["text"]
        [f.result() for f in futures]
    assert together == alone


def test_stop_strings_and_finish_reason(lm, url):
    prompt = PROMPTS[1]
    full, _, _ = reference(lm, prompt, 30)
    stop = full[5:9]  # a stop string that the greedy text surely contains
    assert stop.strip(), full
    want, _, reason = reference(lm, prompt, 30, (stop, "never-there"))
    assert reason == "stop_string"
    out = request(
        url + "/v1/completions",
        {"prompt": prompt, "max_tokens": 30, "temperature": 0, "stop": [stop, "never-there"]},
    )[2]
    assert out["choices"][0]["text"] == want == full[: full.index(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_openai_client_unchanged(lm, url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["default"]
    assert client.models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    out = client.completions.create(model="default", prompt=PROMPTS[3], max_tokens=12, temperature=0)
    assert out.choices[0].text == reference(lm, PROMPTS[3], 12)[0]
    messages = [{"role": "user", "content": "Print hello."}]
    want = chat_reference(lm, messages, 16)[0]
    pieces = []
    with client.chat.completions.create(
        model="default", messages=messages, max_tokens=16, temperature=0, stream=True
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == want
    done = client.chat.completions.create(model="default", messages=messages, max_tokens=16, temperature=0)
    assert done.choices[0].message.content == want
    assert done.usage.completion_tokens > 0


# -- conversations, the state cache and named states -------------------------------------------------


def converse(url, turns, n=12, model="default"):
    """A multi-turn chat: each turn sends the whole conversation so far; returns answers and usages."""
    messages, answers, usages = [{"role": "system", "content": "Answer in Python."}], [], []
    for question in turns:
        messages.append({"role": "user", "content": question})
        status, _, out = request(
            url + "/v1/chat/completions",
            {"model": model, "messages": messages, "max_tokens": n, "temperature": 0},
        )
        assert status == 200, out
        answer = out["choices"][0]["message"]["content"]
        answers.append(answer)
        usages.append(out["usage"])
        messages.append({"role": "assistant", "content": answer})
    return answers, usages


CONVERSATIONS = [
    ["Sort a list.", "Now reverse it.", "And print it."],
    ["Open a file.", "Read its lines.", "Close it."],
    ["Make a class.", "Add a method.", "Call it."],
]


def test_state_cache_resumes_later_turns(lm):
    """Turn k > 1 resumes from the state after turn k-1's prompt and answer: only the new message is
    prefilled, and the answers equal those of a server without the cache."""
    model, tok = lm
    with running_server(create_app(model, tok, chat_format="world", cache_mb=0)) as base:
        plain, plain_usage = converse(base, CONVERSATIONS[0])
    app = create_app(model, tok, chat_format="world", cache_mb=64)
    with running_server(app) as base:
        cached, usage = converse(base, CONVERSATIONS[0])
        stats = request(base + "/v1/stats")[2]["cache"]
    assert cached == plain
    assert [u["prompt_tokens"] for u in usage] == [u["prompt_tokens"] for u in plain_usage]
    assert usage[0]["prompt_tokens_details"]["cached_tokens"] == 0
    for k in (1, 2):
        # The previous turn's prompt and every answer token it fed are resumed, at least.
        prev = usage[k - 1]
        resumed = usage[k]["prompt_tokens_details"]["cached_tokens"]
        assert prev["prompt_tokens"] <= resumed < usage[k]["prompt_tokens"], (k, usage)
    assert stats["hits"] >= 2 and 0 < stats["bytes"] <= stats["max_bytes"]


def test_interleaved_conversations_do_not_leak_state(lm):
    """Three conversations at once get the answers each gets alone (with the cache on: a cached state of
    one conversation is never resumed by another)."""
    model, tok = lm
    with running_server(create_app(model, tok, chat_format="world", cache_mb=64)) as base:
        alone = [converse(base, turns)[0] for turns in CONVERSATIONS]
    with running_server(create_app(model, tok, chat_format="world", cache_mb=64)) as base:
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda t: converse(base, t)[0], CONVERSATIONS))
    assert together == alone


def test_named_state_is_its_own_model(lm, tmp_path):
    model, tok = lm
    intro = "# utilities for reading configuration files\nimport configparser\n"
    gen = rwkvkit.generate(model, tok, intro, max_new_tokens=0, stream=True)
    "".join(gen)
    state = gen.state
    path = tmp_path / "intro.state"
    state.save(path)
    loaded = rwkvkit.State.load(path)
    app = create_app(model, tok, chat_format="plain", states={"intro": loaded}, cache_mb=64)
    prompt = "def read(path):"
    gen = rwkvkit.generate(model, tok, prompt, max_new_tokens=16, temperature=0, state=loaded, stream=True)
    want = "".join(gen)
    plain = reference(lm, prompt, 16)[0]
    with running_server(app) as base:
        ids = [m["id"] for m in request(base + "/v1/models")[2]["data"]]
        assert ids == ["default", "default:intro"]
        for _ in range(2):  # the second time from the cache: the namespace keeps it apart from "default"
            got = request(
                base + "/v1/completions",
                {"model": "default:intro", "prompt": prompt, "max_tokens": 16, "temperature": 0},
            )
            assert got[2]["choices"][0]["text"] == want
            fresh = request(
                base + "/v1/completions",
                {"model": "default", "prompt": prompt, "max_tokens": 16, "temperature": 0},
            )
            assert fresh[2]["choices"][0]["text"] == plain
    assert want != plain  # the state matters, so the test can tell them apart


# -- disconnects and shutdown ---------------------------------------------------------------------------


def wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def long_url(lm):
    """A server whose requests never stop before max_tokens (no end-of-text token)."""
    model, tok = lm
    with running_server(create_app(model, NeverStops(tok), chat_format="plain", cache_mb=0)) as base:
        yield base


def test_disconnect_frees_the_slot(long_url):
    import http.client
    from urllib.parse import urlsplit

    url = long_url
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = {"prompt": PROMPTS[0], "max_tokens": 4000, "temperature": 1.0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.readline()  # the first event arrived: the request is decoding
    assert request(url + "/v1/stats")[2]["in_flight"] == 1
    conn.sock.close()
    conn.close()
    assert wait_for(lambda: request(url + "/v1/stats")[2]["in_flight"] == 0), request(url + "/v1/stats")
    # ... long before its 4000 tokens
    assert request(url + "/v1/stats")[2]["tokens_generated"] < 3000


def test_shutdown_ends_running_streams_cleanly(lm):
    """Stopping the server (Ctrl-C) lets running requests finish within the grace period, then cancels
    them: the stream ends with an error event and [DONE], and the server thread exits."""
    model, tok = lm
    app = create_app(model, NeverStops(tok), chat_format="plain", cache_mb=0)
    events: list = []

    def client(base):
        events.extend(
            stream_events(
                base + "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 4000, "stream": True}
            )
        )

    with running_server(app, shutdown_timeout=0.5) as base:
        thread = threading.Thread(target=client, args=(base,))
        thread.start()
        assert wait_for(lambda: request(base + "/v1/stats")[2]["tokens_generated"] > 0)
    thread.join(30)
    assert not thread.is_alive()
    assert not app.state.server.worker.running
    assert events and events[-1] == "[DONE]"
    assert any(isinstance(e, dict) and e.get("error", {}).get("code") == "shutting_down" for e in events)
