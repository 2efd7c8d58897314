"""Weight precision for inference: int8 projections (:class:`Int8Linear`) and :func:`quantize_`.

Every projection of an RWKV model is an ``nn.Linear`` without bias (``att.receptance/key/value/
output/gate``, ``ffn.key/value/receptance``, ``head``): they hold almost all the weights, and decoding
one token reads each of them once, so their storage format sets the speed of CPU decoding.
``quantize_(model, weights)`` stores them as

* ``"fp32"``: plain ``nn.Linear`` in fp32 (the reference);
* ``"bf16"``: :class:`BF16Linear` (an ``nn.Linear`` with a bf16 weight that casts its input to bf16 and
  its output back): half the bytes, products on the CPU's bf16 units;
* ``"int8"``: :class:`Int8Linear`, weight-only int8 with a symmetric scale per output channel
  (``w ~= weight_int8 * scale[:, None]``, ``|weight_int8| <= 127``), activations rounded to bf16 for
  the product: a quarter of the bytes.

Everything else (the embedding, LayerNorm/GroupNorm, the token-shift and decay/bonus parameters
``time_*``/``x_*``/``w0``..., the LoRA matrices ``w1, w2, a1, ...``, ``time_maa_w1``, ``time_decay_w1``...)
is kept in (or brought to) fp32, and so is the residual stream: these are ~2% of the weights of a
0.1B model, the layers' own fp32 casts (``time_decay.to(acc)``, the v5/v6 GroupNorm, the v7 decay
sigmoid) then cost nothing, and everything that feeds the decay (the v6/v7 decay LoRA and its
token-shift inputs) is computed in fp32. The recurrent state and the WKV accumulation are fp32 in
every mode (the layers and the model enforce it). Measured on the shipped default model (RWKV-7,
L6 x 256, vocabulary 4096; see ``tests/inference/test_fast_quality.py``), the rest in fp32 rather than
bf16 is both more accurate and not slower on this CPU:

=========================================  ============================================================
int8 projections, rest in ...              fp32                              bf16
=========================================  ============================================================
relative RMS error of logits vs fp32       0.0071                            0.018
decode, batch 1 (ms/token)                 1.87                              2.17
prefill 512 tokens (ms)                    71                                118
=========================================  ============================================================

Choice of the int8 product (AMD EPYC Zen 4, 2 cores, AVX512-BF16, torch 2.13 CPU, median ms per call,
input fp32 ``[M, in]`` and output fp32 including the casts; weights ``[out, in]``)::

    weight         M    fp32 F.linear  bf16 F.linear  int8pack  dequant-bf16  fallback (fp32)
    65536 x 768    1        20.1           8.3          4.8        43           310
    65536 x 768    8        35             9.5         12.7        46           163
    65536 x 768   64        75            27           93          41           197
    768 x 768      1         0.047         0.062        0.023       0.127        0.121
    768 x 768      8         0.134         0.089        0.083       0.131        1.3
    768 x 768     64         0.46          0.23         0.52        0.29         0.59

* ``int8pack`` is ``torch._weight_int8pack_mm(x_bf16, weight_int8, scale_bf16)``: a CPU kernel that
  reads the int8 weight once per block of 4 rows of ``x``, converting every weight to fp32 on the fly;
  4x fewer bytes than fp32 make it the fastest for decoding (M = batch size), but its cost grows
  linearly with M and it loses to the bf16 matrix product from M ~ 16 on.
* ``dequant-bf16`` converts the int8 weight to bf16 (exact: integers up to 256 are bf16 numbers) in
  blocks of :data:`DEQUANT_BLOCK_ROWS` output rows, multiplies in bf16 (oneDNN) and scales the output:
  a fixed conversion cost, then the speed of a bf16 product; used for more than
  :data:`INT8PACK_MAX_ROWS` rows (prefill).
* ``fallback`` is ``F.linear(x, weight_int8.to(x.dtype) * scale[:, None])``: any device, autograd, an
  input width the kernel cannot take (not a multiple of 16: its vector loop reads 16 columns at a time
  with aligned loads, and crashes or reads past the row otherwise), or a kernel error. Logged once.

The three paths compute the same product up to one bf16 rounding of the output (int8pack and
dequant-bf16 also round the input to bf16).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError

log = logging.getLogger("rwkvkit.inference")

__all__ = [
    "WEIGHTS",
    "INT8PACK_MAX_ROWS",
    "DEQUANT_BLOCK_ROWS",
    "BF16Linear",
    "Int8Linear",
    "quantize_",
    "quantize_weight",
]

WEIGHTS = ("fp32", "bf16", "int8")
# Up to this many input rows (tokens x batch) the int8pack kernel is used, above it dequant-bf16: the
# measured crossover (module docstring) lies between 8 and 32 rows depending on the shape.
INT8PACK_MAX_ROWS = 8
# Output rows dequantised at a time by dequant-bf16: 4096 x 768 bf16 = 6 MB stays in the L3 cache,
# which made the 65536 x 768 head 1.6x faster at M = 64 than converting the whole weight at once.
DEQUANT_BLOCK_ROWS = 4096
# int8pack's vector loop steps over the input width 16 (AVX512) or 8 (AVX2) columns at a time.
_INT8PACK_K_MULTIPLE = 16

_logged: set[str] = set()


def _log_once(message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` the first time it is seen in this process (one line per distinct reason)."""
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[out, in]`` float weight -> ``(weight_int8 [out, in] int8, scale [out] fp32)``.

    Symmetric per output channel: ``scale = max|w_row| / 127`` rounded *up* to the nearest bf16
    number (so the bf16 copy the CPU kernel takes is the same scale exactly, and ``|w / scale| <= 127``
    needs no clipping), ``weight_int8 = round(w / scale)``. An all-zero row gets scale 1.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("cannot quantize a weight with NaN or infinite values")
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    s16 = scale.to(torch.bfloat16)
    s16 = torch.where(s16.float() < scale, torch.nextafter(s16, torch.full_like(s16, float("inf"))), s16)
    scale = s16.float()
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight and one fp32 scale per output channel (weight-only int8).

    Buffers (saved in the state dict): ``weight_int8 [out, in]`` int8 and ``scale [out]`` (fp32,
    holding bf16 numbers; ``model.to(torch.bfloat16)`` may make it bf16, which is exact), and ``bias``
    when the source layer had one. ``forward`` takes any float input ``[..., in]`` and returns the
    input's dtype; the product runs in bf16 on CPU (see the module docstring for the path chosen).
    """

    weight_int8: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._scale_bf16: torch.Tensor | None = None  # bf16 copy of ``scale`` for the kernel
        self._scale_key: tuple | None = None  # which ``scale`` it was made from
        self._int8pack_failed = False  # set when the kernel raised once: not tried again

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize an ``nn.Linear`` (any float dtype; the weight is read in fp32)."""
        q, scale = quantize_weight(linear.weight)
        m = cls(linear.in_features, linear.out_features, bias=False, device=linear.weight.device)
        m.weight_int8, m.scale = q, scale
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m

    def dequantize(self) -> torch.Tensor:
        """The weight the layer multiplies by, ``weight_int8 * scale[:, None]``, as fp32 ``[out, in]``."""
        return self.weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )

    # ---- forward --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in]`` -> ``[..., out]`` in ``x``'s dtype."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear expects inputs [..., {self.in_features}], got {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        if x.device.type != "cpu":
            y = self._fallback(x2, f"Int8Linear on {x.device.type}: dequantising F.linear", logging.INFO)
        elif (x.requires_grad and torch.is_grad_enabled()) or rows == 0:
            y = self._fallback(x2)  # the CPU kernels have no backward (and nothing to do for 0 rows)
        elif rows > INT8PACK_MAX_ROWS:
            y = self._dequant_bf16(x2)
        elif not self._int8pack_ok():
            y = self._fallback(
                x2,
                f"Int8Linear: torch._weight_int8pack_mm cannot take in_features={self.in_features} "
                f"(needs a multiple of {_INT8PACK_K_MULTIPLE} and torch >= 2.4); dequantising F.linear",
            )
        else:
            try:
                y = self._int8pack(x2)
            except RuntimeError as e:  # a torch build whose kernel refuses these inputs: never again
                self._int8pack_failed = True
                y = self._fallback(
                    x2, f"Int8Linear: torch._weight_int8pack_mm failed ({e}); dequantising F.linear"
                )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _int8pack_ok(self) -> bool:
        return (
            hasattr(torch, "_weight_int8pack_mm")
            and not self._int8pack_failed
            and self.in_features % _INT8PACK_K_MULTIPLE == 0
        )

    def _bf16_scale(self) -> torch.Tensor:
        """``scale`` as bf16, cached until the buffer changes (load_state_dict, .to, in-place writes)."""
        s = self.scale
        if s.dtype == torch.bfloat16:
            return s
        key = (s.data_ptr(), s._version, s.device)
        if self._scale_key != key:
            self._scale_bf16, self._scale_key = s.to(torch.bfloat16).contiguous(), key
        return self._scale_bf16

    def _int8pack(self, x2: torch.Tensor) -> torch.Tensor:
        # The kernel reads rows of x and w with aligned vector loads: contiguous, 32-byte aligned x
        # (a fresh bf16 copy always is; a bf16 view into a larger tensor may not be), 16-byte aligned w.
        xb = x2.to(torch.bfloat16).contiguous()
        if xb.data_ptr() % 64:
            xb = xb.clone()
        w = self.weight_int8
        if not w.is_contiguous() or w.data_ptr() % 64:
            w = self.weight_int8 = w.contiguous().clone()
        return torch._weight_int8pack_mm(xb, w, self._bf16_scale())

    def _dequant_bf16(self, x2: torch.Tensor) -> torch.Tensor:
        """``(x_bf16 @ weight_int8.bf16().T) * scale``, the weight converted a block of rows at a time."""
        xb = x2.to(torch.bfloat16)
        w, n = self.weight_int8, self.out_features
        if n <= DEQUANT_BLOCK_ROWS:
            y = F.linear(xb, w.to(torch.bfloat16))
        else:
            y = torch.empty(xb.shape[0], n, dtype=torch.bfloat16, device=xb.device)
            for i in range(0, n, DEQUANT_BLOCK_ROWS):
                j = min(i + DEQUANT_BLOCK_ROWS, n)
                y[:, i:j] = F.linear(xb, w[i:j].to(torch.bfloat16))
        # the scale goes on the output ([rows, out]) rather than the weight ([out, in]): fewer products
        return y.float().mul_(self.scale.float())

    def _fallback(self, x2: torch.Tensor, reason: str = "", level: int = logging.WARNING) -> torch.Tensor:
        """``F.linear(x, weight_int8.to(x.dtype) * scale[:, None])``; logs ``reason`` once."""
        if reason:
            _log_once(reason, level)
        dtype = x2.dtype if x2.is_floating_point() else torch.float32
        return F.linear(x2.to(dtype), self.weight_int8.to(dtype) * self.scale.to(dtype)[:, None])


