"""The recurrent state of an RWKV model, for a batch of sequences.

A :class:`State` is a small named collection of tensors, each laid out ``[L, B, ...]`` (layer axis
first, batch axis second), always in fp32:

=========== ===================== ===================================================
name        shape                 meaning
=========== ===================== ===================================================
att_shift   ``[L, B, C]``         LN1 output of the previous token (time-mix token shift)
wkv         ``[L, B, H, K, V]``   v5-v7: WKV matrix state, key-major ``S[key, value]``
            ``[L, B, 3, A]``      v4: ``aa, bb, pp`` (numerator, denominator, max exponent)
ffn_shift   ``[L, B, C]``         LN2 output of the previous token (channel-mix token shift)
=========== ===================== ===================================================

A State may also carry ``logits`` ``[B, V]``: the model's next-token logits after the last token it
consumed (the model's forward sets them), so generation can continue from a saved state without
new input.

The official package keeps, per layer, ``[att_xprev, S, ffn_xprev]`` with the v7 ``S`` stored
value-major (``S[value, key]``); :meth:`State.to_official` / :meth:`State.from_official` convert
at that boundary and nowhere else.

States are values: a model's forward returns a new State and never modifies the one passed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from rwkvkit.errors import StateError
from rwkvkit.models.rwkv.versions import PP_INIT, spec_of
from rwkvkit.utils.integrity import save_safetensors, verify_tensors

_FORMAT = "rwkvkit.state/1"

__all__ = ["PP_INIT", "State", "state_shapes"]


def state_shapes(config, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shape of every state tensor of a model with ``config`` (an RWKVConfig)."""
    L, C, B = config.n_layer, config.n_embd, batch_size
    wkv = (L, *spec_of(config.version, StateError).wkv_shape(config, B))
    return {"att_shift": (L, B, C), "wkv": wkv, "ffn_shift": (L, B, C)}


