"""RRWKV-style retrospection (reconstruction): RWKV-4 time mix plus a read-back over "mediums".

RRWKV ("Capturing Long-range Dependencies in RWKV", Wang, arXiv 2306.05176) inserts *mediums*,
summaries of the tokens before them, at regular intervals so that a token can reach a distant one in
O(1) steps instead of only through the decaying WKV state. The paper publishes neither code nor
exact equations; this module is the reconstruction of docs/seed-systems.md#rrwkv, **not** the
paper's model. With segment length ``s`` (``medium_every``), segment ``j`` (0-indexed) covering tokens
``[j s, (j + 1) s)`` of the layer input ``x [B, T, C]``::

    x̄_j = mean(x_{j s}, ..., x_{(j+1) s - 1})                  squeeze: mean pool ...
    m_j = W_m (sigmoid(W_g x̄_j + b_g) * (W_p x̄_j))              ... then a sigmoid-gated projection
    q_t = W_q x_t
    ret_t = sum_{j in R(t)} softmax_j(q_t . m_j / sqrt(A)) V_m m_j,   R(t) = {j : (j + 1) s - 1 <= t}
    wkv'_t = wkv_t + ret_t                                      (ret_t = 0 while R(t) is empty)
    out_t = W_o (sigmoid(r_t) * wkv'_t)                         (the rest is RWKV-4, ``layers/rwkv4.py``)

A segment is readable from its last token on (``R(t)`` includes the segment that ``t`` completes), so
the read is causal. It costs ``O(T * T / s)`` and the recurrent state grows by one ``A``-vector per
``s`` tokens. ``V_m`` starts at zero, so a fresh layer computes exactly the RWKV-4 time mix and the
retrospection is learned from there.

Not reconstructed: the paper also feeds the mediums to the channel mix (suggested: the latest medium
as an extra token shift). :class:`RRWKV4TimeMix` covers the time mix only.

The state carried across calls (:class:`RRWKVState`): the token shift and the WKV-4 ``(aa, bb, pp)``
state as in RWKV-4, the running sum and length of the incomplete segment, and the mediums completed
so far. One call over a whole sequence (the parallel form: chunked WKV, one masked softmax over all
mediums) equals any split of it into calls, down to one token per call (the recurrent form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.layers.rwkv4 import RWKV4TimeMix, lerp_mix
from rwkvkit.layers.token_shift import acc_dtype, token_shift
from rwkvkit.ops import wkv4, wkv4_initial_state


@dataclass(frozen=True)
class RRWKVState:
    """What an :class:`RRWKV4TimeMix` carries between calls (accumulators in fp32, or fp64 for fp64 input).

    Attributes:
        shift: ``[B, C]`` the last input token (token shift).
        wkv: ``[B, 3, A]`` the WKV-4 state ``(aa, bb, pp)``.
        seg_sum: ``[B, C]`` sum of the inputs of the current, incomplete segment.
        seg_len: tokens in the current segment, ``0 <= seg_len < s``.
        mediums: ``[B, J, A]`` the mediums ``m_j`` of the ``J`` segments completed so far.
    """

    shift: torch.Tensor
    wkv: torch.Tensor
    seg_sum: torch.Tensor
    seg_len: int
    mediums: torch.Tensor

    @classmethod
    def initial(
        cls, batch_size: int, n_embd: int, dim_att: int, device=None, dtype=torch.float32
    ) -> RRWKVState:
        """The state before any token: zeros, no mediums, ``pp = -1e30``."""
        dd = {"device": device, "dtype": dtype}
        return cls(
            shift=torch.zeros(batch_size, n_embd, **dd),
            wkv=wkv4_initial_state(batch_size, dim_att, **dd),
            seg_sum=torch.zeros(batch_size, n_embd, **dd),
            seg_len=0,
            mediums=torch.zeros(batch_size, 0, dim_att, **dd),
        )

    @property
    def num_values(self) -> int:
        """Numbers held, the segment counter included: ``C + 3A + C + 1 + J A`` per sequence when
        ``B = 1``; it grows by ``A`` per completed segment."""
        tensors = (self.shift, self.wkv, self.seg_sum, self.mediums)
        return sum(t.numel() for t in tensors) + 1


class RRWKV4TimeMix(RWKV4TimeMix):
    """RWKV-4 time mix with RRWKV-style retrospection (reconstruction; see the module docstring).

    The RWKV-4 parameters keep their official names (``time_decay``, ``key``, ..., ``output``), so an
    RWKV-4 ``att`` state dict loads with ``strict=False``; the retrospection adds ``medium_gate``
    (``W_g``, ``b_g``), ``medium_proj`` (``W_p``), ``medium`` (``W_m``), ``medium_query`` (``W_q``) and
    ``medium_value`` (``V_m``). Unlike :class:`RWKV4TimeMix`, :meth:`forward` takes and returns an
    :class:`RRWKVState`, because the state has more parts than ``(shift, wkv)``.

    Args:
        config: an RWKV-4 config (``n_embd`` C, ``dim_att`` A).
        layer_id: the layer's index (kept for the official initialisation).
        medium_every: ``s``, tokens per segment (one medium each), ``>= 1``.
    """

    def __init__(self, config, layer_id: int, medium_every: int = 16, device=None, dtype=None) -> None:
        if isinstance(medium_every, bool) or not isinstance(medium_every, int) or medium_every < 1:
            raise ConfigError(
                f"RRWKV: medium_every (tokens per medium) must be an integer >= 1, got {medium_every!r}"
            )
        super().__init__(config, layer_id, device=device, dtype=dtype)
        dd = {"device": device, "dtype": dtype}
        C, A = config.n_embd, config.dim_att
        self.medium_every = medium_every
        self.medium_gate = nn.Linear(C, C, bias=True, **dd)  # W_g, b_g of the squeeze gate
        self.medium_proj = nn.Linear(C, C, bias=False, **dd)  # W_p
        self.medium = nn.Linear(C, A, bias=False, **dd)  # W_m: squeezed segment -> medium m_j
        self.medium_query = nn.Linear(C, A, bias=False, **dd)  # W_q: token -> query q_t
        self.medium_value = nn.Linear(A, A, bias=False, **dd)  # V_m: zero at init -> plain RWKV-4
        nn.init.zeros_(self.medium_value.weight)

    def reset_retrospection_(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the retrospection from ``generator`` (the RWKV-4 parameters are untouched):
        ``W_g, W_p, W_m, W_q`` uniform in ``+-1/sqrt(fan_in)`` (nn.Linear's range), ``b_g = 0``,
        ``V_m = 0``."""
        with torch.no_grad():
            for lin in (self.medium_gate, self.medium_proj, self.medium, self.medium_query):
                bound = 1 / math.sqrt(lin.in_features)
                w = torch.rand(lin.weight.shape, generator=generator, dtype=torch.float64) * 2 - 1
                lin.weight.copy_(w * bound)
            self.medium_gate.bias.zero_()
            self.medium_value.weight.zero_()

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> RRWKVState:
        return RRWKVState.initial(batch_size, self.key.in_features, self.key.out_features, device, dtype)

    def squeeze_medium(self, seg_mean: torch.Tensor) -> torch.Tensor:
        """``m = W_m (sigmoid(W_g x̄ + b_g) * (W_p x̄))`` for segment means ``x̄ [..., C]`` -> ``[..., A]``."""
        w = self.medium.weight.dtype
        x = seg_mean.to(w)
        return self.medium(torch.sigmoid(self.medium_gate(x)) * self.medium_proj(x)).to(seg_mean.dtype)

    def forward(
        self, x: torch.Tensor, state: RRWKVState | None = None, impl: str = "auto"
    ) -> tuple[torch.Tensor, RRWKVState]:
        """``x [B, T, C]`` (LN1 output) and the state after the tokens before it (None: a fresh one).

        Returns ``(out [B, T, C], the state after x)``. ``impl`` picks the WKV-4 tier (``rwkvkit.ops.wkv4``).
        """
        if x.dim() != 3 or x.shape[-1] != self.key.in_features or x.shape[1] == 0:
            raise InputError(
                f"RRWKV4TimeMix: x must be [batch, time >= 1, {self.key.in_features}], got {tuple(x.shape)}"
            )
        B, T, _ = x.shape
        acc = acc_dtype(x)  # WKV sums, segment sums and mediums accumulate in fp32 (fp64 for fp64 input)
        if state is None:
            state = self.initial_state(B, x.device, acc)
        self._check_state(state, B)

        # ---- RWKV-4 up to the WKV (as RWKV4TimeMix.forward) ----
        prev = token_shift(x, state.shift)
        r = torch.sigmoid(self.receptance(lerp_mix(x, prev, self.time_mix_r)))
        k = self.key(lerp_mix(x, prev, self.time_mix_k)).to(acc)
        v = self.value(lerp_mix(x, prev, self.time_mix_v)).to(acc)
        w = -torch.exp(self.time_decay.to(acc))
        wkv, wkv_state = wkv4(w, self.time_first.to(acc), k, v, state.wkv.to(acc), impl=impl)

        # ---- segments completed in this call -> new mediums ----
        s, n0 = self.medium_every, state.seg_len
        xa = x.to(acc)
        # the current segment's running sum stands in for its n0 earlier tokens (n0 - 1 zero rows pad it)
        head = [state.seg_sum.to(acc).unsqueeze(1), xa.new_zeros(B, n0 - 1, xa.shape[-1])] if n0 else []
        ext = torch.cat([*head, xa], dim=1)  # [B, n0 + T, C]; row i is token (i - n0) of this call
        J_new = ext.shape[1] // s
        seg_sums = ext[:, : J_new * s].unflatten(1, (J_new, s)).sum(2)  # [B, J_new, C]
        seg_sum = ext[:, J_new * s :].sum(1)
        new_mediums = self.squeeze_medium(seg_sums / s)  # [B, J_new, A]
        mediums = torch.cat([state.mediums.to(acc), new_mediums], dim=1)  # [B, J, A]

        # ---- retrospective read: token i of this call reads mediums j < J0 + (n0 + i + 1) // s ----
        readable = state.mediums.shape[1] + (n0 + torch.arange(T, device=x.device) + 1) // s
        wkv = wkv + self._read(x, mediums, readable)

        new_state = RRWKVState(
            shift=x[:, -1].to(acc), wkv=wkv_state, seg_sum=seg_sum, seg_len=(n0 + T) % s, mediums=mediums
        )
        return self.output(r * wkv.to(x.dtype)), new_state

    def _read(self, x: torch.Tensor, mediums: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        """``sum_{j < readable[t]} softmax_j(q_t . m_j / sqrt(A)) V_m m_j`` -> ``[B, T, A]`` (acc dtype);
        rows with ``readable[t] == 0`` are zero."""
        acc = mediums.dtype
        q = self.medium_query(x).to(acc)  # [B, T, A]
        # J = 0 runs through too (empty softmax, zero sum): every parameter stays in the graph
        scores = torch.einsum("bta,bja->btj", q, mediums) / math.sqrt(q.shape[-1])
        mask = torch.arange(mediums.shape[1], device=x.device) < readable[:, None]  # [T, J]
        # the most negative finite value (not -inf) keeps empty rows finite; `* mask` zeroes them
        attn = torch.softmax(scores.masked_fill(~mask, torch.finfo(acc).min), dim=-1) * mask
        vals = self.medium_value(mediums.to(self.medium_value.weight.dtype)).to(acc)  # [B, J, A]
        return torch.einsum("btj,bja->bta", attn, vals)

    def _check_state(self, state: RRWKVState, B: int) -> None:
        C, A = self.key.in_features, self.key.out_features
        want = {"shift": (B, C), "wkv": (B, 3, A), "seg_sum": (B, C)}
        for name, shape in want.items():
            got = tuple(getattr(state, name).shape)
            if got != shape:
                raise InputError(f"RRWKV4TimeMix: state.{name} has shape {got}, expected {shape}")
        m = state.mediums
        if m.dim() != 3 or m.shape[0] != B or m.shape[2] != A:
            raise InputError(f"RRWKV4TimeMix: state.mediums must be [{B}, J, {A}], got {tuple(m.shape)}")
        if not 0 <= state.seg_len < self.medium_every:
            raise InputError(
                f"RRWKV4TimeMix: state.seg_len {state.seg_len} is outside [0, {self.medium_every}); "
                "was the state made by a layer with another medium_every?"
            )
