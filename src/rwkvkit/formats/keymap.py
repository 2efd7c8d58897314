"""The one engine that applies a declarative key table, in both directions.

A *layout* is how another project names and shapes RWKV weights. Its table is a tuple of rows::

    (native, foreign, transform)

* ``native``: rwkvkit's name (which is the official BlinkDL name), or a tuple of names when
  several official tensors become one foreign tensor (RWKV-6's five lerp offsets -> fla's ``x_bias``);
* ``foreign``: the layout's name, or ``None`` when the layout has no slot for the tensor (it is
  dropped on writing; the layout's ``complete`` hook fills it on reading);
* ``transform``: a named, exactly invertible reshaping (:data:`IDENTITY`, :data:`TRANSPOSE`,
  :data:`SQUEEZE`, :data:`STACK`, ...). Transforms only move bits (views, permutations), never
  compute, so every round trip is bitwise exact.

``{i}`` in a name is the block index. A row without ``{i}`` (``blocks.0.att.v0``) overrides the
templated row for the same native key at that block, which is how layer-0 exceptions are written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from rwkvkit.errors import CheckpointError
from rwkvkit.models.rwkv.config import RWKVConfig

Tensor = torch.Tensor


@dataclass(frozen=True)
class Transform:
    """An exactly invertible reshaping between native tensors and one foreign tensor."""

    name: str
    to_foreign: Callable[..., Tensor]  # native tensors, in row order -> the foreign tensor
    to_native: Callable[[Tensor], tuple[Tensor, ...]]  # the foreign tensor -> native tensors


IDENTITY = Transform("identity", lambda x: x, lambda y: (y,))
# nn.Linear-style (out, in) <-> a raw (in, out) matrix used as ``x @ W`` (BlinkDL's LoRA factors)
TRANSPOSE = Transform("transpose", lambda x: x.t(), lambda y: (y.t(),))
# BlinkDL stores per-channel vectors as (1, 1, C) for broadcasting; most HF code stores (C,)
SQUEEZE = Transform("squeeze", lambda x: x.reshape(-1), lambda y: (y.reshape(1, 1, -1),))
# several (1, 1, C) vectors <-> one (n, C) matrix, rows in the order the row lists the natives
STACK = Transform(
    "stack",
    lambda *xs: torch.stack([x.reshape(-1) for x in xs]),
    lambda y: tuple(r.reshape(1, 1, -1) for r in y.unbind(0)),
)


def _inverse(perm: tuple[int, ...]) -> list[int]:
    inv = [0] * len(perm)
    for new, old in enumerate(perm):
        inv[old] = new
    return inv


def lora_blocks_in(perm: tuple[int, ...]) -> Transform:
    """(C, n*D) input factor, n blocks of D columns -> (n*D, C) Linear weight with blocks permuted.

    ``perm[j]`` is the native block that becomes foreign block ``j``.
    """
    n, inv = len(perm), _inverse(perm)

    def fwd(x: Tensor) -> Tensor:
        C, nD = x.shape
        return x.reshape(C, n, nD // n)[:, list(perm)].reshape(C, nD).t()

    def back(y: Tensor) -> tuple[Tensor, ...]:
        nD, C = y.shape
        return (y.t().reshape(C, n, nD // n)[:, inv].reshape(C, nD),)

    return Transform(f"lora_blocks_in{perm}", fwd, back)


def lora_blocks_out(perm: tuple[int, ...]) -> Transform:
    """(n, D, C) stacked output factors -> (C, n*D) Linear weight with blocks permuted."""
    n, inv = len(perm), _inverse(perm)

    def fwd(x: Tensor) -> Tensor:
        _, D, C = x.shape
        return x[list(perm)].reshape(n * D, C).t()

    def back(y: Tensor) -> tuple[Tensor, ...]:
        C, nD = y.shape
        return (y.t().reshape(n, nD // n, C)[inv],)

    return Transform(f"lora_blocks_out{perm}", fwd, back)


Row = tuple  # (native: str | tuple[str, ...], foreign: str | None[, transform: Transform])


@dataclass(frozen=True)
class Layout:
    """A foreign checkpoint layout: its key table and the ``config.json`` it goes with.

    Attributes:
        name: short id (``"fla-rwkv7"``), used by ``hf.write(..., layout=name)``.
        title: what ``rwkvkit info`` prints.
        source: where every fact in the table comes from.
        versions: RWKV versions the layout can hold.
        model_types: ``config.json`` ``model_type`` values read as this layout (the first is written).
        architectures: written to ``config.json``.
        marker: a key that only this layout's weights have (tells layouts of one model_type apart).
        table: the key table (see the module docstring).
        config_fields: ``config.json`` fields that follow from the sizes; written, and checked on
            reading when the file states them (the sizes themselves are always read from shapes).
        fixed: fields that must have these values for rwkvkit to run the model the same way;
            written, and checked on reading when present.
        extra: fields written with their usual values and never checked (token ids, cache flags).
        tied: ``(head key, embedding key)``: a file saved with ``tie_word_embeddings`` lacks the head.
        upgrade: renames older key names of the layout to the current ones before mapping.
        complete: fills native tensors the layout has no slot for, from the config.json.
    """

    name: str
    title: str
    source: str
    versions: tuple[str, ...]
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    marker: str
    table: tuple[Row, ...]
    config_fields: Callable[[RWKVConfig], dict]
    fixed: Mapping[str, object] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)
    tied: tuple[str, str] | None = None
    upgrade: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    complete: Callable[[dict[str, Tensor], dict], None] | None = None


def _rows(table: Iterable[Row]) -> list[tuple[tuple[str, ...], str | None, Transform]]:
    out = []
    for r in table:
        native, foreign, *rest = r
        natives = (native,) if isinstance(native, str) else tuple(native)
        out.append((natives, foreign, rest[0] if rest else IDENTITY))
    return out


def expand(table: Iterable[Row], n_layer: int) -> list[tuple[tuple[str, ...], str | None, Transform]]:
    """The table with ``{i}`` filled in for every block; literal rows win over templated ones."""
    rows = _rows(table)
    templated = lambda natives: any("{i}" in n for n in natives)  # noqa: E731
    out, seen = [], set()
    for natives, foreign, tf in rows:
        if not templated(natives):
            out.append((natives, foreign, tf))
            seen.update(natives)
    for i in range(n_layer):
        for natives, foreign, tf in rows:
            if not templated(natives):
                continue
            nat = tuple(n.replace("{i}", str(i)) for n in natives)
            if any(n in seen for n in nat):  # a literal row (a layer-0 exception) already covers it
                continue
            out.append((nat, foreign.replace("{i}", str(i)) if foreign else None, tf))
    return out


def count_layers(keys: Iterable[str], patterns: Iterable[str]) -> int:
    """1 + the largest block index that any ``{i}`` pattern matches among ``keys`` (0 if none)."""
    regexes = [
        re.compile("^" + re.escape(p).replace(re.escape("{i}"), r"(\d+)") + "$")
        for p in patterns
        if "{i}" in p
    ]
    top = -1
    for k in keys:
        for rx in regexes:
            if m := rx.match(k):
                top = max(top, int(m.group(1)))
                break
    return top + 1


def native_patterns(table: Iterable[Row]) -> list[str]:
    return [n for natives, _, _ in _rows(table) for n in natives]


def foreign_patterns(table: Iterable[Row]) -> list[str]:
    return [f for _, f, _ in _rows(table) if f is not None]


def short(keys: list[str], n: int = 6) -> str:
    """``[a, b, ... (12 in all)]``: key lists in one-line error messages."""
    return "[" + ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"


def to_foreign(
    sd: Mapping[str, Tensor], table: Iterable[Row], n_layer: int, target: str
) -> dict[str, Tensor]:
    """Native (official-name) state dict -> the layout's state dict.

    Native tensors whose row has no foreign slot are dropped. Every native key must be covered by
    a row, so a state dict of the wrong version fails here instead of writing a broken file.
    """
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for natives, foreign, tf in expand(table, n_layer):
        if foreign is None:
            used.update(natives)
            continue
        absent = [n for n in natives if n not in sd]
        if absent:
            missing += absent
            continue
        try:
            out[foreign] = tf.to_foreign(*(sd[n] for n in natives))
        except (RuntimeError, ValueError, IndexError) as e:
            shapes = ", ".join(f"{n} {tuple(sd[n].shape)}" for n in natives)
            raise CheckpointError(f"cannot write {shapes} as {target} {foreign!r} ({tf.name}): {e}") from None
        used.update(natives)
    unexpected = sorted(set(sd) - used)
    if missing or unexpected:
        parts = ([f"missing keys {short(missing)}"] if missing else []) + (
            [f"keys with no place in this layout {short(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(f"cannot write this state dict as {target}: " + "; ".join(parts))
    return out


def to_native(sd: Mapping[str, Tensor], table: Iterable[Row], n_layer: int, source: str) -> dict[str, Tensor]:
    """The layout's state dict -> native (official-name) state dict; the inverse of :func:`to_foreign`.

    Native tensors without a foreign slot are left out (the layout's ``complete`` hook adds them).
    """
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for natives, foreign, tf in expand(table, n_layer):
        if foreign is None:
            continue
        if foreign not in sd:
            missing.append(foreign)
            continue
        try:
            parts = tf.to_native(sd[foreign])
            if len(parts) != len(natives):
                raise ValueError(f"it splits into {len(parts)} tensors, expected {len(natives)}")
        except (RuntimeError, ValueError, IndexError) as e:
            raise CheckpointError(
                f"{source}: tensor {foreign!r} has shape {tuple(sd[foreign].shape)}, which the {tf.name} "
                f"map cannot turn into {', '.join(natives)} ({e})"
            ) from None
        # contiguous, as an official file's tensors are: a transposed view would change the matmul
        # kernels, and with them the last bits of the logits
        out.update(zip(natives, (t.contiguous() for t in parts)))
        used.add(foreign)
    unexpected = sorted(set(sd) - used)
    if missing or unexpected:
        parts = ([f"missing keys {short(missing)}"] if missing else []) + (
            [f"unexpected keys {short(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(f"cannot map {source} to rwkvkit names: " + "; ".join(parts))
    return out