class State:
    """Recurrent state for a batch of sequences (see the module docstring for the layout)."""

    def __init__(
        self, tensors: dict[str, torch.Tensor], version: str, logits: torch.Tensor | None = None
    ) -> None:
        self.tensors = dict(tensors)
        self.version = version
        self.logits = logits  # [B, V] next-token logits after the last consumed token, if known

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def initial(cls, config, batch_size: int = 1, device: torch.device | str = "cpu") -> State:
        """The state before any token: zeros (and ``pp = -1e30`` for RWKV-4)."""
        L, B, C = config.n_layer, batch_size, config.n_embd
        shift = lambda: torch.zeros(L, B, C, dtype=torch.float32, device=device)  # noqa: E731
        wkv = spec_of(config.version, StateError).initial_wkv(config, B, L, device)
        return cls({"att_shift": shift(), "wkv": wkv, "ffn_shift": shift()}, config.version)

    # ---- access ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[1]

    @property
    def n_layer(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={tuple(t.shape)}" for n, t in self.tensors.items())
        return f"State(version={self.version!r}, {shapes})"

    # ---- value operations --------------------------------------------------------------------
    def _map(self, fn) -> State:
        logits = None if self.logits is None else fn(self.logits.unsqueeze(0)).squeeze(0)
        return State({n: fn(t) for n, t in self.tensors.items()}, self.version, logits)

    def clone(self) -> State:
        return self._map(torch.clone)

    def detach(self) -> State:
        return self._map(torch.Tensor.detach)

    def to(self, device: torch.device | str) -> State:
        return self._map(lambda t: t.to(device))

    def select(self, index: int | Sequence[int] | torch.Tensor) -> State:
        """The state of some sequences of the batch (keeps the batch axis)."""
        if isinstance(index, int):
            index = [index]
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return self._map(lambda t: t.index_select(1, idx))

    @staticmethod
    def cat(states: Iterable[State]) -> State:
        """Concatenate states along the batch axis."""
        states = list(states)
        if not states:
            raise StateError("State.cat needs at least one state")
        versions = {s.version for s in states}
        if len(versions) > 1:
            raise StateError(f"cannot concatenate states of different versions {sorted(versions)}")
        names = states[0].tensors.keys()
        tensors = {n: torch.cat([s.tensors[n] for s in states], dim=1) for n in names}
        has_logits = all(s.logits is not None for s in states)
        logits = torch.cat([s.logits for s in states]) if has_logits else None
        return State(tensors, states[0].version, logits)

    def check_fits(self, config, batch_size: int | None = None) -> None:
        """Raise StateError unless this state fits a model with ``config`` (and the batch size)."""
        if self.version != config.version:
            raise StateError(f"the state is for RWKV-{self.version} but the model is RWKV-{config.version}")
        expected = state_shapes(config, self.batch_size if batch_size is None else batch_size)
        if set(expected) != set(self.tensors):
            raise StateError(f"state has tensors {sorted(self.tensors)}, the model needs {sorted(expected)}")
        for name, shape in expected.items():
            if tuple(self.tensors[name].shape) != shape:
                raise StateError(
                    f"state tensor {name!r} has shape {tuple(self.tensors[name].shape)} but this model "
                    f"(L={config.n_layer}, C={config.n_embd}, H={config.n_head}) with batch size "
                    f"{shape[1]} needs {shape}; was the state saved from a different model?"
                )

    # ---- official package layout --------------------------------------------------------------
    def to_official(self, b: int = 0) -> list[torch.Tensor]:
        """Sequence ``b`` in the official package's state list.

        v4: ``[att_xx, aa, bb, pp, ffn_xx]`` per layer; v5/v6: ``[att_xx, S[key, value], ffn_xx]``;
        v7: ``[att_xx, S[value, key], ffn_xx]`` (the v7 package transposes its matrix state).
        """
        spec = spec_of(self.version, StateError)
        out: list[torch.Tensor] = []
        for layer in range(self.n_layer):
            out += [
                self.tensors["att_shift"][layer, b].clone(),
                *spec.wkv_to_official(self.tensors["wkv"][layer, b]),
                self.tensors["ffn_shift"][layer, b].clone(),
            ]
        return out

    @classmethod
    def from_official(cls, tensors: Sequence[torch.Tensor], version: str) -> State:
        """Build a batch-1 State from the official package's per-layer state list."""
        spec = spec_of(version, StateError)
        per_layer = 2 + spec.official_wkv_count
        if len(tensors) % per_layer:
            raise StateError(f"an official RWKV-{version} state has {per_layer} tensors per layer")
        layers = [tensors[i : i + per_layer] for i in range(0, len(tensors), per_layer)]
        att = torch.stack([ls[0].float() for ls in layers])[:, None]
        ffn = torch.stack([ls[-1].float() for ls in layers])[:, None]
        wkv = torch.stack([spec.wkv_from_official(list(ls[1:-1])) for ls in layers])
        return cls({"att_shift": att, "wkv": wkv[:, None], "ffn_shift": ffn}, version)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the state as safetensors (no code, any process can read it back), with checksums
        that :meth:`load` verifies."""
        path = Path(path)
        meta = {"format": _FORMAT, "version": self.version, "fields": json.dumps(list(self.tensors))}
        tensors = {n: t.detach().contiguous().cpu() for n, t in self.tensors.items()}
        if self.logits is not None:
            tensors["logits"] = self.logits.detach().float().contiguous().cpu()
        tmp = path.with_name(path.name + ".tmp")
        save_safetensors(tensors, tmp, meta)
        tmp.replace(path)  # atomic: a crash never leaves a half-written state behind

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> State:
        """Read a state written by :meth:`save` (its checksums verified, when it has them)."""
        path = Path(path)
        if not path.is_file():
            raise StateError(f"state file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != _FORMAT:
                    raise StateError(
                        f"{path} is not an rwkvkit state file (format tag {meta.get('format')!r})"
                    )
                names = json.loads(meta["fields"])
                stored = {n: f.get_tensor(n) for n in f.keys()}
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StateError(f"cannot read state file {path} ({first}); it is truncated or corrupt") from None
        verify_tensors(stored, meta, path, error=StateError)
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n in stored for n in names)
        ):
            raise StateError(f"{path}: its list of state tensors does not match the tensors it holds")
        tensors = {n: stored[n].to(device) for n in names}
        if any(t.dtype != torch.float32 or t.dim() < 2 for t in tensors.values()) or "version" not in meta:
            raise StateError(f"{path}: not a valid rwkvkit state (float32 [L, B, ...] tensors and a version)")
        logits = stored.get("logits")
        return cls(tensors, meta["version"], None if logits is None else logits.to(device))
