"""Weight precision for inference: int8 and 4-bit projections (:class:`Int8Linear`, :class:`Q4Linear`)
and :func:`quantize_`.

Every projection of an RWKV model is an ``nn.Linear`` without bias (``att.receptance/key/value/
output/gate``, ``ffn.key/value/receptance``, ``head``): they hold almost all the weights, and decoding
one token reads each of them once, so their storage format sets the speed of CPU decoding.
``quantize_(model, weights)`` stores them as

* ``"fp32"``: plain ``nn.Linear`` in fp32 (the reference);
* ``"bf16"``: :class:`BF16Linear` (an ``nn.Linear`` with a bf16 weight that casts its input to bf16 and
  its output back): half the bytes, products on the CPU's bf16 units;
* ``"int8"``: :class:`Int8Linear`, weight-only int8 with a symmetric scale per output channel
  (``w ~= weight_int8 * scale[:, None]``, ``|weight_int8| <= 127``): a quarter of the bytes;
* ``"q4"``: :class:`Q4Linear`, 4-bit weights with GGUF / llama.cpp Q4_0's values (per output row,
  groups of 32 inputs share an fp16 scale: 4.5 bits per weight, an eighth of fp32 plus the scales)
  and the output head in int8 by default (:data:`DEFAULT_HEAD`; the measured trade-off below).

How the products run: fp32 and bf16 weights are widened exactly to fp32 for decoding (the
matrix-vector kernel, :mod:`rwkvkit.inference.kernels.gemv`) and multiplied in bf16 by oneDNN for
prefill. Decoding with int8 and q4 weights quantizes each product's input to int8 per block of 32
values (one fp32 scale per block, like llama.cpp's Q8_0 activations) and multiplies in integer
arithmetic (AVX-512 VNNI ``vpdpbusd``, else ``vpmaddubsw``): exact fp32 widening of int8 weights made
decoding compute-bound on AVX-512 CPUs (about twice the instructions per weight). Per block rather
than per token: measured on the default model's decoding inputs, the relative error of the products
(fp32 weights) is 0.0022-0.0049 per block of 32 against 0.0030-0.0092 with one scale per token (the
FFN value input, relu(k)^2, is the spikiest: 0.0030 against 0.0092), for one more conversion and
multiply-add per 64 weights; either is small against the weights' own rounding (q4: ~8 % per
weight). Prefill with int8 weights rounds the input to bf16 (``int8pack``, ``dequant-bf16`` below);
with q4 weights it dequantizes blocks of rows to bf16 (the weights then rounded to bf16) for oneDNN.

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

q4 on the shipped default model (its head is small: 4096 x 256; ``tests/inference/
test_fast_quality.py``), and what the head's precision costs on the RWKV-7 0.1B shape, whose
65536 x 768 head is 37 % of the weights (``benchmarks/decode_bound.py --weights bf16 int8 q4:q4 q4
q4:bf16``: batch-1 decoding, 2 threads, AMD EPYC Zen 4 shared with other jobs; "% bound" is the bytes
read per token over the read bandwidth measured in the same rounds, 33 GB/s in this run; in the
machine's faster state, 56 GB/s, every row decodes 1.3-1.5x faster but at 62-78 % of the bound)::

    weights (head)            rel. RMS of logits vs fp32   val. loss    greedy     0.1B shape, 2 threads
                              prefill      decode          vs fp32      (32 tok.)  MB/token  ms/token  % bound
    bf16 (bf16)               0.0022       0.0000 (1)      +0.004 %     32/32      292.5     10.35     86 %
    int8 (int8)               0.0049       0.0062          +0.023 %     32/32      157.8      5.42     87 %
    q4 (q4)                   0.049        0.049           +0.39 %      32/32       98.0      3.39     87 %
    q4 (int8)  the default    0.035        0.035           +0.27 %      32/32      120.3      4.10     88 %
    q4 (bf16)                 0.035        0.035           +0.26 %      32/32      170.4      5.86     86 %

    (1) the default model's weights are bf16 numbers: bf16 decoding (exact fp32 arithmetic) is fp32's.

A q4 head adds about as much logit error again as all the q4 blocks (0.049 against 0.035 relative
RMS, +0.12 % validation loss); an int8 head adds nothing measurable (the bf16 head's numbers) for 23 %
more bytes than a q4 head and 30 % fewer than a bf16 one. So int8 is q4's default head;
``head="q4"`` is the smallest and fastest, ``head="bf16"`` the most accurate.

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

import importlib
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError

log = logging.getLogger("rwkvkit.inference")

__all__ = [
    "WEIGHTS",
    "DEFAULT_HEAD",
    "INT8PACK_MAX_ROWS",
    "DEQUANT_BLOCK_ROWS",
    "Q4_BLOCK",
    "Q4_PANEL",
    "BF16Linear",
    "Int8Linear",
    "Q4Linear",
    "quantize_",
    "quantize_weight",
    "quantize_q4_0",
]

WEIGHTS = ("fp32", "bf16", "int8", "q4")
# The output head's precision when quantize_ is not told (others: the projections' own precision).
DEFAULT_HEAD = {"q4": "int8"}
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


# ---- 4-bit weights: GGUF Q4_0 -------------------------------------------------------------------

Q4_BLOCK = 32  # weights per scale along the input dimension (GGUF / llama.cpp QK4_0)
Q4_PANEL = 16  # output rows interleaved in Q4Linear's packed layout (see Q4Linear)
_Q4_0_BYTES = 2 + Q4_BLOCK // 2  # one GGUF Q4_0 block: fp16 d, then 16 bytes of 4-bit codes


def quantize_q4_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[out, in]`` float weight -> ``(codes [out, in] uint8 in 0..15, d [out, in / 32] float16)``.

    GGUF Q4_0 bit for bit, as llama.cpp's ``quantize_row_q4_0_ref`` and ``gguf.quants.quantize``: per
    block of 32 inputs, ``m`` is the block's value of largest magnitude (the first one on ties), ``d =
    m / -8`` in fp32, ``code = min(15, trunc(w * (1 / d) + 8.5))`` in fp32 (0 where ``d == 0``), and
    ``d`` is stored as fp16. The weight represented is ``d_fp16 * (code - 8)``: the largest-magnitude
    value maps to code 0 (``-8 d = m``), the others to ``round(w / d) + 8`` clipped to 15. ``in`` must
    be a multiple of 32.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    N, K = weight.shape
    if K % Q4_BLOCK:
        raise ValueError(f"Q4_0 needs in_features divisible by {Q4_BLOCK}, got {K}")
    w = weight.detach().float().reshape(N, K // Q4_BLOCK, Q4_BLOCK)
    if not torch.isfinite(w).all():
        raise ValueError("cannot quantize a weight with NaN or infinite values")
    m = w.gather(-1, w.abs().argmax(dim=-1, keepdim=True))  # argmax: the first maximum, as llama.cpp
    d = m / -8.0
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    codes = (w * inv + 8.5).trunc_().clamp_(0, 15).to(torch.uint8)  # two fp32 roundings, as the C code
    return codes.reshape(N, K), d.reshape(N, -1).to(torch.float16)


def _q4_0_to_bytes(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Codes ``[N, K]`` and fp16 ``d [N, K/32]`` -> the GGUF bytes ``[N, K/32 * 18]`` (uint8)."""
    N, K = codes.shape
    c = codes.reshape(N, K // Q4_BLOCK, 2, Q4_BLOCK // 2)
    qs = c[:, :, 0] | (c[:, :, 1] << 4)  # byte j: element j (low nibble), element j + 16 (high)
    db = d.contiguous().view(torch.uint8).reshape(N, K // Q4_BLOCK, 2)  # fp16, little-endian
    return torch.cat([db, qs], dim=-1).reshape(N, -1)


def _q4_0_from_bytes(data: torch.Tensor, N: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`_q4_0_to_bytes`."""
    blocks = data.reshape(N, K // Q4_BLOCK, _Q4_0_BYTES)
    d = blocks[..., :2].contiguous().view(torch.float16).reshape(N, K // Q4_BLOCK)
    qs = blocks[..., 2:]
    codes = torch.stack([qs & 15, qs >> 4], dim=2).reshape(N, K)
    return codes, d


def _q4_pack(codes: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[N, K]`` (K a multiple of 32) and fp16 ``d [N, K/32]`` -> Q4Linear's buffers.

    Rows are padded to a multiple of 16 with zero weights (code 8, d 0). See :class:`Q4Linear` for
    the layout.
    """
    N, K = codes.shape
    KB, P = K // Q4_BLOCK, -(-N // Q4_PANEL)
    if P * Q4_PANEL != N:
        codes = torch.cat([codes, codes.new_full((P * Q4_PANEL - N, K), 8)])
        d = torch.cat([d, d.new_zeros(P * Q4_PANEL - N, KB)])
    c = codes.reshape(P, Q4_PANEL, KB, 8, 4).permute(0, 2, 3, 1, 4)  # [panel, block, group g, row, j]
    qweight = (c[:, :, :4] | (c[:, :, 4:] << 4)).reshape(P, KB, 256).contiguous()
    scales = d.reshape(P, Q4_PANEL, KB).transpose(1, 2).contiguous().view(torch.int16)
    return qweight, scales


def _q4_unpack(qweight: torch.Tensor, scales: torch.Tensor, rows: slice | None = None):
    """Q4Linear's buffers -> ``(codes [R, K_pad] uint8, d [R, K_pad/32] fp16)`` for the padded rows
    ``rows`` (a slice of whole panels' rows; default all)."""
    P, KB, _ = qweight.shape
    if rows is not None:
        p0, p1 = rows.start // Q4_PANEL, -(-rows.stop // Q4_PANEL)
        qweight, scales = qweight[p0:p1], scales[p0:p1]
        P = p1 - p0
    q = qweight.reshape(P, KB, 4, Q4_PANEL, 4)
    c = torch.cat([q & 15, q >> 4], dim=2)  # [panel, block, g (0..7), row, j]
    codes = c.permute(0, 3, 1, 2, 4).reshape(P * Q4_PANEL, KB * Q4_BLOCK)
    d = scales.view(torch.float16).transpose(1, 2).reshape(P * Q4_PANEL, KB)
    if rows is not None:
        r0 = rows.start - p0 * Q4_PANEL
        codes, d = codes[r0 : r0 + rows.stop - rows.start], d[r0 : r0 + rows.stop - rows.start]
    return codes, d


def _q4_dequant(qweight: torch.Tensor, scales: torch.Tensor, rows: slice, in_features: int,
                dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """Rows ``rows`` of a packed 4-bit weight, ``d * (code - 8)`` in fp32 (exact), then ``dtype``."""
    codes, d = _q4_unpack(qweight, scales, rows)
    w = (codes.float() - 8.0).reshape(codes.shape[0], d.shape[1], Q4_BLOCK) * d.float()[:, :, None]
    return w.reshape(codes.shape[0], d.shape[1] * Q4_BLOCK)[:, :in_features].to(dtype)


def _kernels_module():
    """:mod:`rwkvkit.inference.kernels.gemv` (imported late: it imports this module)."""
    return importlib.import_module("rwkvkit.inference.kernels.gemv")


class Q4Linear(nn.Module):
    """A linear layer with 4-bit weights: GGUF / llama.cpp Q4_0 values in a layout made for streaming.

    The weight is ``w[n, k] = d[n, k // 32] * (code[n, k] - 8)``: per output row, groups of 32 inputs
    share one fp16 scale ``d``, codes are 0..15. The values are GGUF Q4_0's exactly: build the layer
    with :meth:`from_linear` (quantizes as llama.cpp does, :func:`quantize_q4_0`) or
    :meth:`from_q4_0` (a GGUF tensor's bytes, no requantization); :meth:`to_q4_0` gives the bytes back.
    ``in_features`` not divisible by 32 is padded with zero weights (such a layer has no GGUF form).

    Buffers (the state dict), for P = ceil(out / 16) panels of 16 rows and KB = ceil(in / 32) blocks:

    * ``qweight [P, KB, 256]`` uint8: panel p, block b holds the 16 x 32 codes of rows 16p..16p+15,
      inputs 32b..32b+31, as 4 chunks of 64 bytes; byte ``64t + 4r + j`` holds row r's code of input
      ``32b + 4t + j`` in its low nibble and of input ``32b + 16 + 4t + j`` in its high nibble.
      Masking a 64-byte chunk with 0x0F (or shifting it right by 4) gives 4 consecutive inputs of 16
      rows, which one ``vpdpbusd`` multiplies by 4 broadcast int8 activations into 16 row sums.
    * ``scales [P, KB, 16]`` int16: the fp16 bit patterns of ``d`` (int16 so that ``model.to(dtype)``
      leaves them alone), 16 rows of a panel per block.
    * ``bias [out]`` (fp32) when the source layer had one.

    ``forward`` takes any float input ``[..., in]`` and returns its dtype. On CPU with the kernel
    extension: up to ``MAX_GEMV_ROWS`` rows go to the 4-bit matrix-vector kernel (activations
    quantized to int8 per block of 32, :func:`rwkvkit.inference.kernels.gemv.gemv_q4`); more rows
    (prefill) to blocks of :data:`DEQUANT_BLOCK_ROWS` rows dequantized to bf16 and multiplied by
    oneDNN (weights rounded to bf16 on the way). Elsewhere (other devices, autograd, no kernel,
    ``use_kernels = False``): ``F.linear`` with the fp32 :meth:`dequantize`, the reference.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        P, KB = -(-out_features // Q4_PANEL), -(-in_features // Q4_BLOCK)
        # all codes 8 and scales 0: a zero weight
        self.register_buffer("qweight", torch.full((P, KB, 256), 0x88, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(P, KB, Q4_PANEL, dtype=torch.int16, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.use_kernels = True  # False: the PyTorch reference only (optimize(kernels=False))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Q4Linear:
        """Quantize an ``nn.Linear`` (any float dtype, read in fp32) as llama.cpp quantizes to Q4_0."""
        w = linear.weight.detach()
        N, K = w.shape
        pad = -K % Q4_BLOCK
        if pad:  # zero inputs: the last block quantizes as if it were 32 wide
            w = torch.cat([w.float(), w.new_zeros(N, pad, dtype=torch.float32)], dim=1)
        m = cls(K, N, bias=False, device=w.device)
        m.qweight, m.scales = _q4_pack(*quantize_q4_0(w))
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m

    @classmethod
    def from_q4_0(cls, data, out_features: int, in_features: int) -> Q4Linear:
        """The layer of a GGUF Q4_0 tensor, without requantization.

        Args:
            data: the tensor's raw bytes as GGUF stores them (a uint8 ``torch.Tensor`` or numpy array
                of any shape with ``out * in / 32 * 18`` elements; ``gguf.GGUFReader`` gives
                ``tensor.data`` as ``[out, in / 32 * 18]``): per row, ``in / 32`` blocks of an fp16
                ``d`` (little-endian) and 16 bytes of codes (byte j: input j in the low nibble,
                input j + 16 in the high one).
            out_features, in_features: the weight's shape ``[out, in]`` (GGUF's ``ne`` is
                ``(in, out)``); ``in`` must be a multiple of 32.
        """
        if in_features % Q4_BLOCK:
            raise ValueError(f"Q4_0 needs in_features divisible by {Q4_BLOCK}, got {in_features}")
        t = torch.as_tensor(data)  # a numpy array's memory is shared, not copied
        if t.dtype not in (torch.uint8, torch.int8):
            raise ValueError(f"from_q4_0: expected the raw uint8 bytes, got {t.dtype}")
        expect = out_features * in_features // Q4_BLOCK * _Q4_0_BYTES
        if t.numel() != expect:
            raise ValueError(
                f"from_q4_0: [{out_features}, {in_features}] needs {expect} bytes, got {t.numel()}"
            )
        t = t.reshape(-1).view(torch.uint8).cpu()
        m = cls(in_features, out_features)
        m.qweight, m.scales = _q4_pack(*_q4_0_from_bytes(t, out_features, in_features))
        return m

    def to_q4_0(self) -> torch.Tensor:
        """The GGUF Q4_0 bytes of the weight, uint8 ``[out, in / 32 * 18]`` (see :meth:`from_q4_0`).

        For a layer made by :meth:`from_linear`, equal to ``gguf.quants.quantize(w, Q4_0)`` of the
        source weight ``w``. Raises ValueError when ``in_features`` is not a multiple of 32.
        """
        if self.in_features % Q4_BLOCK:
            raise ValueError(f"Q4_0 needs in_features divisible by {Q4_BLOCK}, got {self.in_features}")
        codes, d = _q4_unpack(self.qweight.cpu(), self.scales.cpu(), slice(0, self.out_features))
        return _q4_0_to_bytes(codes.contiguous(), d.contiguous())

    def dequantize(self, rows: slice | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight ``d * (code - 8)`` as ``[out, in]`` (or the rows ``rows`` of it) in ``dtype``.

        Computed in fp32 (exact: a 4-bit integer times an fp16 number), then rounded to ``dtype``.
        """
        rows = slice(0, self.out_features) if rows is None else slice(*rows.indices(self.out_features)[:2])
        return _q4_dequant(self.qweight, self.scales, rows, self.in_features, dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )

    # ---- forward --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in]`` -> ``[..., out]`` in ``x``'s dtype."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Q4Linear expects inputs [..., {self.in_features}], got {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        kmod = _kernels_module()
        grad = x.requires_grad and torch.is_grad_enabled()
        if x.device.type != "cpu" or grad or x2.shape[0] == 0 or not self.use_kernels or not kmod.available():
            y = F.linear(x2, self.dequantize(dtype=x2.dtype if x2.is_floating_point() else torch.float32))
        elif x2.shape[0] <= kmod.MAX_GEMV_ROWS:
            y = kmod.gemv_q4(x2.float(), self.qweight, self.scales, self.out_features)
        else:
            y = self._dequant_bf16(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _dequant_bf16(self, x2: torch.Tensor) -> torch.Tensor:
        """``x_bf16 @ W_bf16^T`` in fp32, ``W`` dequantized (C++ kernel) a block of rows at a time."""
        kmod = _kernels_module()
        xb, n = x2.to(torch.bfloat16), self.out_features
        y = torch.empty(xb.shape[0], n, dtype=torch.float32, device=xb.device)
        for i in range(0, n, DEQUANT_BLOCK_ROWS):
            j = min(i + DEQUANT_BLOCK_ROWS, n)
            w = kmod.q4_dequant(self.qweight, self.scales, i, j, self.in_features)
            y[:, i:j] = F.linear(xb, w)
        return y


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
    """``(parent, attribute, module)`` for every linear layer (nn.Linear and its subclasses, Int8Linear,
    Q4Linear)."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Linear, Int8Linear, Q4Linear)):
                found.append((parent, name, child))
    return found


@torch.no_grad()
def quantize_(model: nn.Module, weights: str, head: str | None = None) -> nn.Module:
    """Store ``model``'s projections in ``weights`` precision, in place; returns ``model``.

    Args:
        model: an RWKV model of any version (or any module: every ``nn.Linear`` is a projection).
        weights: ``"fp32"`` (``nn.Linear``), ``"bf16"`` (:class:`BF16Linear`), ``"int8"``
            (:class:`Int8Linear`) or ``"q4"`` (:class:`Q4Linear`).
        head: the precision of the output head (``model.head``), one of :data:`WEIGHTS`; None gives
            :data:`DEFAULT_HEAD` for ``weights`` (``weights`` itself except for q4).

    Every other parameter and buffer (embedding, norms, decay/bonus/token-shift parameters, LoRA
    matrices) is kept in fp32, or brought to fp32 if it was in a lower precision (lossless; fp64 stays
    fp64): they must stay in high precision, and so does the residual stream, whose dtype is the
    embedding's. The result is for inference: parameters no longer require grad.

    Raises:
        ConfigError: ``weights`` or ``head`` is not one of :data:`WEIGHTS`, or quantized (int8, q4)
            layers would be turned into another precision (quantize the original model instead).
    """
    for what, value in (("weights", weights), ("head", weights if head is None else head)):
        if value not in WEIGHTS:
            raise ConfigError(f"{what} must be one of {', '.join(WEIGHTS)}, got {value!r}")
    head = DEFAULT_HEAD.get(weights, weights) if head is None else head
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
        want = head if (parent is model and name == "head") else weights
        stored = {Int8Linear: "int8", Q4Linear: "q4"}.get(type(m))
        if stored is not None:
            if want != stored:
                raise ConfigError(f"{name} is already {stored}; quantize the original model to {want}")
            continue
        if want == "q4":
            new: nn.Module = Q4Linear.from_linear(m)
        elif want == "int8":
            new = Int8Linear.from_linear(m)
        elif want == "bf16":
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
