"""Chat formats: how a list of chat messages becomes the prompt an RWKV model continues.

Two formats, chosen per served model (``rwkvkit serve --chat-format``):

``world``: the RWKV World conversation format of the official chat demos::

    System: You are a helpful assistant.

    User: What is the capital of France?

    Assistant: Paris.

    User: And of Italy?

    Assistant:

The rendering lives in :mod:`rwkvkit.data.chat` (:func:`~rwkvkit.data.chat.world_segments`), which
``rwkvkit data prepare`` also uses for fine-tuning data, so a model is served the prompts it was
trained on. In short:

* every message is stripped, and runs of blank lines inside it become one newline (``\\n\\n``
  separates turns, so a message may not contain it, as in the official demo);
* the prompt ends with ``Assistant:`` and no space (the model writes the space); generation stops at
  ``\\n\\nUser:`` (the official stop), and the answer is returned without its leading space;
* roles: ``system`` (``developer`` is read as ``system``), ``user``, ``assistant``. A conversation that
  ends with an assistant message is continued: the answer extends that message. An assistant
  message that does not follow a user message is preceded by ``Assistant:`` (its own segment).

``plain``: no roles at all: the prompt is the messages' contents joined as they are, and the model
continues the text. This is the fallback for models that were not trained to chat, such as the model
shipped with rwkvkit (which writes Python).

Prompts are token ids built *segment by segment*: each turn is encoded on its own and the ids are
concatenated, as the official chat demo feeds each turn separately. A segment boundary is where the
model starts or stops generating (right after ``Assistant:``; right before ``User:``), so the ids of a
conversation's next turn begin with exactly the ids the server fed in the previous one (its prompt,
then the answer's tokens), and the state cache (:mod:`rwkvkit.serve.cache`) resumes from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rwkvkit.data.chat import Message, world_segments
from rwkvkit.errors import ConfigError

__all__ = ["CHAT_FORMATS", "ChatFormat", "Message", "chat_format"]


@dataclass(frozen=True)
class ChatFormat:
    """A chat format: turns messages into prompt segments and says where an answer stops.

    Attributes:
        name: ``"world"`` or ``"plain"``.
        stop: stop strings added to every chat request (the client's own come on top).
        strip_answer: the answer is returned without leading whitespace (World: the model writes a
            space after ``Assistant:``).
    """

    name: str
    stop: tuple[str, ...]
    strip_answer: bool

    def segments(self, messages: Sequence[Message]) -> list[str]:
        """The prompt as text segments, each to be encoded on its own (see the module docstring)."""
        if self.name == "plain":
            return [m.content for m in messages if m.content]
        return [seg.text for seg in world_segments(messages)]

    def prompt_ids(self, tokenizer: Any, messages: Sequence[Message]) -> list[int]:
        """The prompt's token ids: every segment encoded on its own, concatenated."""
        ids: list[int] = []
        for segment in self.segments(messages):
            ids.extend(tokenizer.encode(segment))
        return ids

    def prompt_text(self, messages: Sequence[Message]) -> str:
        """The prompt as one string (for display; the ids come from :meth:`prompt_ids`)."""
        return "".join(self.segments(messages))


CHAT_FORMATS = {
    "world": ChatFormat("world", stop=("\n\nUser:",), strip_answer=True),
    "plain": ChatFormat("plain", stop=(), strip_answer=False),
}


def chat_format(name: str) -> ChatFormat:
    """The chat format called ``name`` (``world`` or ``plain``)."""
    try:
        return CHAT_FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"unknown chat format {name!r}: use 'world' (RWKV World chat models) or 'plain' (continue text)"
        ) from None
