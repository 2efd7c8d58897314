"""Test helpers for rwkvkit serve: a real uvicorn server in a thread, on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

uvicorn = pytest.importorskip("uvicorn", reason="rwkvkit serve needs the serve extra (starlette, uvicorn)")


@contextlib.contextmanager
def running_server(app, *, shutdown_timeout: float = 5.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a daemon thread on 127.0.0.1; yields the base URL
    (``http://127.0.0.1:PORT``). The server is stopped (graceful shutdown) on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    from rwkvkit.serve.run import make_server

    server = make_server(app, log_level="warning", shutdown_timeout=shutdown_timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout + 20)
        sock.close()


def request(
    url: str, body: dict | bytes | None = None, *, method: str | None = None, headers: dict | None = None
) -> tuple[int, dict[str, str], object]:
    """One HTTP request with the standard library; returns (status, headers, parsed JSON body or text)."""
    import json
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode("utf-8", "replace")


def stream_events(url: str, body: dict, *, headers: dict | None = None) -> list[object]:
    """POST ``body`` with ``stream: true``; returns the parsed ``data:`` events, ``"[DONE]"`` as is."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request(
            "POST", parts.path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        assert resp.status == 200, (resp.status, resp.read())
        assert resp.getheader("content-type", "").startswith("text/event-stream")
        events: list[object] = []
        for line in resp:
            line = line.decode().rstrip("\n")
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
        return events
    finally:
        conn.close()


def streamed_text(events: list[object], chat: bool) -> tuple[str, str | None, dict | None]:
    """The text, finish reason and usage of a list of stream events."""
    text, finish, usage = [], None, None
    for e in events:
        if e == "[DONE]":
            continue
        if e.get("usage"):
            usage = e["usage"]
        for c in e["choices"]:
            text.append(c["delta"].get("content", "") if chat else c["text"])
            finish = c["finish_reason"] or finish
    return "".join(text), finish, usage


class NeverStops:
    """A tokenizer's stand-in with no end-of-text id: a request then runs to its ``max_tokens`` (the tests
    of disconnects, full queues and shutdown need requests that are surely still running)."""

    eos_id = None

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)
