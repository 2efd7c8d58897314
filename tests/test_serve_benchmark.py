"""benchmarks/serve.py: the pure helpers (no model, no rwkvkit server): the minimal HTTP client against a
scripted socket server, reading the event streams, percentiles, the prompts and the tables."""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks import serve as sb


def _event(obj: dict | str) -> bytes:
    return b"data: " + (obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n\n"


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def _serve_once(response: bytes) -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    """A server that reads one request (head and body) and writes ``response`` in small pieces."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(v for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n"))
                          if k.lower() == b"content-length"))  # fmt: skip
        requests.append(head + await reader.readexactly(length))
        for i in range(0, len(response), 7):  # odd pieces: events and chunk headers split anywhere
            writer.write(response[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    srv = await asyncio.start_server(handle, sb.HOST, 0)
    return srv, srv.sockets[0].getsockname()[1], requests


def test_post_stream_reads_chunked_events_split_anywhere():
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 3}}
    events = [
        _event({"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
        _event({"choices": [{"delta": {"content": "Hel"}, "finish_reason": None}]}),
        _event({"choices": [{"delta": {"content": "lo"}, "finish_reason": None}]}),
        _event({"choices": [{"delta": {}, "finish_reason": "length"}]}),
        _event({"choices": [], "usage": usage}),
        _event("[DONE]"),
    ]
    # one chunk with two events, one event across two chunks
    pieces = [events[0] + events[1], events[2][:10], events[2][10:], *events[3:]]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )

    async def main():
        srv, port, requests = await _serve_once(head + _chunked(pieces))
        async with srv:
            return await sb.post_stream(port, "/v1/chat/completions", {"x": 1}), requests

    stream, requests = asyncio.run(main())
    assert stream.error is None and stream.status == 200
    assert requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert requests[0].endswith(b'\r\n\r\n{"x": 1}')
    assert len(stream.events) == 6 and stream.events[-1][1] == b"[DONE]"
    ans = sb.parse_stream(stream)
    assert (
        ans.error is None and ans.text == "Hello" and len(ans.chunk_times) == 2
    )  # the role chunk is no token
    assert (ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens) == (5, 2, 3)
    assert ans.ttft is not None and ans.ttft >= 0 and len(ans.gaps) == 1
    assert ans.done is not None and ans.finish is not None


def test_post_stream_reports_an_error_response_and_a_refused_connection():
    body = json.dumps({"error": {"message": "the server is busy"}}).encode()
    response = (
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    )

    async def main():
        srv, port, _ = await _serve_once(response % (len(body), body))
        async with srv:
            return await sb.post_stream(port, "/v1/completions", {})

    ans = sb.parse_stream(asyncio.run(main()))
    assert ans.error.startswith("HTTP 429") and "busy" in ans.error

    port = sb.free_port()  # nothing listens there
    ans = sb.parse_stream(asyncio.run(sb.post_stream(port, "/v1/completions", {})))
    assert ans.error and "Error" in ans.error


def test_parse_stream_completions_error_event_and_missing_done():
    s = sb.Stream(sent=1.0, status=200)
    s.events = [(1.5, json.dumps({"choices": [{"text": "a", "finish_reason": None}]}).encode())]
    ans = sb.parse_stream(s)
    assert ans.text == "a" and ans.ttft == 0.5
    assert ans.error == "the stream ended without data: [DONE]"
    s.events += [(2.0, json.dumps({"error": {"message": "boom"}}).encode()), (2.0, b"[DONE]")]
    assert sb.parse_stream(s).error == "error event: boom"


def test_percentile_and_summary():
    assert sb.percentile([], 50) is None
    assert sb.percentile([3.0], 95) == 3.0
    assert sb.percentile([4, 1, 3, 2], 50) == 2.5
    assert sb.percentile(list(range(101)), 95) == pytest.approx(95)
    r = sb.summarize([0.0, 0.5], [2.0, 4.0], [0.1, 0.3], [0.01, 0.02, 0.03], 100)
    assert r["tok_s"] == 25 and r["wall_s"] == 4.0
    assert r["ttft_p50_ms"] == pytest.approx(200) and r["itl_p50_ms"] == pytest.approx(20)


class _Bytes:
    """A tokenizer with one id per byte."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode(errors="replace")


def test_prompts_are_distinct_and_sized():
    args = type(
        "Args", (), {"clients": [1, 4], "repeats": 2, "prompt_tokens": 40, "turns": 3, "turn_tokens": 100}
    )
    p = sb.Prompts.build(_Bytes(), args)
    assert len(p.warm) == sb.WARM_PROMPTS
    assert [len(p.runs[n][r]) for n in (1, 4) for r in (0, 1)] == [1, 1, 4, 4]
    every = p.warm + [q for runs in p.runs.values() for run in runs for q in run]
    assert len(set(every)) == len(every) == sb.WARM_PROMPTS + 10  # each prompt sent once per server
    assert all(len(q.encode()) == 40 for q in every)
    assert len(p.turns) == 3 and all(len(t.encode()) == 100 for t in p.turns)
    assert not set(p.turns) & set(every)


def test_tables():
    run = {"tokens": 64, "tok_s": 100.0, "ttft_p50_ms": 10.0, "ttft_p95_ms": 20.0, "itl_p50_ms": 1.0,
           "itl_p95_ms": 2.0, "server_cpu": 1.5, "client_cpu": 0.1, "other_cpu": 0.0, "errors": [],
           "prompt_tokens": 50.0}  # fmt: skip
    inproc = {k: v for k, v in run.items() if k != "prompt_tokens"}  # no usage in-process
    runs = {
        "in-process": {1: dict(inproc, client_cpu=None, tok_s=200.0)},
        "cache on": {1: run},
        "cache off": {},
    }
    lines = sb.concurrency_table(runs)
    assert lines[0].startswith(
        "| clients | prompt tok | tokens | in-process tok/s | cache on tok/s | / in-process |"
    )
    assert lines[2] == "| 1 | 50 | 64 | 200.0 | 100.0 | 0.50 | - | - |"
    lines = sb.latency_table(runs)
    assert len(lines) == 4 and lines[2] == "| 1 | in-process | 10 | 20 | 1.0 | 2.0 | 150% | - | 0% | 0 |"
    assert lines[3].startswith("| 1 | cache on | 10 |")
    turn = {"prompt_tokens": 100, "cached_tokens": 0, "ttft_ms": 50.0, "empty_answer": False}
    lines = sb.cache_table([dict(turn, cached_tokens=90, ttft_ms=10.0)], [dict(turn, prompt_tokens=101)])
    assert lines[2] == "| 1 | 100 (off: 101) | 90 | 10 | 50 | 5.00x |"
