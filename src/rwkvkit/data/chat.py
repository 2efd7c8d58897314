"""The RWKV World chat format, and chat examples read from JSON lines (supervised fine-tuning data).

The World format is that of the official chat demos::

    System: You are a helpful assistant.

    User: What is the capital of France?

    Assistant: Paris.

    User: And of Italy?

    Assistant:

* every message is stripped, and runs of blank lines inside it become one newline (``\\n\\n``
  separates turns, so a message may not contain it, as in the official demo);
* roles: ``system`` (``developer`` is read as ``system``), ``user``, ``assistant``;
* the text is cut into *segments*, each encoded on its own: ``System: ...\\n\\n``, ``User: ...\\n\\n``
  followed by the cue ``Assistant:`` when the assistant answers next, and each answer `` ...\\n\\n``
  (the space the model writes after ``Assistant:``, then the turn separator). An answer that does
  not follow a user turn gets the cue as a segment of its own.

:func:`world_segments` renders both a prompt the server continues (``complete=False``: the prompt
ends with ``Assistant:``, and a last assistant message is left open, without its separator) and a
finished conversation to train on (``complete=True``: every answer ends with ``\\n\\n``). The server
(:mod:`rwkvkit.serve.chat`) and :func:`rwkvkit.data.prepare` both use it, so a model fine-tuned on
prepared data sees exactly the prompts it is served.

:func:`parse_example` reads one JSON object in one of the accepted shapes::

    {"prompt": "...", "answer": "..."}
    {"question": "...", "answer": "..."}
    {"instruction": "...", "input": "...", "output": "..."}     # "input" optional: user text is
                                                                # instruction + "\\n" + input
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rwkvkit.data.binidx import DataError

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
# (prompt field, answer field) of the accepted pair shapes
PAIRS = (("prompt", "answer"), ("instruction", "output"), ("question", "answer"))
# any of these keys marks a JSON line as a chat example (``jsonl_format="auto"``)
CHAT_KEYS = ("messages", "prompt", "instruction", "question", "answer", "output")


@dataclass(frozen=True)
class Message:
    """One chat message: ``role`` is system, user or assistant; ``content`` its text."""

    role: str
    content: str


class Segment(NamedTuple):
    """A piece of rendered chat, encoded on its own: ``answer`` is True for an assistant turn."""

    text: str
    answer: bool


def clean_message(text: str) -> str:
    """A World-format message: stripped, with no blank line inside (``\\n\\n`` separates turns)."""
    return re.sub(r"\n\s*\n+", "\n", text.strip().replace("\r\n", "\n"))


def world_segments(messages: Sequence[Message], *, complete: bool = False) -> list[Segment]:
    """``messages`` in the World format, as segments to encode one by one (see the module docstring).

    ``complete=False``: a prompt for the model to continue (ends with ``Assistant:``; a conversation
    that ends with an assistant message is continued, so that message has no separator).
    ``complete=True``: a finished conversation to train on (every answer ends with ``\\n\\n``; no
    cue after a last system or user message). Raises KeyError for a role outside :data:`ROLES`.
    """
    labels = [ROLES[m.role] for m in messages]
    out: list[Segment] = []
    for i, (m, label) in enumerate(zip(messages, labels)):
        content = clean_message(m.content)
        last = i == len(messages) - 1
        if label == "Assistant":
            if i == 0 or labels[i - 1] != "User":  # the cue is otherwise the end of the user's turn
                out.append(Segment("Assistant:", False))
            # What the model wrote after "Assistant:", then the turn separator.
            out.append(Segment(f" {content}" if last and not complete else f" {content}\n\n", True))
        elif label == "User":
            # The user's turn and the cue for the answer; a following assistant message is its answer.
            nxt = labels[i + 1] if not last else (None if complete else "Assistant")
            out.append(
                Segment(
                    f"User: {content}\n\nAssistant:" if nxt == "Assistant" else f"User: {content}\n\n", False
                )
            )
        else:
            out.append(Segment(f"System: {content}\n\n", False))
    if labels and labels[-1] == "System" and not complete:
        out.append(Segment("Assistant:", False))
    return out


def _string(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}{key!r} must be a string, not {type(value).__name__}")
    return value


def parse_example(obj: dict[str, Any]) -> list[Message]:
    """The messages of one chat example (a JSON object of a shape of the module docstring).

    Raises DataError (one line, without the file and line, which the caller adds) for missing fields,
    wrong types, an unknown role, an empty answer, or a messages list without an assistant message.
    """
    if "messages" in obj:
        mixed = [k for k in CHAT_KEYS if k in obj and k != "messages"]
        if mixed:
            raise DataError(f"has both 'messages' and {mixed[0]!r}: give one example shape per line")
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise DataError("'messages' must be a non-empty list of {role, content} objects")
        messages = []
        for j, m in enumerate(raw):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"messages[{j}] must be an object with 'role' and 'content'")
            role = m["role"]
            if role not in ROLES:
                raise DataError(f"messages[{j}].role must be 'system', 'user' or 'assistant', not {role!r}")
            content = _string(m, "content", f"messages[{j}].")
            if ROLES[role] == "Assistant" and not clean_message(content):
                raise DataError(f"messages[{j}] is an empty assistant message (nothing to learn)")
            messages.append(Message(role, content))
        if not any(ROLES[m.role] == "Assistant" for m in messages):
            raise DataError("'messages' has no assistant message (nothing to learn)")
        return messages
    prompts = [(p, a) for p, a in PAIRS if p in obj]
    if not prompts:
        present = next((k for k in CHAT_KEYS if k in obj), None)
        raise DataError(
            (f"{present!r} without its prompt: " if present else "")
            + "expected 'prompt' and 'answer', 'instruction' and 'output', 'question' and 'answer', "
            "or 'messages'"
        )
    if len(prompts) > 1:
        raise DataError(f"has both {prompts[0][0]!r} and {prompts[1][0]!r}: give one example shape per line")
    pk, ak = prompts[0]
    if ak not in obj:
        raise DataError(f"{pk!r} needs an {ak!r} field (the answer)")
    prompt, answer = _string(obj, pk), _string(obj, ak)
    if pk == "instruction" and "input" in obj and _string(obj, "input").strip():
        prompt = prompt + "\n" + obj["input"]
    if not clean_message(answer):
        raise DataError(f"empty {ak!r} (nothing to learn)")
    return [Message("user", prompt), Message("assistant", answer)]


__all__ = [
    "CHAT_KEYS",
    "PAIRS",
    "ROLES",
    "Message",
    "Segment",
    "clean_message",
    "parse_example",
    "world_segments",
]
