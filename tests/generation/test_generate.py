"""Tests of rwkvkit.generation.generate on fake models, against the official ``rwkv`` PIPELINE.generate."""

from __future__ import annotations

import codecs
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import rwkvkit
from rwkvkit.errors import ConfigError, RWKVKitError, TokenizerError
from rwkvkit.generation import Generation, TokenStream, generate, generate_tokens, sampling_probs

# ---------------------------------------------------------------------------------------------
# fakes


class FakeBytes:
    """Byte-level tokenizer: ids 0..255 are bytes, ids 256.. are a few multi-byte tokens.

    The extra tokens exercise the official whitespace/digit substring rule ("12" and " \\t" weigh 0,
    "21" weighs 1). The class name must not contain "Tokenizer": the official PIPELINE.encode calls
    ``.encode(x).ids`` on any object whose type name contains it.
    """

    EXTRA = [b"12", b" \t", b"21", b"ab", "é".encode()]

    def __init__(self, eos_id: int | None = None) -> None:
        self.vocab_size = 256 + len(self.EXTRA)
        self.eos_id = eos_id

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else self.EXTRA[token - 256]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> _ByteStream:
        return _ByteStream(self)


class _ByteStream:
    def __init__(self, tok: FakeBytes) -> None:
        self._tok = tok
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self._tok.token_bytes(token_id))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class NoStreamBytes(FakeBytes):
    """A tokenizer without stream_decoder(): generate falls back to decoding pending tokens."""

    stream_decoder = None  # type: ignore[assignment]


class FakeState:
    def __init__(self, h: torch.Tensor, n: int) -> None:
        self.h = h  # [B, D]
        self.n = n  # tokens consumed so far


