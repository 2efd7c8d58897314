"""Running the app with uvicorn, with a shutdown that ends every request cleanly.

On Ctrl-C or SIGTERM uvicorn stops accepting connections and waits for the running requests. After
``shutdown_timeout`` seconds :class:`GracefulServer` stops the engine: every request still running then
ends with an error (a 503 body, or an ``error`` event followed by ``data: [DONE]`` on a stream) instead of
a connection cut in the middle of a stream.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import uvicorn

__all__ = ["GracefulServer", "make_server", "serve_on_main_thread"]


class GracefulServer(uvicorn.Server):
    """A uvicorn server that, ``grace`` seconds into a shutdown, cancels the engine's requests."""

    def __init__(self, config: uvicorn.Config, grace: float) -> None:
        super().__init__(config)
        self.grace = grace

    async def shutdown(self, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        worker = self.config.app.state.server.worker  # the app built by create_app

        def stop_engine() -> None:
            loop.run_in_executor(None, worker.stop)

        timer = loop.call_later(self.grace, stop_engine)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def make_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    shutdown_timeout: float = 10.0,
) -> GracefulServer:
    """A :class:`GracefulServer` for ``app`` (from :func:`rwkvkit.serve.create_app`); call ``.run()``."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        # uvicorn's own hard limit comes after ours: by then every request has ended
        timeout_graceful_shutdown=shutdown_timeout + 5.0,
    )
    return GracefulServer(config, grace=shutdown_timeout)


def serve_on_main_thread(server: GracefulServer) -> bool:
    """Run ``server`` (its app built with ``engine_thread=False``): uvicorn's event loop in a thread,
    the engine on the calling (main) thread, where the model was loaded (see
    :meth:`rwkvkit.serve.worker.EngineWorker.run`). Ctrl-C / SIGTERM start the graceful shutdown; a
    second Ctrl-C forces it. Returns False if the server could not start (e.g. the port is taken)."""
    worker = server.config.app.state.server.worker
    worker.open()

    def http() -> None:
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; it has logged why, and we report it
            pass
        finally:
            worker.stop()  # also when uvicorn could not start: run() below returns

    thread = threading.Thread(target=http, name="rwkvkit-http", daemon=True)
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        thread.start()
        worker.run()
        thread.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.started