class BF16Linear(nn.Linear):
    """An ``nn.Linear`` whose weight is bf16, for inputs of any float dtype.

    ``forward(x) = F.linear(x.to(bf16), weight, bias).to(x.dtype)``: the product runs on the CPU's bf16
    units (fp32 accumulation inside oneDNN), the model around it keeps its fp32 activations. Being an
    ``nn.Linear``, it keeps the ``weight`` name (the state dict saves as a checkpoint) and passes
    ``isinstance(m, nn.Linear)`` checks.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> BF16Linear:
        """A copy of ``linear`` with its weight (and bias) rounded to bf16."""
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        m.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


# ---- the whole model ----------------------------------------------------------------------------


def _projections(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, module)`` for every linear layer (nn.Linear and its subclasses, Int8Linear)."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Linear, Int8Linear)):
                found.append((parent, name, child))
    return found


@torch.no_grad()
def quantize_(model: nn.Module, weights: str) -> nn.Module:
    """Store ``model``'s projections in ``weights`` precision, in place; returns ``model``.

    Args:
        model: an RWKV model of any version (or any module: every ``nn.Linear`` is a projection).
        weights: ``"fp32"`` (``nn.Linear``), ``"bf16"`` (:class:`BF16Linear`) or ``"int8"``
            (:class:`Int8Linear`, the head included).

    Every other parameter and buffer (embedding, norms, decay/bonus/token-shift parameters, LoRA
    matrices) is kept in fp32, or brought to fp32 if it was in a lower precision (lossless; fp64 stays
    fp64): they must stay in high precision, and so does the residual stream, whose dtype is the
    embedding's. The result is for inference: parameters no longer require grad.

    Raises:
        ConfigError: ``weights`` is not one of :data:`WEIGHTS`, or int8 layers would be turned back
            into floating-point ones (quantize the original model instead).
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    projections = _projections(model)
    inside = {id(t) for _, _, m in projections for t in [*m.parameters(), *m.buffers()]}
    for module in model.modules():
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(t) in inside or not t.is_floating_point():
                continue
            hi = torch.promote_types(t.dtype, torch.float32)
            if t.dtype != hi:
                t.data = t.data.to(hi)  # .data keeps the Parameter object (and any references to it)
    for parent, name, m in projections:
        if isinstance(m, Int8Linear):
            if weights != "int8":
                raise ConfigError(f"{name} is already int8; quantize the original model to {weights}")
            continue
        if weights == "int8":
            new: nn.Module = Int8Linear.from_linear(m)
        elif weights == "bf16":
            new = m if isinstance(m, BF16Linear) else BF16Linear.from_linear(m)
        else:  # fp32 (fp64 stays fp64): a plain nn.Linear
            hi = torch.promote_types(m.weight.dtype, torch.float32)
            new = (
                m
                if type(m) is nn.Linear
                else nn.Linear(m.in_features, m.out_features, bias=False, device="meta")
            )
            new.weight = nn.Parameter(m.weight.detach().to(hi), requires_grad=False)
            new.bias = None if m.bias is None else nn.Parameter(m.bias.detach().to(hi), requires_grad=False)
        setattr(parent, name, new)
    model.requires_grad_(False)
    return model
