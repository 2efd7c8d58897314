"""Running the app with uvicorn, with a shutdown that ends every request cleanly.

On Ctrl-C or SIGTERM uvicorn stops accepting connections and waits for the running requests. After
``shutdown_timeout`` seconds :class:`GracefulServer` stops the engine: every request still running then
ends with an error (a 503 body, or an ``error`` event followed by ``data: [DONE]`` on a stream) instead of
a connection cut in the middle of a stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

__all__ = ["GracefulServer", "make_server"]


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
