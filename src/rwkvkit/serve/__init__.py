"""``rwkvkit serve``: an OpenAI-compatible HTTP server with continuous batching, a prefix-state cache
and a chat page.

* :func:`create_app` builds the ASGI app (:mod:`rwkvkit.serve.app`); ``rwkvkit serve`` runs it with
  uvicorn.
* :mod:`rwkvkit.serve.worker`: one :class:`~rwkvkit.generation.BatchEngine` in a background thread
  serves every request.
* :mod:`rwkvkit.serve.cache`: :class:`StateCache`, the states after served prompt prefixes (LRU,
  bounded in bytes), so a conversation's next turn prefills only its new tokens.
* :mod:`rwkvkit.serve.chat`: chat formats (RWKV World ``User:/Assistant:``, or plain text).
* :mod:`rwkvkit.serve.protocol`: request validation and the OpenAI response shapes.

Needs the ``serve`` extra: ``pip install 'rwkvkit[serve]'`` (starlette and uvicorn).
"""

from __future__ import annotations

from rwkvkit.serve.cache import StateCache
from rwkvkit.serve.chat import CHAT_FORMATS, ChatFormat, Message, chat_format
from rwkvkit.serve.protocol import Limits

__all__ = [
    "CHAT_FORMATS",
    "ChatFormat",
    "Limits",
    "Message",
    "ServerConfig",
    "StateCache",
    "chat_format",
    "create_app",
]


def __getattr__(name: str):
    # The app needs starlette; the cache and chat formats do not, so they import without the extra.
    if name in ("create_app", "ServerConfig", "ServedModel"):
        from rwkvkit.serve import app  # deferred: starlette is an optional dependency

        return getattr(app, name)
    raise AttributeError(f"module 'rwkvkit.serve' has no attribute {name!r}")
