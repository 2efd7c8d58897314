"""``rwkvkit serve`` under load: concurrent streaming clients, the same work in-process, and the state cache.

    python benchmarks/serve.py                    # shipped model + random RWKV-7 0.1B, 1/4/16/64 clients
    python benchmarks/serve.py --models default   # the shipped model only (a few minutes)
    python benchmarks/serve.py --quick            # smoke run: 1 and 4 clients, 8 tokens, 3 short turns

Every server is a real ``rwkvkit serve`` process on a free loopback port (``--max-batch`` at least the
largest client count, ``--log-level warning``), started per configuration and stopped with SIGINT.
Models: ``default`` (the model shipped with rwkvkit, ``--chat-format plain``) and ``random`` (a random
RWKV-7 0.1B-shape official checkpoint at ``runs/bench/rwkv7-0.1b-random.pth``, written if missing, as
``benchmarks/generate.py`` does; ``--chat-format world``, World tokenizer). Prompts are Python
standard library source (``sysconfig.get_paths()["stdlib"]``), so nothing is downloaded.

1. Concurrency. N clients (``--clients``, default 1 4 16 64) each stream one ``POST /v1/completions``
   at the same moment: a ~50-token prompt (``--prompt-tokens``) that no other request to the same
   server has (so the state cache never applies here), ``max_tokens`` (``--max-tokens``, default 64),
   ``temperature`` 0, ``stream_options.include_usage``, after a warm-up (one request, then four at
   once: kernels compiled or loaded, allocator grown). The clients
   are a minimal HTTP/1.1 client on ``asyncio.open_connection`` (no client library in the timing
   loop: the 2 cores are shared by the server and the clients) that records the arrival time of every
   server-sent event and parses them after the run. Per N, the best of ``--repeats`` runs (by tokens/s;
   a shared machine only slows runs down):

   * aggregate tokens/s: the sum of the requests' ``usage.completion_tokens`` / (the last
     ``data: [DONE]`` - the first request sent);
   * TTFT (time to first token): request sent -> its first chunk with text, p50 and p95 over the N
     requests;
   * inter-token latency: the gaps between consecutive text chunks of a request, p50/p95 over all;
   * the CPU time the server process, the benchmark process (the clients) and everything else on the
     machine (``/proc/stat``; other work sharing the cores: a warning above 25 %) used, as % of the
     wall time (100 % = one core busy);
   * in-process: the same prompts added at once to one ``BatchEngine(model, tokenizer, max_batch=...)``
     in this process and stepped until done (run while no server runs), measured the same way (a
     request's text pieces take the time of the step that produced them), once in the main thread
     and once in a long-lived thread of its own with grad mode off, as ``rwkvkit serve`` runs its
     engine ("engine thread"; torch's OpenMP pool behaves differently there). The ratio server /
     in-process is what serving costs: HTTP, the event loop, and the engine thread.

   Measured against the server with its default state cache (512 MiB) and with ``--cache-mb 0``: with
   the cache on, every request also keeps its state after the prompt and after the answer (and so
   decodes its last token too), which the in-process engine (``return_state=False``) does not do.

2. State cache. One long conversation through ``POST /v1/chat/completions`` (streamed): a system
   message, then ``--turns`` user turns (default 8) of ``--turn-tokens`` (default 400) tokens of stdlib
   source each, every turn sending the whole conversation so far with the assistant's answers as the
   server returned them, so the last prompt holds a few thousand tokens. Run once against a server with
   the cache on and once with ``--cache-mb 0``; per turn: prompt tokens, cached tokens
   (``usage.prompt_tokens_details.cached_tokens``), TTFT with and without the cache and the speed-up.

Printed, and written as it goes to ``benchmarks/results/serve-<date>.md`` (``--out``): the machine (CPU,
cores, load average before and after), the tables, and the raw numbers as JSON at the end. Nothing
here asserts on time. The server processes inherit this environment (set ``TORCH_EXTENSIONS_DIR`` to
keep the compiled CPU kernels between runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
RANDOM_CKPT = ROOT / "runs" / "bench" / "rwkv7-0.1b-random.pth"
HOST = "127.0.0.1"
# What each model is served with: the shipped model writes Python (no chat format of its own); the
# random checkpoint has the World vocabulary (65536 ids).
MODELS = {
    "default": {"model": "default", "chat_format": "plain", "tokenizer": None},
    "random": {"model": str(RANDOM_CKPT), "chat_format": "world", "tokenizer": "world"},
}
SYSTEM = "You are reading the sources of Python's standard library, one part after another."
IN_PROCESS, IN_THREAD = "in-process", "engine thread"  # the names of the two in-process runs
WARM_PROMPTS = 5  # one request alone, then four at once
OTHER_CPU_WARN = 0.25  # other processes' CPU use during a measurement above this (cores): a warning
QUICK = {"clients": [1, 4], "max_tokens": 8, "turns": 3, "turn_tokens": 100, "repeats": 1}


# ---- the HTTP client -------------------------------------------------------------------------------


@dataclass
class Stream:
    """One streamed request as it arrived: raw events and their arrival times (parsed afterwards, so
    the timing loop does little more than read sockets)."""

    sent: float = 0.0  # perf_counter() when the request was written
    status: int = 0
    events: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, the event's data)
    body: bytes = b""  # the body of a response that is not an event stream (an error)
    error: str | None = None  # a connection failure


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2:
        raise ConnectionError(f"no HTTP status line, got {status_line!r}")
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The response body as it arrives: chunked, sized or until the connection closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)  # the CRLF after the chunk
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def post_stream(port: int, path: str, payload: dict, host: str = HOST) -> Stream:
    """POST ``payload`` as JSON and read the server-sent events of the answer (``Connection: close``)."""
    data = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    s = Stream()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        s.error = f"{type(e).__name__}: {e}"
        return s
    try:
        s.sent = time.perf_counter()
        writer.write(head + data)
        await writer.drain()
        s.status, headers = await _read_head(reader)
        if not headers.get("content-type", "").startswith("text/event-stream"):
            s.body = b"".join([piece async for piece in _body(reader, headers)])
            return s
        pending = b""
        async for piece in _body(reader, headers):
            now = time.perf_counter()
            pending += piece
            # One event per chunk is what the server sends, but an event may span chunks or share one.
            *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        s.events.append((now, line[5:].strip()))
    except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
        s.error = f"{type(e).__name__}: {e}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return s


@dataclass
class Answer:
    """A streamed answer, parsed: its text chunks' arrival times, text, usage, and what went wrong."""

    sent: float
    chunk_times: list[float]  # arrival of every chunk that carried text
    text: str
    done: float | None  # arrival of ``data: [DONE]``
    finish: float | None  # arrival of the chunk with a finish_reason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent if self.chunk_times else None

    @property
    def gaps(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]


