// Internals of gemv.cpp shared with the other kernels of the extension (rwkv7_decode.cpp).
//
// A product y[M, N] = (x[M, K] @ W[N, K]^T) * scale[N] is a `Problem`; its N rows of W are cut into
// panels of kPanel rows, and `panel_fn(isa, dtype)` returns the function that computes the rows of
// y for a range of panels [p0, p1) (single-threaded: the caller spreads panels over threads).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace rwkvkit_gemv {

// Rows per panel: a multiple of every tile height used in gemv.cpp (1, 2, 3, 4, 6), so that a panel
// splits into whole tiles; small enough that a panel stays in cache while the chunks of x reuse it.
constexpr int64_t kPanel = 12;

// What every ISA path computes: rows [p0, p1) of panels, for all M rows of x.
struct Problem {
  const float* x;      // [M, K], contiguous
  const void* w;       // [N, K], contiguous, fp32 / bf16 / int8
  const float* scale;  // [N] or nullptr
  float* y;            // [M, N], rows ldy apart
  int64_t M, N, K;
  int64_t ldy;         // the row stride of y (>= N)
};

using PanelFn = void (*)(const Problem&, int64_t, int64_t);

// Instruction sets, as the operators' `isa` argument numbers them. kAvx512Vnni matters only to the
// kernels with int8 activations (qgemv.cpp); the float kernels treat it as kAvx512.
enum Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3, kAvx512Vnni = 4 };

bool cpu_has(Isa isa);  // whether this CPU can run `isa` (kScalar: always)
int64_t best_isa();     // the best of kScalar / kAvx2 / kAvx512 for this CPU (the float kernels')
// The panel function for a resolved isa (kScalar..kAvx512Vnni) and a weight dtype (float, bfloat16,
// int8).
PanelFn panel_fn(int64_t isa, at::ScalarType dt);

// ---- 4-bit weights (qgemv.cpp) ----------------------------------------------------------------
//
// y[M, N] = x[M, K] @ W[N, K]^T with W in Q4Linear's packed layout (GGUF Q4_0 values: per row and
// block of 32 inputs an fp16 scale d and codes 0..15, w = d * (code - 8); panels of kQ4Panel rows,
// see rwkvkit/inference/quant.py) and x quantized to int8 per block of 32 (quantize_rows):
//     y[m, n] = sum_b d[n, b] * xd[m, b] * (sum_{k in b} code[n, k] * xq[m, k] - 8 * xs[m, b]).
constexpr int64_t kQ4Panel = 16;  // rows per panel (one 512-bit vector of int32 row sums)
constexpr int64_t kQ4Block = 32;  // inputs per block (one scale)
constexpr int64_t kQ4PanelBlockBytes = kQ4Panel * kQ4Block / 2;  // 256 bytes of codes

struct QProblem {
  const int8_t* xq;   // [M, KB * 32] activations as int8 (zero beyond K)
  const float* xd;    // [M, KB] their scales: x ~= xq * xd
  const int32_t* xs;  // [M, KB] sums of xq per block
  const uint8_t* w;   // [P, KB, 256] codes
  const uint16_t* d;  // [P, KB, 16] fp16 scales of the weights
  float* y;           // [M, N], rows ldy apart
  int64_t M, N, KB;
  int64_t ldy;        // the row stride of y (>= N)
};

using QPanelFn = void (*)(const QProblem&, int64_t, int64_t);

// ---- int8 weights with int8 activations (qgemv.cpp) --------------------------------------------
//
// y[M, N] = (x[M, K] @ W[N, K]^T) * scale[N], W int8 row-major (Int8Linear's), x quantized to int8 per
// block of 32 as above: y[m, n] = scale[n] * sum_b xd[m, b] * sum_{k in b} w[n, k] * xq[m, k].
struct I8Problem {
  const int8_t* xq;    // [M, KB * 32] activations as int8 (zero beyond K)
  const float* xd;     // [M, KB] their scales
  const int32_t* xs;   // [M, KB] sums of xq per block
  const int8_t* w;     // [N, K] row-major
  const float* scale;  // [N] per-row scales
  float* y;            // [M, N], rows ldy apart
  int64_t M, N, K, ldy;
};

using I8PanelFn = void (*)(const I8Problem&, int64_t, int64_t);  // panels of kPanel rows

// The best isa for the kernels with int8 activations, "qisa" (kAvx512Vnni where the CPU has it).
int64_t best_qisa();
// Rows [p0 * kPanel, p1 * kPanel) of W for all M rows of x, single-threaded.
I8PanelFn i8_panel_fn(int64_t isa);
// Rows [p0, p1) of panels for all M rows of x, single-threaded.
QPanelFn q4_panel_fn(int64_t isa);
// Quantize the M rows of x [M, K] (row stride K): per block of 32 inputs, d = max|x| / 127,
// xq = round-half-even(x * (1 / d)) (0 where d = 0), xs = sum of xq. Bit-identical on every isa.
void quantize_rows(int64_t isa, const float* x, int64_t M, int64_t K, int8_t* xq, float* xd, int32_t* xs);

}  // namespace rwkvkit_gemv
