"""Chat formats and the prefix-state cache, without a server."""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.errors import ConfigError
from rwkvkit.serve.cache import StateCache, state_nbytes
from rwkvkit.serve.chat import CHAT_FORMATS, Message, chat_format

WORLD, PLAIN = CHAT_FORMATS["world"], CHAT_FORMATS["plain"]


def test_world_format_text():
    msgs = [
        Message("system", "  Be brief.  "),
        Message("user", "Hi!\n\n\nHow are you?"),
        Message("assistant", "Fine."),
        Message("user", "Good."),
    ]
    assert WORLD.prompt_text(msgs) == (
        "System: Be brief.\n\nUser: Hi!\nHow are you?\n\nAssistant: Fine.\n\nUser: Good.\n\nAssistant:"
    )
    assert WORLD.stop == ("\n\nUser:",) and WORLD.strip_answer
    # a conversation ending with the assistant is continued (no turn separator after it)
    assert (
        WORLD.prompt_text([Message("user", "Hi"), Message("assistant", "Hel")])
        == "User: Hi\n\nAssistant: Hel"
    )
    assert WORLD.prompt_text([Message("system", "S")]) == "System: S\n\nAssistant:"


def test_world_format_next_turn_extends_the_fed_ids():
    """The ids of turn 2 begin with turn 1's prompt ids followed by what the model fed while answering
    (" Fine." then "\\n\\nUser:" up to the stop): that is what makes the state cache hit."""
    tok = rwkvkit.load_tokenizer("world")
    turn1 = [Message("user", "Hi")]
    ids1 = WORLD.prompt_ids(tok, turn1)
    fed = ids1 + tok.encode(" Fine.\n\nUser:")  # the answer as the model would write it, with the stop
    ids2 = WORLD.prompt_ids(tok, [*turn1, Message("assistant", "Fine."), Message("user", "Good.")])
    assert ids2[: len(fed)] == fed
    assert tok.decode(ids2) == "User: Hi\n\nAssistant: Fine.\n\nUser: Good.\n\nAssistant:"


def test_world_format_is_the_training_format():
    """The server renders with rwkvkit.data.chat, as `rwkvkit data prepare` does for fine-tuning data:
    a served prompt is the start of the training document of the same conversation, up to the answer."""
    from rwkvkit.data.chat import Message as DataMessage
    from rwkvkit.data.chat import world_segments

    assert Message is DataMessage
    tok = rwkvkit.load_tokenizer("world")
    history = [Message("system", "S"), Message("user", "Hi\n\n\nthere"), Message("assistant", "Yo.")]
    for n in (2, 3):  # a fresh answer; the continuation of a started one
        msgs = history[:n]
        assert WORLD.segments(msgs) == [seg.text for seg in world_segments(msgs)]
        trained = [i for seg in world_segments(history, complete=True) for i in tok.encode(seg.text)]
        prompt = WORLD.prompt_ids(tok, msgs)
        assert trained[: len(prompt)] == prompt
    # an answer that follows no user message is cued with "Assistant:" of its own
    assert WORLD.segments([Message("system", "S"), Message("assistant", "Hel")]) == [
        "System: S\n\n",
        "Assistant:",
        " Hel",
    ]
    assert WORLD.prompt_text(
        [Message("user", "a"), Message("assistant", "b"), Message("assistant", "c")]
    ) == ("User: a\n\nAssistant: b\n\nAssistant: c")


def test_plain_format_joins_contents():
    msgs = [
        Message("system", "# header\n"),
        Message("user", "def f(x):"),
        Message("assistant", "\n    return"),
    ]
    assert PLAIN.prompt_text(msgs) == "# header\ndef f(x):\n    return"
    assert PLAIN.stop == () and not PLAIN.strip_answer
    with pytest.raises(ConfigError, match="unknown chat format"):
        chat_format("chatml")


def make_state(value: float, layers: int = 2):
    tensors = {"att_shift": torch.full((layers, 1, 8), value), "wkv": torch.full((layers, 1, 2, 4, 4), value)}
    return rwkvkit.State(tensors, "7")


def test_cache_longest_prefix_and_namespaces():
    cache = StateCache(1 << 20)
    logits = torch.arange(5.0)
    assert cache.put("m", [1, 2], make_state(1.0), logits)
    assert cache.put("m", [1, 2, 3, 4], make_state(2.0), logits + 1)
    assert cache.put("m:s", [1, 2, 3], make_state(3.0), logits)
    hit = cache.get("m", [1, 2, 3, 4, 5])
    assert hit.length == 4 and hit.state["wkv"].flatten()[0] == 2.0 and hit.logits[0] == 1.0
    assert cache.get("m", [1, 2, 3]).length == 2
    assert cache.get("m", [1, 9]) is None and cache.get("m", [2, 1, 2]) is None
    assert cache.get("m:s", [1, 2, 3, 4]).length == 3  # other namespace, other states
    assert cache.get("other", [1, 2, 3]) is None
    # the hit is a copy: changing it leaves the cache alone
    hit.state["wkv"].zero_()
    assert cache.get("m", [1, 2, 3, 4]).state["wkv"].flatten()[0] == 2.0
    stats = cache.stats()
    assert stats["hits"] == 4 and stats["misses"] == 3 and stats["entries"] == 3


def test_cache_is_bounded_in_bytes_and_lru():
    one = state_nbytes(make_state(0.0), torch.zeros(5))
    cache = StateCache(3 * one)
    for i in range(3):
        cache.put("m", [i], make_state(float(i)), torch.zeros(5))
    assert len(cache) == 3 and cache.nbytes == 3 * one
    assert cache.get("m", [0]) is not None  # 0 is now the most recently used
    cache.put("m", [3], make_state(3.0), torch.zeros(5))
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    assert cache.get("m", [1]) is None  # the least recently used went first
    assert cache.get("m", [0]) is not None and cache.get("m", [3]) is not None
    # an entry larger than the whole cache is not kept; a disabled cache keeps nothing
    assert not StateCache(one // 2).put("m", [1], make_state(0.0), torch.zeros(5))
    off = StateCache(0)
    assert not off.put("m", [1], make_state(0.0), torch.zeros(5)) and off.get("m", [1]) is None
    with pytest.raises(ValueError):
        StateCache(-1)