def parse_stream(s: Stream) -> Answer:
    """Read a :class:`Stream` of ``/v1/completions`` or ``/v1/chat/completions`` chunks. A chat stream's
    first chunk (the role, no text) is not a token: only chunks with text count."""
    ans = Answer(s.sent, [], "", None, None, error=s.error)
    if s.status != 200 and ans.error is None:
        ans.error = f"HTTP {s.status}: {s.body[:300].decode(errors='replace')}"
    pieces = []
    for t, data in s.events:
        if data == b"[DONE]":
            ans.done = t
            continue
        obj = json.loads(data)
        if "error" in obj:
            ans.error = f"error event: {obj['error'].get('message')}"
            continue
        if obj.get("usage"):
            u = obj["usage"]
            ans.prompt_tokens, ans.completion_tokens = u["prompt_tokens"], u["completion_tokens"]
            ans.cached_tokens = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        for choice in obj.get("choices", []):
            text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if text:
                ans.chunk_times.append(t)
                pieces.append(text)
            if choice.get("finish_reason") is not None:
                ans.finish = t
    ans.text = "".join(pieces)
    if ans.error is None and ans.done is None:
        ans.error = "the stream ended without data: [DONE]"
    return ans


# ---- numbers ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(
    sent: Sequence[float], ends: Sequence[float], ttfts: Sequence[float], gaps: Sequence[float], tokens: int
) -> dict:
    """Aggregate tokens/s over the wall time from the first send to the last end, and latencies in ms."""
    wall = max(ends) - min(sent) if ends and sent else float("nan")
    ms = lambda v: None if v is None else 1000 * v
    return {
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall if wall > 0 else float("nan"),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p95_ms": ms(percentile(ttfts, 95)),
        "itl_p50_ms": ms(percentile(gaps, 50)),
        "itl_p95_ms": ms(percentile(gaps, 95)),
    }


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` so far, from ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy so far (``/proc/stat``: all but idle and iowait)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cell(v: float | None, spec: str) -> str:
    return "-" if v is None or v != v else format(v, spec)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.0f}%"


# ---- prompts ---------------------------------------------------------------------------------------


def stdlib_text(min_chars: int) -> str:
    """At least ``min_chars`` characters of Python standard library source: the top-level modules in
    name order (the same text on every run of one Python version)."""
    parts, n = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        n += len(text)
        if n >= min_chars:
            break
    return "".join(parts)


def text_pieces(tokenizer, count: int, tokens: int, start: int = 0) -> list[str]:
    """``count`` consecutive, distinct pieces of stdlib source of ``tokens`` tokens each, cut from one
    encoding from token ``start`` on (re-encoded on their own they come out about as long)."""
    need = start + count * tokens
    text = stdlib_text(need * 6)
    ids = tokenizer.encode(text)
    while len(ids) < need:  # dense text: read more
        more = stdlib_text(len(text) * 2)
        if len(more) <= len(text):
            raise RuntimeError(f"the standard library's top-level modules hold fewer than {need} tokens")
        text, ids = more, tokenizer.encode(more)
    return [tokenizer.decode(ids[start + i * tokens : start + (i + 1) * tokens]) for i in range(count)]


@dataclass
class Prompts:
    """Every prompt of one model's runs, each used once per server (with the cache on, a prompt sent
    twice would be served from the cache the second time): ``warm`` for the warm-ups, ``runs[n][r]``
    the ``n`` prompts of repeat ``r`` of the ``n``-client run, and the conversation's user messages."""

    warm: list[str]
    runs: dict[int, list[list[str]]]
    turns: list[str]

    @classmethod
    def build(cls, tokenizer, args: argparse.Namespace) -> Prompts:
        count = WARM_PROMPTS + sum(args.clients) * args.repeats
        pieces = text_pieces(tokenizer, count, args.prompt_tokens)
        warm, rest = pieces[:WARM_PROMPTS], iter(pieces[WARM_PROMPTS:])
        runs = {n: [[next(rest) for _ in range(n)] for _ in range(args.repeats)] for n in args.clients}
        turns = text_pieces(tokenizer, args.turns, args.turn_tokens, start=count * args.prompt_tokens)
        return cls(warm, runs, turns)


# ---- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _get_json(port: int, path: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def server(spec: dict, args: argparse.Namespace, max_batch: int, cache_mb: float | None) -> Iterator[tuple]:
    """A running ``rwkvkit serve`` process; yields ``(port, pid)``. Stopped with SIGINT on exit (a
    kill if it does not stop within 60 s), whatever happened."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "rwkvkit.cli.main", "serve", "--model", spec["model"],
        "--model-id", spec["id"], "--port", str(port), "--log-level", "warning", "--fast", args.fast,
        "--chat-format", spec["chat_format"], "--max-batch", str(max_batch), "--max-queue", str(max_batch),
    ]  # fmt: skip
    if spec["tokenizer"]:
        cmd += ["--tokenizer", spec["tokenizer"]]
    if cache_mb is not None:
        cmd += ["--cache-mb", f"{cache_mb:g}"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def tail() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode}:\n{tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /health within 600 s:\n{tail()}")
            with contextlib.suppress(OSError, ValueError):
                if _get_json(port, "/health", timeout=1).get("status") == "ok":
                    break
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                print("the server did not stop within 60 s of SIGINT: killed", flush=True)
                proc.kill()
                proc.wait()
        text = tail()
        if "Traceback" in text or "ERROR" in text:  # the server logged a failure: show it, go on
            print(f"the server's log (exit status {proc.returncode}) has errors:\n{text}", flush=True)
        log.close()


def completion_body(model_id: str, prompt: str, max_tokens: int) -> dict:
    return {
        "model": model_id,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def concurrent(port: int, pid: int, model_id: str, prompts: list[str], max_tokens: int) -> dict:
    """All ``prompts`` streamed at once, one connection each; the summary of the run."""
    bodies = [completion_body(model_id, p, max_tokens) for p in prompts]
    busy, cpu_server, cpu_client = _busy_cpu_s(), _proc_cpu_s(pid), time.process_time()
    t0 = time.perf_counter()
    streams = await asyncio.gather(*(post_stream(port, "/v1/completions", b) for b in bodies))
    wall = time.perf_counter() - t0
    cpu_server, cpu_client = _proc_cpu_s(pid) - cpu_server, time.process_time() - cpu_client
    busy = _busy_cpu_s() - busy
    answers = [parse_stream(s) for s in streams]
    ok = [a for a in answers if a.error is None]
    res = summarize(
        [a.sent for a in ok],
        [a.done for a in ok],
        [a.ttft for a in ok if a.ttft is not None],
        [g for a in ok for g in a.gaps],
        sum(a.completion_tokens for a in ok),
    )
    res.update(
        clients=len(prompts),
        errors=[a.error for a in answers if a.error is not None],
        prompt_tokens=sum(a.prompt_tokens for a in ok) / max(1, len(ok)),
        server_cpu=cpu_server / wall,
        client_cpu=cpu_client / wall,
        other_cpu=max(0.0, busy - cpu_server - cpu_client) / wall,
    )
    return res


async def warm_up(port: int, model_id: str, prompts: list[str]) -> None:
    """A first request (kernels are compiled or loaded, the allocator grows), then the others at once."""
    first = parse_stream(await post_stream(port, "/v1/completions", completion_body(model_id, prompts[0], 8)))
    if first.error:
        raise RuntimeError(f"the warm-up request failed: {first.error}")
    await asyncio.gather(
        *(post_stream(port, "/v1/completions", completion_body(model_id, p, 4)) for p in prompts[1:])
    )


async def conversation(port: int, model_id: str, chunks: list[str], max_tokens: int) -> list[dict]:
    """A system message and one user turn per chunk, each turn sending the whole conversation so far
    (with the answers as the server returned them); per turn its usage and times."""
    messages = [{"role": "system", "content": SYSTEM}]
    turns = []
    for chunk in chunks:
        messages.append({"role": "user", "content": chunk})
        body = {
            "model": model_id,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        a = parse_stream(await post_stream(port, "/v1/chat/completions", body))
        if a.error:
            raise RuntimeError(f"turn {len(turns) + 1} of the conversation failed: {a.error}")
        # An empty answer has no text chunk: its first token is then taken as the finish chunk.
        first = a.chunk_times[0] if a.chunk_times else a.finish
        turns.append(
            {
                "prompt_tokens": a.prompt_tokens,
                "cached_tokens": a.cached_tokens,
                "completion_tokens": a.completion_tokens,
                "ttft_ms": 1000 * (first - a.sent),
                "total_ms": 1000 * (a.done - a.sent),
                "empty_answer": not a.chunk_times,
            }
        )
        messages.append({"role": "assistant", "content": a.text})
    return turns


# ---- in-process ------------------------------------------------------------------------------------


def load_model(spec: dict, fast: str):
    """The model and tokenizer as ``rwkvkit serve`` loads them (its ``--fast``, ``--tokenizer``)."""
    import rwkvkit
    from rwkvkit.cli.generate import pick_tokenizer

    if fast in ("auto", "off"):
        model = rwkvkit.load(spec["model"])
    else:
        model = rwkvkit.load(spec["model"], weights=fast)
    model.eval()
    return model, pick_tokenizer(spec["tokenizer"], model.config.vocab_size, spec["model"])


def engine_run(model, tokenizer, prompts: list[str], max_tokens: int, max_batch: int) -> dict:
    """The prompts added at once to one BatchEngine and stepped until all are done; timed like a run of
    the server (a text piece arrives when the step that produced it returns)."""
    import torch

    from rwkvkit.generation import BatchEngine

    engine = BatchEngine(model, tokenizer, max_batch=max_batch)
    busy, cpu, t0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
    with torch.inference_mode():
        ids = [engine.add(p, max_tokens, temperature=0, return_state=False) for p in prompts]
        times: dict[int, list[float]] = {i: [] for i in ids}
        while engine.has_work:
            events = engine.step()
            now = time.perf_counter()
            for e in events:
                if e.text:
                    times[e.request_id].append(now)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    busy = _busy_cpu_s() - busy
    tokens = sum(len(engine.pop_result(i).tokens) for i in ids)
    ends = [t[-1] for t in times.values() if t]
    res = summarize(
        [t0],
        ends or [t0 + wall],
        [t[0] - t0 for t in times.values() if t],
        [b - a for t in times.values() for a, b in zip(t, t[1:])],
        tokens,
    )
    res.update(
        clients=len(prompts),
        errors=[],
        server_cpu=cpu / wall,
        client_cpu=None,
        other_cpu=max(0.0, busy - cpu) / wall,
    )
    return res


def in_process(model, tokenizer, prompts: Prompts, args, max_batch: int) -> dict[str, dict[int, dict]]:
    """The runs in this process's main thread and in one long-lived thread of its own, as ``rwkvkit
    serve`` runs its engine (grad mode off): ``{run name: {clients: summary}}``."""
    import torch

    runs: dict[str, dict[int, dict]] = {IN_PROCESS: {}, IN_THREAD: {}}
    with ThreadPoolExecutor(1, thread_name_prefix="engine") as pool:
        pool.submit(torch.set_grad_enabled, False).result()
        for name in runs:
            call = (
                (lambda f, *a: f(*a)) if name == IN_PROCESS else (lambda f, *a: pool.submit(f, *a).result())
            )
            call(engine_run, model, tokenizer, prompts.warm[:1], 8, max_batch)  # warm-up, as the server's
            call(engine_run, model, tokenizer, prompts.warm[1:], 4, max_batch)
            for n in args.clients:
                runs[name][n] = best_of(
                    lambda r, n=n, call=call: call(
                        engine_run, model, tokenizer, prompts.runs[n][r], args.max_tokens, max_batch
                    ),
                    args.repeats,
                )
    return runs


def best_of(run, repeats: int) -> dict:
    """``run(r)`` for every repeat ``r``; the run with the highest tokens/s (all of them in ``all_tok_s``)."""
    runs = [run(r) for r in range(repeats)]
    best = max(runs, key=lambda r: r["tok_s"] if r["tok_s"] == r["tok_s"] else -1)
    return dict(best, all_tok_s=[r["tok_s"] for r in runs])


# ---- the report ------------------------------------------------------------------------------------


class Report:
    """Lines printed and written to the results file as they come (a long run leaves partial results)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
        self.lines.extend(lines)
        self.path.write_text("\n".join(self.lines) + "\n")


def concurrency_table(runs: dict[str, dict[int, dict]]) -> list[str]:
    """Throughput per client count: every run's tokens/s, and its ratio to the first run's (in-process)."""
    names = list(runs)
    ref = runs[names[0]]
    head = f"| clients | prompt tok | tokens | {names[0]} tok/s |"
    rule = "|---:|---:|---:|---:|"
    for name in names[1:]:
        head += f" {name} tok/s | / {names[0]} |"
        rule += "---:|---:|"
    lines = [head, rule]
    for n, r0 in ref.items():
        # the prompt lengths come from the server's usage
        prompt = next(
            (runs[m][n]["prompt_tokens"] for m in names if "prompt_tokens" in runs[m].get(n, {})), None
        )
        line = f"| {n} | {_cell(prompt, '.0f')} | {r0['tokens']} | {r0['tok_s']:.1f} |"
        for name in names[1:]:
            r = runs[name].get(n)
            line += f" {_cell(r and r['tok_s'], '.1f')} | {_cell(r and r['tok_s'] / r0['tok_s'], '.2f')} |"
        lines.append(line)
    return lines


def latency_table(runs: dict[str, dict[int, dict]]) -> list[str]:
    lines = [
        "| clients | run | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | server CPU | client CPU | "
        "other CPU | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in next(iter(runs.values())):
        for name, by_n in runs.items():
            r = by_n.get(n)
            if r is None:
                continue
            lines.append(
                f"| {n} | {name} | {_cell(r['ttft_p50_ms'], '.0f')} | {_cell(r['ttft_p95_ms'], '.0f')} | "
                f"{_cell(r['itl_p50_ms'], '.1f')} | {_cell(r['itl_p95_ms'], '.1f')} | "
                f"{_pct(r['server_cpu'])} | {_pct(r['client_cpu'])} | {_pct(r['other_cpu'])} | "
                f"{len(r['errors'])} |"
            )
    return lines


def cache_table(on: list[dict], off: list[dict]) -> list[str]:
    lines = [
        "| turn | prompt tokens | cached tokens | TTFT cache on ms | TTFT cache off ms | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (a, b) in enumerate(zip(on, off), 1):
        prompt = str(a["prompt_tokens"])
        if b["prompt_tokens"] != a["prompt_tokens"]:  # the answers differed between the two runs
            prompt += f" (off: {b['prompt_tokens']})"
        mark = lambda t: "*" if t["empty_answer"] else ""
        lines.append(
            f"| {i} | {prompt} | {a['cached_tokens']} | {a['ttft_ms']:.0f}{mark(a)} | "
            f"{b['ttft_ms']:.0f}{mark(b)} | {b['ttft_ms'] / a['ttft_ms']:.2f}x |"
        )
    if any(t["empty_answer"] for t in on + off):
        lines.append("")
        lines.append("\\* an empty answer: the time to its finish chunk")
    return lines


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or "unknown"


def _git_commit() -> str:
    with contextlib.suppress(OSError):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    return "unknown"


def _load_line(when: str) -> tuple[str, float]:
    load = os.getloadavg()
    return f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)", load[0]


# ---- driver ----------------------------------------------------------------------------------------


def run_model(name: str, args: argparse.Namespace, report: Report, raw: dict) -> None:
    spec = dict(MODELS[name], id=name)
    if name == "random" and not RANDOM_CKPT.exists():
        import torch

        from rwkvkit.models.rwkv.config import RWKVConfig
        from rwkvkit.models.rwkv.init import random_checkpoint

        print(
            f"creating a random official-format checkpoint of the RWKV-7 0.1B shape at {RANDOM_CKPT}",
            flush=True,
        )
        random_checkpoint(RWKVConfig.from_name("rwkv7-0.1b"), RANDOM_CKPT, seed=0, dtype=torch.bfloat16)
    max_batch = max(64, *args.clients)
    shown = os.path.relpath(spec["model"], ROOT) if name == "random" else spec["model"]
    report.add(
        "",
        f"## {name}: `rwkvkit serve --model {shown} --chat-format {spec['chat_format']}"
        + (f" --tokenizer {spec['tokenizer']}" if spec["tokenizer"] else "")
        + f" --fast {args.fast} --max-batch {max_batch}`",
    )

    # In-process first, while no server runs; the prompts come from the same tokenizer.
    print(f"[{name}] in-process BatchEngine ...", flush=True)
    env = {"RWKVKIT_FAST": "0"} if args.fast == "off" else {}
    with mock.patch.dict(os.environ, env):
        model, tokenizer = load_model(spec, args.fast)
        prompts = Prompts.build(tokenizer, args)
        inproc = in_process(model, tokenizer, prompts, args, max_batch)
    del model
    gc.collect()

    served: dict[str, dict[int, dict]] = {}  # "cache on"/"cache off" -> clients -> summary
    turns: dict[str, list[dict]] = {}
    stats: dict[str, dict] = {}
    for label, cache_mb in (("cache on", None), ("cache off", 0.0)):
        print(f"[{name}] server, {label} ...", flush=True)
        with server(spec, args, max_batch, cache_mb) as (port, pid):
            asyncio.run(warm_up(port, name, prompts.warm))
            served[label] = {}
            for n in args.clients:
                r = best_of(
                    lambda r, n=n: asyncio.run(
                        concurrent(port, pid, name, prompts.runs[n][r], args.max_tokens)
                    ),
                    args.repeats,
                )
                served[label][n] = r
                ref = inproc[IN_PROCESS][n]["tok_s"]
                ttft = _cell(r["ttft_p50_ms"], ".0f")
                print(f"  {n:3} clients: {r['tok_s']:7.1f} tok/s (in-process {ref:.1f}), TTFT p50 {ttft} ms, "
                      f"errors {len(r['errors'])}", flush=True)  # fmt: skip
                if r["errors"]:
                    print(f"    first error: {r['errors'][0]}", flush=True)
            turns[label] = asyncio.run(conversation(port, name, prompts.turns, args.max_tokens))
            stats[label] = _get_json(port, "/v1/stats")
    runs = {**inproc, **{f"server {label}": by_n for label, by_n in served.items()}}
    report.add(
        "",
        f"### {name}: {args.max_tokens} tokens per request, greedy; best of {args.repeats} run(s) per row",
        "",
        *concurrency_table(runs),
        "",
        *latency_table(runs),
        "",
        "TTFT: request sent -> first text chunk; ITL: gaps between a request's text chunks; CPU: CPU time / "
        "wall time of the server process (in-process: this process), of the clients and of everything else "
        "on the machine (100% = one core).",
    )
    if any(r["errors"] for runs in served.values() for r in runs.values()):
        first = next(e for runs in served.values() for r in runs.values() for e in r["errors"])
        report.add("", f"errors: some requests failed; the first: {first}")
    report.add(
        "",
        f"### {name}: state cache, one conversation of {args.turns} turns ({args.turn_tokens}-token user "
        f"messages, answers of at most {args.max_tokens} tokens)",
        "",
        *cache_table(turns["cache on"], turns["cache off"]),
        "",
        f"cache after the run: {json.dumps(stats['cache on'].get('cache'))}",
    )
    raw[name] = {"in_process": inproc, "served": served, "conversation": turns, "stats": stats}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        help="default: the model shipped with rwkvkit (chat format plain); random: a random RWKV-7 "
        "0.1B-shape checkpoint at runs/bench/rwkv7-0.1b-random.pth, written if missing (chat format "
        "world); default both",
    )
    p.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1, 4, 16, 64],
        help="concurrent clients per run (default 1 4 16 64)",
    )
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)")
    p.add_argument(
        "--prompt-tokens", type=int, default=50, help="tokens of each client's prompt (default 50)"
    )
    p.add_argument("--turns", type=int, default=8, help="user turns of the cache conversation (default 8)")
    p.add_argument(
        "--turn-tokens",
        type=int,
        default=400,
        help="tokens of each user message of the conversation (default 400)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per client count; the best by tokens/s is reported (default 3)",
    )
    p.add_argument(
        "--fast",
        default="auto",
        choices=["auto", "off", "fp32", "bf16", "int8", "q4"],
        help="the CPU inference path, as 'rwkvkit serve --fast' (the in-process engine loads the same "
        "way; default auto)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: clients 1 4, 8 tokens, a conversation of 3 turns of 100 tokens, 1 run each",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default benchmarks/results/serve-<date>[-quick].md)",
    )
    args = p.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if min(args.clients) < 1 or args.max_tokens < 1 or args.turns < 1 or args.prompt_tokens < 1:
        p.error("--clients, --max-tokens, --prompt-tokens and --turns must be >= 1")
    date = datetime.date.today().isoformat()
    out = args.out or ROOT / "benchmarks" / "results" / f"serve-{date}{'-quick' if args.quick else ''}.md"

    import torch

    t_start = time.perf_counter()
    cpus = os.cpu_count() or 1
    before, load0 = _load_line("before")
    report = Report(out)
    report.add(
        f"# rwkvkit serve under load ({date})",
        "",
        f"Command: `python benchmarks/serve.py {' '.join(sys.argv[1:])}` (rwkvkit {_git_commit()}, torch "
        f"{torch.__version__}, Python {platform.python_version()}).",
        "",
        f"Machine: {cpu_model()}, {cpus} CPUs; torch threads {torch.get_num_threads()}; {before}.",
    )
    if load0 > cpus / 2:
        report.add(
            "",
            f"WARNING: the machine was busy before the start (load average {load0:.1f} on {cpus} CPUs): "
            "other work may share the CPUs during the measurements (see the other-CPU column)",
        )
    raw: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    for name in args.models:
        run_model(name, args, report, raw)
    after, _ = _load_line("after")
    report.add("", f"{after}; the whole run took {(time.perf_counter() - t_start) / 60:.1f} min.")
    other = [
        r["other_cpu"]
        for res in raw.values()
        if isinstance(res, dict) and "in_process" in res
        for runs in [*res["in_process"].values(), *res["served"].values()]
        for r in runs.values()
    ]
    if other and max(other) > OTHER_CPU_WARN:
        report.add(
            "",
            f"WARNING: other work shared the CPUs (up to {100 * max(other):.0f}% of a core on average during "
            "a measurement, besides this benchmark and its server): the speeds above are unreliable",
        )
    report.add("", "Raw results:", "", "```json", json.dumps(raw, indent=1), "```")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