class FakeRNN(nn.Module):
    """Small deterministic recurrent LM: h_t = tanh(E[x_t] + h_{t-1} W); logits = h_t U + bias.

    Tokens are processed one at a time whatever the chunk length, so chunked and one-shot prefill are
    bitwise identical. ``favored`` ids get a logit bonus so that greedy decoding keeps returning to
    them and the penalties decide between them; ``valid_utf8`` keeps the bytes 0x80-0xFF from being
    generated. Records the chunk lengths and whether every call ran
    under inference mode.
    """

    def __init__(
        self,
        vocab: int,
        dim: int = 16,
        seed: int = 0,
        favored: tuple[int, ...] = (),
        bonus: float = 4.0,
        valid_utf8: bool = False,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.w = nn.Parameter(torch.randn(dim, dim, generator=g) / math.sqrt(dim))
        self.out = nn.Parameter(torch.randn(dim, vocab, generator=g))
        bias = torch.zeros(vocab)
        bias[list(favored)] = bonus
        if valid_utf8:
            bias[128:256] = -40.0  # no lone UTF-8 bytes: every generated text decodes cleanly
        self.register_buffer("bias", bias)
        self.config = SimpleNamespace(vocab_size=vocab)
        self.calls: list[int] = []
        self.inference_mode: list[bool] = []

    def forward(self, tokens: torch.Tensor, state: FakeState | None = None):
        assert tokens.dtype == torch.long and tokens.ndim == 2
        self.calls.append(tokens.shape[1])
        self.inference_mode.append(torch.is_inference_mode_enabled())
        batch, length = tokens.shape
        h = torch.zeros(batch, self.w.shape[0], device=tokens.device) if state is None else state.h
        n = 0 if state is None else state.n
        outs = []
        for t in range(length):
            h = torch.tanh(self.emb[tokens[:, t]] + h @ self.w)
            outs.append(h @ self.out + self.bias)
        return torch.stack(outs, dim=1), FakeState(h, n + length)


class ScriptModel(nn.Module):
    """Emits a fixed token script under greedy decoding: after consuming n tokens, the logits are
    one-hot (10 vs 0) on script[n - prompt_len] (then on '.' once the script is over)."""

    def __init__(self, script: list[int], prompt_len: int, vocab: int = 261) -> None:
        super().__init__()
        self.script, self.prompt_len = script, prompt_len
        self.config = SimpleNamespace(vocab_size=vocab)

    def forward(self, tokens: torch.Tensor, state: FakeState | None = None):
        n = 0 if state is None else state.n
        out = torch.zeros(1, tokens.shape[1], self.config.vocab_size)
        for t in range(tokens.shape[1]):
            i = n + t + 1 - self.prompt_len
            out[0, t, self.script[i] if 0 <= i < len(self.script) else ord(".")] = 10.0
        return out, FakeState(torch.zeros(1, 1), n + tokens.shape[1])


TOK = FakeBytes()
V = TOK.vocab_size
# Favor spaces, tabs, digits, digit runs (weight 0) and letters / "21" (weight 1).
FAVORED = (ord(" "), ord("\t"), ord("1"), ord("2"), ord("a"), ord("b"), 256, 257, 258, 259)


def script_model(text: str, prompt: str = "Q:") -> tuple[ScriptModel, str]:
    return ScriptModel(TOK.encode(text), len(TOK.encode(prompt))), prompt


# ---------------------------------------------------------------------------------------------
# (c) greedy generation with penalties equals the official PIPELINE.generate


rwkv_utils = pytest.importorskip("rwkv.utils")


class OfficialAdapter:
    """The official API: forward(list_of_ints, state) -> (1-D logits of the last token, state)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def forward(self, tokens: list[int], state):
        with torch.inference_mode():
            out, state = self.model(torch.tensor([tokens], dtype=torch.long), state=state)
        return out[0, -1].clone(), state


def official_generate(model: nn.Module, prompt: str, count: int, **args) -> tuple[list[int], str]:
    pipe = rwkv_utils.PIPELINE.__new__(rwkv_utils.PIPELINE)
    pipe.model, pipe.tokenizer = OfficialAdapter(model), TOK
    sampled: list[int] = []
    original = pipe.sample_logits

    def recording(*a, **k):
        token = original(*a, **k)
        sampled.append(token)
        return token

    pipe.sample_logits = recording
    text = pipe.generate(prompt, token_count=count, args=rwkv_utils.PIPELINE_ARGS(**args))
    return sampled, text


PARITY_CASES = [
    dict(alpha_presence=0.2, alpha_frequency=0.2, alpha_decay=0.996),  # official defaults
    dict(alpha_presence=0.5, alpha_frequency=0.5, alpha_decay=0.996),  # chat demo
    dict(alpha_presence=0.0, alpha_frequency=1.3, alpha_decay=0.9),
    dict(alpha_presence=0.1, alpha_frequency=0.9, alpha_decay=0.5),  # decay order matters a lot here
    dict(alpha_presence=1.1, alpha_frequency=0.0, alpha_decay=0.996),
    dict(alpha_presence=0.3, alpha_frequency=0.7, alpha_decay=1.0, token_ban=[ord("a"), 258]),
    dict(alpha_presence=0.4, alpha_frequency=0.4, alpha_decay=0.99, token_stop=[ord("b")]),
    dict(alpha_presence=0.2, alpha_frequency=0.6, alpha_decay=0.996, chunk_len=3),
    dict(alpha_presence=-0.2, alpha_frequency=-0.1, alpha_decay=0.95),  # negative: rewards repetition
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", range(len(PARITY_CASES)))
def test_greedy_with_penalties_matches_official(seed: int, case: int) -> None:
    args = PARITY_CASES[case]
    model = FakeRNN(V, seed=seed, favored=FAVORED, valid_utf8=True)
    prompt = "User: count 1 2 3\n\nBot:"
    count = 80
    expected, official_text = official_generate(model, prompt, count, temperature=0.0, **args)

    gen = generate(
        model,
        TOK,
        prompt,
        count,
        temperature=0.0,
        presence_penalty=args["alpha_presence"],
        frequency_penalty=args["alpha_frequency"],
        penalty_decay=args["alpha_decay"],
        banned_tokens=args.get("token_ban", ()),
        stop_tokens=args.get("token_stop", ()),
        chunk_len=args.get("chunk_len", 256),
        stream=True,
    )
    text = "".join(gen)
    if expected and expected[-1] in args.get("token_stop", ()):
        assert gen.stop_reason == "stop_token"
        assert gen.tokens == expected[:-1]
    else:
        assert gen.stop_reason == "length"
        assert gen.tokens == expected
    assert text == TOK.decode(gen.tokens) == official_text
    assert "\ufffd" not in text


def test_parity_cases_exercise_penalties_and_the_whitespace_rule() -> None:
    """Guard the parity test: penalties and the weight-0 rule must change the greedy output."""
    model = FakeRNN(V, seed=0, favored=FAVORED, valid_utf8=True)
    prompt = TOK.encode("User: count 1 2 3\n\nBot:")

    def run(presence: float, frequency: float, weight=None) -> list[int]:
        return list(
            generate_tokens(
                model,
                prompt,
                max_new_tokens=80,
                temperature=0.0,
                presence_penalty=presence,
                frequency_penalty=frequency,
                token_weight=weight,
            )
        )

    official_rule = lambda t: 0.0 if TOK.decode([t]) in " \t0123456789" else 1.0
    plain = run(0.0, 0.0)
    penalized = run(0.2, 0.6, official_rule)
    all_count = run(0.2, 0.6, lambda t: 1.0)
    assert penalized != plain
    assert penalized != all_count
    # Single whitespace/digit tokens, the multi-character weight-0 run " \t" and the weight-1
    # non-substring "21" are all generated.
    assert {ord("\t"), ord("1"), 257, 258} <= set(penalized)


def test_token_weight_uses_the_tokenizer_and_the_substring_rule() -> None:
    model = FakeRNN(V, seed=1, favored=FAVORED)
    gen = generate(
        model, TOK, "x", 60, temperature=0.0, presence_penalty=0.1, frequency_penalty=0.8, stream=True
    )
    list(gen)
    occurrence = gen._stream._sampler.occurrence  # white-box: the dense occurrence after the run
    seen = gen._stream._sampler.seen
    for token in set(gen.tokens):
        assert bool(seen[token])
        if TOK.decode([token]) in " \t0123456789":
            assert float(occurrence[token]) == 0.0
        else:
            assert float(occurrence[token]) > 0.0


# ---------------------------------------------------------------------------------------------
# (d) seeds


def test_seed_makes_sampling_reproducible() -> None:
    model = FakeRNN(V, seed=3)
    kwargs = dict(temperature=1.0, top_p=0.9, top_k=50, presence_penalty=0.3, frequency_penalty=0.3)
    first = generate(model, TOK, "hello", 40, seed=123, **kwargs)
    assert generate(model, TOK, "hello", 40, seed=123, **kwargs) == first
    outputs = {generate(model, TOK, "hello", 40, seed=s, **kwargs) for s in range(5)}
    assert len(outputs) > 1, "different seeds gave identical samples"
    # The seed does not touch torch's global RNG.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    generate(model, TOK, "hello", 10, seed=5)
    assert torch.equal(torch.rand(1), expected)


def test_published_call_forms() -> None:
    model = FakeRNN(V, seed=4)
    text = generate(
        model, TOK, "The Eiffel tower is in", max_new_tokens=16, temperature=1.0, top_p=0.85, seed=0
    )
    assert isinstance(text, str)
    pieces = generate(model, TOK, "The Eiffel tower is in", max_new_tokens=16, seed=0, stream=True)
    assert isinstance(pieces, Generation)
    assert "".join(pieces) == text
    assert rwkvkit.generate is generate


# ---------------------------------------------------------------------------------------------
# (e) stop strings and stop tokens


def test_stop_string_truncates_text() -> None:
    model, prompt = script_model("hello world, hello")
    gen = generate(model, TOK, prompt, 40, temperature=0.0, stop="world", stream=True)
    assert "".join(gen) == "hello "
    assert gen.stop_reason == "stop_string"
    # The tokens that completed the stop string were generated (and are in the state) but not returned.
    assert TOK.decode(gen.tokens) == "hello world"
    assert gen.state.n == len(TOK.encode(prompt)) + len(gen.tokens)


def test_earliest_stop_string_wins() -> None:
    model, prompt = script_model("hello world")
    assert generate(model, TOK, prompt, 40, temperature=0.0, stop=["wor", "lo"]) == "hel"
    assert generate(model, TOK, prompt, 40, temperature=0.0, stop=["xyz", "o w"]) == "hell"
    assert generate(model, TOK, prompt, 40, temperature=0.0, stop=["he"]) == ""


def test_stop_token_ends_generation_and_is_not_returned() -> None:
    model, prompt = script_model("hello world")
    gen = generate(model, TOK, prompt, 40, temperature=0.0, stop_tokens=[ord("w")], stream=True)
    assert "".join(gen) == "hello "
    assert gen.stop_reason == "stop_token"
    assert gen.tokens == TOK.encode("hello ")
    # The stop token is not fed to the model: the state has seen the prompt and "hello " only.
    assert gen.state.n == len(TOK.encode(prompt)) + 6


def test_eos_is_the_default_stop_token() -> None:
    model, prompt = script_model("hello world")
    tok = FakeBytes(eos_id=ord(" "))
    assert generate(model, tok, prompt, 40, temperature=0.0) == "hello"
    assert generate(model, tok, prompt, 11, temperature=0.0, stop_tokens=()) == "hello world"


def test_stream_holds_back_possible_stop_string_prefixes() -> None:
    model, prompt = script_model("hello world")
    pieces = list(generate(model, TOK, prompt, 11, temperature=0.0, stop="wox", stream=True))
    assert "".join(pieces) == "hello world"
    # 'w' and 'o' could start "wox": they are released only together with the 'r' that rules it out.
    assert "w" not in pieces and "wor" in pieces
    # A held prefix at the very end (max_new_tokens reached) is released.
    pieces = list(generate(model, TOK, prompt, 7, temperature=0.0, stop="wor", stream=True))
    assert "".join(pieces) == "hello w"
    assert pieces[-1] == "w"


def test_stop_strings_with_multibyte_characters() -> None:
    model, prompt = script_model("prix: 5 € net, é fin")
    assert generate(model, TOK, prompt, 60, temperature=0.0, stop="€ n") == "prix: 5 "
    pieces = list(generate(model, TOK, prompt, 60, temperature=0.0, stop="é f", stream=True))
    assert "".join(pieces) == "prix: 5 € net, "
    assert all("\ufffd" not in p for p in pieces)


def test_stream_never_yields_half_a_character() -> None:
    text = "naïve 漢字 🙂 ok"
    model, prompt = script_model(text)
    n = len(TOK.encode(text))
    for tok in (TOK, NoStreamBytes()):
        pieces = list(generate(model, tok, prompt, n, temperature=0.0, stream=True))
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)
        assert "🙂" in pieces  # 4 bytes, 4 tokens, one piece


# ---------------------------------------------------------------------------------------------
# (f) streaming pieces concatenate to the non-stream text


@pytest.mark.parametrize("seed", range(4))
def test_stream_equals_non_stream(seed: int) -> None:
    model = FakeRNN(V, seed=seed + 10)  # no favored tokens: random bytes, including invalid UTF-8
    kwargs = dict(temperature=1.2, top_p=0.95, presence_penalty=0.2, frequency_penalty=0.2, seed=seed)
    text = generate(model, TOK, "abc", 50, **kwargs)
    gen = generate(model, TOK, "abc", 50, stream=True, **kwargs)
    pieces = list(gen)
    assert "".join(pieces) == text == gen.text
    assert all(pieces)
    assert text == TOK.decode(gen.tokens)
    stopped = generate(model, TOK, "abc", 50, stop=[text[5:7]], **kwargs)
    assert "".join(generate(model, TOK, "abc", 50, stop=[text[5:7]], stream=True, **kwargs)) == stopped
    assert stopped == text[: text.find(text[5:7])]


# ---------------------------------------------------------------------------------------------
# (g) chunked prefill


def test_chunked_prefill_equals_one_shot() -> None:
    prompt = "The quick brown fox jumps over the lazy dog 0123456789"
    n = len(TOK.encode(prompt))
    ref_model = FakeRNN(V, seed=5, favored=FAVORED)
    with torch.inference_mode():
        one_shot_logits, one_shot_state = ref_model(torch.tensor([TOK.encode(prompt)]))
    results = []
    for chunk_len in (1, 5, n - 1, n, 256):
        model = FakeRNN(V, seed=5, favored=FAVORED)
        gen = generate(model, TOK, prompt, 0, chunk_len=chunk_len, stream=True)
        assert list(gen) == []
        assert torch.equal(gen.logits, one_shot_logits[0, -1])
        assert torch.equal(gen.state.h, one_shot_state.h)
        expected_calls = [chunk_len] * (n // chunk_len) + ([n % chunk_len] if n % chunk_len else [])
        assert model.calls == expected_calls
        text, state = generate(
            model, TOK, prompt, 30, chunk_len=chunk_len, seed=1, presence_penalty=0.3, return_state=True
        )
        results.append((text, state.h))
    for text, h in results[1:]:
        assert text == results[0][0]
        assert torch.equal(h, results[0][1])


def test_decoding_feeds_one_token_per_step_under_inference_mode() -> None:
    model = FakeRNN(V, seed=6)
    gen = generate(model, TOK, "x" * 10, 8, chunk_len=4, seed=0, stream=True)
    list(gen)
    # 3 prefill chunks, then one call per sampled token except the last (fed only if state is read).
    assert model.calls == [4, 4, 2] + [1] * 7
    _ = gen.state  # reading the state feeds the last token
    assert model.calls[-1] == 1 and len(model.calls) == 11
    assert all(model.inference_mode)
    generate(model, TOK, "abc", 5)
    assert all(model.inference_mode)


# ---------------------------------------------------------------------------------------------
# state handling


def test_state_continues_a_prompt() -> None:
    model = FakeRNN(V, seed=7)
    _, state = generate(model, TOK, "User: hi", 0, return_state=True)
    assert state.n == len("User: hi")
    expected = generate(model, TOK, "User: hi there", 20, temperature=0.0)
    assert generate(model, TOK, " there", 20, temperature=0.0, state=state) == expected
    # The state passed in is not consumed: it can seed another generation.
    assert generate(model, TOK, " there", 20, temperature=0.0, state=state) == expected
    assert state.n == len("User: hi")


def test_state_and_logits_continue_a_generation() -> None:
    model = FakeRNN(V, seed=8)
    whole = generate(model, TOK, "abc", 20, temperature=0.0)
    first = generate(model, TOK, "abc", 12, temperature=0.0, stream=True)
    head = "".join(first)
    assert first.state.n == 3 + 12  # the prompt and every generated token
    tail = generate(model, TOK, "", 8, temperature=0.0, state=first.state, logits=first.logits)
    assert head + tail == whole
    text, state = generate(model, TOK, "abc", 12, temperature=0.0, return_state=True)
    assert text == head and torch.equal(state.h, first.state.h)


def test_token_stream_api() -> None:
    model = FakeRNN(V, seed=9)
    stream = generate_tokens(model, TOK.encode("abc"), max_new_tokens=5, temperature=0.0)
    assert isinstance(stream, TokenStream)
    ids = list(stream)
    assert len(ids) == 5 and stream.tokens == ids and stream.stop_reason == "length"
    assert list(stream) == []  # exhausted
    assert ids == list(
        generate_tokens(model, torch.tensor([TOK.encode("abc")]), max_new_tokens=5, temperature=0)
    )


def test_with_the_rwkvkit_byte_tokenizer() -> None:
    tokenizer_module = pytest.importorskip("rwkvkit.tokenizer")
    if hasattr(tokenizer_module, "load_tokenizer"):
        tok = tokenizer_module.load_tokenizer("bytes")
    else:
        tok = pytest.importorskip("rwkvkit.tokenizer.byte_level").ByteTokenizer()
    # 6 extra logits the tokenizer cannot decode (its decode raises on them): generate must ban them.
    model = FakeRNN(int(tok.vocab_size) + 6, seed=11, favored=tuple(range(256, 262)), bonus=3.0)
    kwargs = dict(temperature=1.0, top_p=0.9, seed=0, presence_penalty=0.2, frequency_penalty=0.2)
    text = generate(model, tok, "héllo wörld", 60, **kwargs)
    gen = generate(model, tok, "héllo wörld", 60, stream=True, **kwargs)
    pieces = list(gen)
    assert "".join(pieces) == text == gen.text == tok.decode(gen.tokens)
    assert len(gen.tokens) == 60 and max(gen.tokens) < tok.vocab_size


# ---------------------------------------------------------------------------------------------
# (h) errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(max_new_tokens=True), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_k=-3), "top_k"),
        (dict(presence_penalty=math.inf), "presence_penalty"),
        (dict(frequency_penalty=math.nan), "frequency_penalty"),
        (dict(penalty_decay=1.5), "penalty_decay"),
        (dict(penalty_decay=-0.1), "penalty_decay"),
        (dict(banned_tokens=[V]), "banned_tokens"),
        (dict(banned_tokens=[-1]), "banned_tokens"),
        (dict(banned_tokens="a"), "banned_tokens"),
        (dict(banned_tokens=[1.0]), "banned_tokens"),
        (dict(banned_tokens=range(V)), "whole vocabulary"),
        (dict(stop_tokens=[V + 5]), "stop_tokens"),
        (dict(stop=[""]), "stop"),
        (dict(stop=["ok", 3]), "stop"),
        (dict(chunk_len=0), "chunk_len"),
        (dict(seed="x"), "seed"),
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt=b"abc"), "bytes"),
        (dict(prompt="", state=FakeState(torch.zeros(1, 16), 0)), "logits"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_options_raise_config_error(kwargs: dict, match: str, stream: bool) -> None:
    model = FakeRNN(V)
    call = dict(prompt="hello", max_new_tokens=4)
    call.update(kwargs)
    prompt = call.pop("prompt")
    with pytest.raises(ConfigError, match=match) as info:
        generate(model, TOK, prompt, stream=stream, **call)
    assert isinstance(info.value, RWKVKitError)
    assert model.calls == [], "options must be checked before any model call"


def test_prompt_ids_outside_the_vocabulary() -> None:
    with pytest.raises(TokenizerError, match="vocabulary"):
        generate(FakeRNN(100), TOK, "é", 4)  # 'é' is bytes 0xC3 0xA9 > 100
    with pytest.raises(TokenizerError, match="vocabulary"):
        generate_tokens(FakeRNN(100), [5, 100])


def test_empty_prompt_with_state_and_no_new_tokens_is_fine() -> None:
    model = FakeRNN(V)
    _, state = generate(model, TOK, "abc", 0, return_state=True)
    text, same = generate(model, TOK, "", 0, state=state, return_state=True)
    assert text == "" and same is state


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generate_on_cuda() -> None:
    model = FakeRNN(V, seed=2, favored=FAVORED, valid_utf8=True).cuda()
    kwargs = dict(temperature=0.8, top_p=0.9, top_k=40, presence_penalty=0.3, frequency_penalty=0.3, seed=7)
    gen = generate(model, TOK, "User: hi\n\nBot:", 40, banned_tokens=[0], stream=True, **kwargs)
    text = "".join(gen)
    assert len(gen.tokens) == 40 and gen.logits.device.type == "cuda"
    assert generate(model, TOK, "User: hi\n\nBot:", 40, banned_tokens=[0], **kwargs) == text
    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(0)) * 3
    cpu = sampling_probs(logits, temperature=0.7, top_p=0.8, top_k=100)
    torch.testing.assert_close(
        sampling_probs(logits.cuda(), temperature=0.7, top_p=0.8, top_k=100).cpu(), cpu, rtol=1e-4, atol=1e-7
    )


def test_ids_the_tokenizer_cannot_decode_are_never_sampled() -> None:
    # Like a World model: 6 more logits than tokenizer ids; make those 6 the most likely tokens.
    padded = tuple(range(V, V + 6))
    model = FakeRNN(V + 6, seed=12, favored=padded, bonus=50.0)
    tokens = list(generate_tokens(model, TOK.encode("abc"), max_new_tokens=10, seed=0))
    assert set(tokens) <= set(padded)  # the raw token loop samples them...
    gen = generate(model, TOK, "abc", 30, seed=0, stream=True)
    list(gen)
    assert gen.tokens and max(gen.tokens) < V  # ...generate bans them (the tokenizer cannot decode them)
    limited = generate_tokens(model, TOK.encode("abc"), max_new_tokens=30, seed=0, vocab_limit=V)
    assert list(limited) == gen.tokens
    with pytest.raises(ConfigError, match="whole vocabulary"):
        generate(model, TOK, "abc", 4, banned_tokens=range(V))
