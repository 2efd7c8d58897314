"""``rwkvkit serve`` as a user starts it: the command line, then the official openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rwkvkit.cli.main import build_parser, main
from tests.serve.helpers import request

pytest.importorskip("uvicorn", reason="rwkvkit serve needs the serve extra (starlette, uvicorn)")


def test_every_option_has_help():
    sub = build_parser()._subparsers._group_actions[0].choices["serve"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--state", "nameonly"], "NAME=PATH"),
        (["--state", "a:b=x.state"], "may not contain"),
        (["--max-batch", "0"], "--max-batch must be"),
        (["--default-max-tokens", "9000"], "--default-max-tokens is larger"),
        (["--port", "70000"], "--port must be"),
    ],
)
def test_bad_options_fail_clearly(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_with_openai_client(tmp_path):
    """The README's way: `rwkvkit serve`, then the openai client streams a chat completion. Ctrl-C
    (SIGINT) stops the server cleanly (exit status 0)."""
    openai = pytest.importorskip("openai")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rwkvkit.cli.main", "serve", "--port", str(port), "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if request(base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, open(tmp_path / "serve.log").read()
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        pieces = []
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "def fibonacci(n):"}],
            max_tokens=20,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        assert "".join(pieces).strip()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        log.seek(0)
        text = log.read()
    assert code == 0, text
    assert "model ids default; chat format plain" in text


def test_port_in_use_is_a_clear_error(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--log-level", "error"]) == 2
    assert f"could not listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serving_on_this_thread_leaves_grad_mode_alone():
    """rwkvkit serve runs its engine on the calling thread: afterwards autograd works as before."""
    import torch

    assert torch.is_grad_enabled()
    with socket.socket() as taken:  # a port in use: the engine loop starts and ends at once
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        main(["serve", "--port", str(taken.getsockname()[1]), "--log-level", "error"])
    assert torch.is_grad_enabled()
