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
  float* y;            // [M, N], contiguous
  int64_t M, N, K;
};

using PanelFn = void (*)(const Problem&, int64_t, int64_t);

// Instruction sets, as the operators' `isa` argument numbers them.
enum Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };

bool cpu_has(Isa isa);  // whether this CPU can run `isa` (kScalar: always)
int64_t best_isa();     // the best of kScalar / kAvx2 / kAvx512 for this CPU
// The panel function for a resolved isa (kScalar..kAvx512) and a weight dtype (float, bfloat16, int8).
PanelFn panel_fn(int64_t isa, at::ScalarType dt);

}  // namespace rwkvkit_gemv
