"""Property-based fuzzing of every loader: damaged files end in one RWKVKitError or load intact.

For each kind of file rwkvkit reads (an official ``.pth`` zip, an rwkvkit ``.safetensors``, an HF
model directory, a saved state, a GGUF), hypothesis generates truncations, byte flips in the
header and in the data, and random files (bare, or behind the first bytes of a real format).
Every case must end in one of two ways:

* an :class:`rwkvkit.errors.RWKVKitError` (the CLI's one-line error), or
* a load whose result is bit-identical to the undamaged file's: the damage hit bytes that carry
  nothing (zip padding, a field the reader ignores) and verification passed.

Never another exception, never a changed model loaded silently, never a hang (a generous alarm per
case turns one into a failure), never code run: an audit hook fails the test if a process is
spawned or a plain pickle resolves a global while a case is being loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import rwkvkit
from rwkvkit.errors import RWKVKitError
from rwkvkit.formats import blinkdl, gguf, save
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.state import State

CONFIG = RWKVConfig(version="7", n_layer=2, n_embd=32, vocab_size=64, head_size=16,
                    lora_w=8, lora_a=8, lora_v=8, lora_g=8)  # fmt: skip
# per kind of damage and format: 12 properties x 100 = 1200 cases in `make test`;
# RWKVKIT_FUZZ_EXAMPLES=2000 for a deeper run
EXAMPLES = int(os.environ.get("RWKVKIT_FUZZ_EXAMPLES", "100"))
HANG_SECONDS = 60  # a case takes milliseconds; only a hang gets near this

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip

# ---- the guards: no code execution, no hang -------------------------------------------------------

_ACTIVE: list[list[str]] = []  # events seen while a case is loading
_FORBIDDEN = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
              "pickle.find_class", "ctypes.dlopen")  # fmt: skip


def _audit(event: str, args) -> None:
    if _ACTIVE and event.startswith(_FORBIDDEN):
        _ACTIVE[-1].append(f"{event}{args!r:.200}")


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while a case runs


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"a load took over {HANG_SECONDS} s")


def _outcome(load) -> object:
    """Run ``load()`` under the guards; returns what it loaded, or "refused" for an RWKVKitError."""
    events: list[str] = []
    _ACTIVE.append(events)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        return load()
    except RWKVKitError as e:
        assert "\n" not in str(e), f"an error message of several lines: {e}"
        return "refused"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        _ACTIVE.pop()
        assert not events, f"code would have run while loading: {events}"


# ---- the files ------------------------------------------------------------------------------------


def _model_files(root: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.1 for k, s in blinkdl.expected_shapes(CONFIG).items()}
    state = State.initial(CONFIG, batch_size=1)
    state.tensors["wkv"].normal_(generator=g)
    state.save(root / "state.safetensors")
    return {
        "pth": save(sd, root / "model.pth", "blinkdl"),
        "safetensors": save(sd, root / "model.safetensors"),
        "hf": save(sd, root / "hf", "hf"),
        "state": root / "state.safetensors",
        "gguf": save(sd, root / "model.gguf", "gguf", dtype="q8_0"),
    }


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    files = _model_files(root)
    loaded = {kind: _load(kind, path) for kind, path in files.items()}
    return files, loaded


def _load(kind: str, path: Path):
    if kind == "state":
        return State.load(path)
    return rwkvkit.load(path)


def _same(kind: str, a, b) -> bool:
    if kind == "state":
        return (
            a.version == b.version
            and a.tensors.keys() == b.tensors.keys()
            and all(torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors)
        )
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def _target(files: dict[str, Path], kind: str, which: int) -> tuple[Path, Path]:
    """(the original file to damage, its path relative to the case folder); in an HF directory,
    ``which`` picks config.json or the weights."""
    path = files[kind]
    if kind == "hf":
        inner = sorted(p.name for p in path.iterdir())
        return path / inner[which % len(inner)], Path("hf") / inner[which % len(inner)]
    return path, Path(path.name)


def _check(originals, kind: str, which: int, damage) -> None:
    """Copy the file (or directory), damage one file with ``damage(bytes) -> bytes``, load, judge."""
    files, loaded = originals
    src, rel = _target(files, kind, which)
    with tempfile.TemporaryDirectory() as d:
        case = Path(d)
        if kind == "hf":
            shutil.copytree(files["hf"], case / "hf")
        dst = case / rel
        dst.write_bytes(damage(src.read_bytes()))
        result = _outcome(lambda: _load(kind, case / ("hf" if kind == "hf" else rel)))
    event("refused with an RWKVKitError" if result == "refused" else "loaded, identical to the original")
    if result != "refused":
        assert _same(kind, result, loaded[kind]), f"{kind}: damaged bytes loaded as a different model"


def _header_size(data: bytes) -> int:
    """Where the data region starts: after the JSON header of a safetensors file; after the metadata
    and tensor infos of a GGUF; in a zip (whose pickle and first records come first) or a JSON file,
    after the first 512 bytes."""
    if data[:4] == b"GGUF":
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "h.gguf").write_bytes(data)
            return min(t.start for t in gguf.parse(Path(d) / "h.gguf").tensors)
    if data[8:9] == b"{":
        return 8 + int.from_bytes(data[:8], "little")
    return 512


KINDS = ["pth", "safetensors", "hf", "state", "gguf"]


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True), which=st.integers(0, 1))
def test_truncated(originals, kind, cut, which):
    _check(originals, kind, which, lambda b: b[: int(len(b) * cut)])


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    which=st.integers(0, 1),
    region=st.sampled_from(["header", "data", "tail"]),
)
def test_flipped_bytes(originals, kind, seed, n, which, region):
    """XOR ``n`` bytes at uniformly drawn places (``seed``; hypothesis alone would favour the
    region's first byte): in the header (safetensors JSON; a zip's pickle and first local headers),
    in the tensor data, or in the last 256 bytes (a zip's central directory)."""

    def damage(b: bytes) -> bytes:
        b, rnd = bytearray(b), random.Random(seed)
        head = min(_header_size(bytes(b)), len(b))
        lo, hi = {"header": (0, head), "data": (head, len(b)), "tail": (max(0, len(b) - 256), len(b))}[region]
        if hi <= lo:
            lo, hi = 0, len(b)
        for _ in range(n):
            b[rnd.randrange(lo, hi)] ^= rnd.randrange(1, 256)
        return bytes(b)

    _check(originals, kind, which, damage)


PREFIXES = [b"", b"PK\x03\x04", b"\x80\x02", (64).to_bytes(8, "little") + b'{"', b'{"model_type": "rwkv7"',
            b"GGUF\x03\x00\x00\x00"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=4096), which=st.integers(0, 1))
def test_random_files(originals, kind, prefix, body, which):
    _check(originals, kind, which, lambda b: prefix + body)


def test_the_fuzzed_formats_are_what_they_claim(originals):
    """The fixtures are real: a torch.save zip, safetensors with checksums, an HF dir, a state."""
    files, _ = originals
    assert zipfile.is_zipfile(files["pth"])
    header = json.loads(
        files["safetensors"].read_bytes()[
            8 : 8 + int.from_bytes(files["safetensors"].read_bytes()[:8], "little")
        ]
    )
    assert "rwkvkit_checksums" in header["__metadata__"]
    assert sorted(os.listdir(files["hf"])) == ["config.json", "model.safetensors"]
