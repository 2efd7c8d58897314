// Batch-small matrix-vector product for CPU decoding: y[M, N] = (x[M, K] @ W[N, K]^T) * scale[N].
//
// Decoding one token reads every weight once, so the product is bound by memory bandwidth, not by
// arithmetic: the kernel's job is to stream W at the speed of memory with all cores. Design:
//
//   * W is read row by row, in panels of kPanel rows; OpenMP threads (torch's pool, through
//     at::parallel_for) take contiguous ranges of panels, so each core streams its own part of W.
//   * Inside a panel, the rows of x are processed in chunks of at most kMaxMB (AVX-512) rows; for
//     each chunk, tiles of RB weight rows x MB input rows accumulate MB * RB dot products in
//     registers. The panel (<= 12 rows, <= ~150 KB for K = 3072 fp32) stays in L1/L2 while the
//     chunks of x go over it, so DRAM sees every weight byte once whatever M is.
//   * Weights are widened to fp32 in registers (bf16: shift left by 16 bits, exact; int8: sign
//     extension then int -> float, exact) and accumulated with fp32 FMA. Only the summation order
//     differs from the PyTorch reference, so results agree to ~1e-6 relative.
//   * The K tail (K not a multiple of the vector width) uses masked loads on AVX-512 (masked-out
//     bytes are never touched, so reading past the row end cannot fault) and a scalar loop on AVX2.
//
// ISA dispatch happens at run time (__builtin_cpu_supports), the SIMD code being compiled with
// `#pragma GCC target` rather than -march=native: a cached build then stays valid on a machine
// with another CPU (the build cache can be a shared home directory), and a CPU without AVX-512
// takes the AVX2 path, or the plain C++ one.
//
// Exposed as the operator torch.ops.rwkvkit_kernels.gemv(x, w, scale, isa) (TORCH_LIBRARY rather
// than a pybind11 module: it compiles several times faster, torch/extension.h being very large).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace rwkvkit_gemv {
namespace {

// kPanel and Problem: see gemv.h (shared with rwkv7_decode.cpp).

// Chunks of x rows: M split into ceil(M / max_mb) chunks of near-equal size (M = 9 with max 8 gives
// 5 + 4, not 8 + 1: a 1-row chunk would redo the weight conversions for little arithmetic).
inline int64_t n_chunks(int64_t M, int max_mb) { return (M + max_mb - 1) / max_mb; }
inline int64_t chunk_begin(int64_t M, int64_t nc, int64_t c) { return (M * c) / nc; }

// ------------------------------------------------------------------------------------------------
// Plain C++ path: any x86-64 (or other) CPU. Correct, not fast: used only without AVX2.
// ------------------------------------------------------------------------------------------------
namespace scalar {

inline float widen(float v) { return v; }
inline float widen(int8_t v) { return static_cast<float>(v); }
inline float widen(uint16_t v) {  // bf16 bits -> fp32: the bf16 is the top half of the fp32
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
void panels(const Problem& p, int64_t p0, int64_t p1) {
  const T* W = static_cast<const T*>(p.w);
  const int64_t n1 = std::min(p.N, p1 * kPanel);
  for (int64_t n = p0 * kPanel; n < n1; ++n) {
    const T* wr = W + n * p.K;
    const float s = p.scale ? p.scale[n] : 1.0f;
    for (int64_t m = 0; m < p.M; ++m) {
      const float* xr = p.x + m * p.K;
      float acc = 0.0f;
      for (int64_t k = 0; k < p.K; ++k) acc += xr[k] * widen(wr[k]);
      p.y[m * p.ldy + n] = p.scale ? acc * s : acc;
    }
  }
}

}  // namespace scalar

// ------------------------------------------------------------------------------------------------
// AVX2 + FMA path (8 lanes, 16 ymm registers): Intel since Haswell, AMD since Zen 1.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

constexpr int kMaxMB = 4;

// 8 weights -> 8 fp32 lanes. `T` is the storage type of W; `one` widens a single tail element.
struct F32 {
  using T = float;
  static inline __m256 load(const T* p) { return _mm256_loadu_ps(p); }
  static inline float one(T v) { return v; }
};
struct BF16 {
  using T = uint16_t;
  static inline __m256 load(const T* p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static inline float one(T v) { return scalar::widen(v); }
};
struct I8 {
  using T = int8_t;
  static inline __m256 load(const T* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static inline float one(T v) { return static_cast<float>(v); }
};

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One tile: MB rows of x (stride K) against RB rows of W, results to y (row stride N).
template <class L, int MB, int RB>
static inline void tile(const float* x, const typename L::T* w, const float* scale, float* y, int64_t K,
                        int64_t N) {
  __m256 acc[MB][RB];
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[m][r] = _mm256_setzero_ps();
  // Prefetch the next tile (see the AVX-512 tile for the reason).
  constexpr int64_t kStep = RB * 8 * sizeof(typename L::T);
  const char* pf = reinterpret_cast<const char*>(w + RB * K);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8, pf += kStep) {
#pragma GCC unroll 16
    for (int64_t b = 0; b < kStep; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
    __m256 wv[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) wv[r] = L::load(w + r * K + k);
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * K + k);
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < RB; ++r) {
      float s = hsum(acc[m][r]);
      for (int64_t kk = k; kk < K; ++kk) s += x[m * K + kk] * L::one(w[r * K + kk]);  // K % 8 tail
      y[m * N + r] = scale ? s * scale[r] : s;
    }
}

// All x rows [m0, m0 + MB) against weight rows [n0, n1): tiles of RB rows, then single rows.
template <class L, int MB, int RB>
static void rows(const Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  const auto* W = static_cast<const typename L::T*>(p.w);
  const float* x = p.x + m0 * p.K;
  float* y = p.y + m0 * p.ldy;
  const float* sc = p.scale;
  int64_t n = n0;
  for (; n + RB <= n1; n += RB) tile<L, MB, RB>(x, W + n * p.K, sc ? sc + n : nullptr, y + n, p.K, p.ldy);
  for (; n < n1; ++n) tile<L, MB, 1>(x, W + n * p.K, sc ? sc + n : nullptr, y + n, p.K, p.ldy);
}


// Tile heights: RB * MB accumulators + RB weight vectors + 1 x vector fit the 16 ymm registers.
template <class L>
static void rows_mb(const Problem& p, int64_t m0, int64_t mb, int64_t n0, int64_t n1) {
  switch (mb) {
    case 1: return rows<L, 1, 4>(p, m0, n0, n1);
    case 2: return rows<L, 2, 4>(p, m0, n0, n1);
    case 3: return rows<L, 3, 3>(p, m0, n0, n1);
    default: return rows<L, 4, 2>(p, m0, n0, n1);
  }
}

template <class L>
void panels(const Problem& p, int64_t p0, int64_t p1) {
  const int64_t nc = n_chunks(p.M, kMaxMB);
  for (int64_t q = p0; q < p1; ++q) {
    const int64_t n0 = q * kPanel, n1 = std::min(p.N, n0 + kPanel);
    for (int64_t c = 0; c < nc; ++c) {  // every chunk of x over the same (cached) panel of W
      const int64_t m0 = chunk_begin(p.M, nc, c), m1 = chunk_begin(p.M, nc, c + 1);
      rows_mb<L>(p, m0, m1 - m0, n0, n1);
    }
  }
}

}  // namespace avx2
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// AVX-512 path (16 lanes, 32 zmm registers, masked loads): Intel Skylake-SP and later, AMD Zen 4+.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {

constexpr int kMaxMB = 8;

// 16 weights -> 16 fp32 lanes; `load_tail` reads only the lanes set in `m` (others are zero).
struct F32 {
  using T = float;
  static inline __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static inline __m512 load_tail(const T* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct BF16 {
  using T = uint16_t;
  static inline __m512 widen(__m256i v) {  // zero-extend to 32 bits, shift into the high half
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
  static inline __m512 load(const T* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __m512 load_tail(const T* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};
struct I8 {
  using T = int8_t;
  static inline __m512 widen(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }
  static inline __m512 load(const T* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static inline __m512 load_tail(const T* p, __mmask16 m) { return widen(_mm_maskz_loadu_epi8(m, p)); }
};

// One tile: MB rows of x (stride K) against RB rows of W (stride K), results to y (row stride N).
// The MB * RB accumulators are independent FMA chains, which also hides the FMA latency.
template <class L, int MB, int RB>
static inline void tile(const float* x, const typename L::T* w, const float* scale, float* y, int64_t K,
                        int64_t N) {
  __m512 acc[MB][RB];
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[m][r] = _mm512_setzero_ps();
  // Software prefetch: the RB rows of the next tile follow this tile's rows in memory. The hardware
  // prefetchers lose track of RB short interleaved streams (measured: 7 instead of 27 GB/s for int8
  // on one Zen 4 core), so fetch the next tile ourselves, spread evenly over this tile's iterations:
  // kStep bytes of it per iteration, as many as this iteration consumes.
  constexpr int64_t kStep = RB * 16 * sizeof(typename L::T);
  const char* pf = reinterpret_cast<const char*>(w + RB * K);  // may point past W: prefetches never fault
  int64_t k = 0;
  for (; k + 16 <= K; k += 16, pf += kStep) {
#pragma GCC unroll 16
    for (int64_t b = 0; b < kStep; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
    __m512 wv[RB];  // each weight vector is loaded and widened once, used by all MB rows of x
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) wv[r] = L::load(w + r * K + k);
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  if (k < K) {  // K % 16 tail: masked lanes load as 0 in both x and W, so they add nothing
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 wv[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) wv[r] = L::load_tail(w + r * K + k, mask);
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const float s = _mm512_reduce_add_ps(acc[m][r]);
      y[m * N + r] = scale ? s * scale[r] : s;
    }
}

template <class L, int MB, int RB>
static void rows(const Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  const auto* W = static_cast<const typename L::T*>(p.w);
  const float* x = p.x + m0 * p.K;
  float* y = p.y + m0 * p.ldy;
  const float* sc = p.scale;
  int64_t n = n0;
  for (; n + RB <= n1; n += RB) tile<L, MB, RB>(x, W + n * p.K, sc ? sc + n : nullptr, y + n, p.K, p.ldy);
  for (; n < n1; ++n) tile<L, MB, 1>(x, W + n * p.K, sc ? sc + n : nullptr, y + n, p.K, p.ldy);
}

// One row of x (M = 1, batch-1 decoding): the weight rows are read one after the other, so each
// thread reads its range of W as one sequential stream, which the hardware prefetchers follow best
// (measured on Zen 4, 2 threads, bf16, 0.1B-model shapes: ~85 % of a plain sum's read bandwidth,
// against ~70 % for the interleaved tiles with software prefetch). Four accumulators per row.
// fp32 and bf16 weights only (see rows_mb).
template <class L>
static void rows_m1(const Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  const auto* W = static_cast<const typename L::T*>(p.w);
  const float* x = p.x + m0 * p.K;
  float* y = p.y + m0 * p.ldy;
  const int64_t K = p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const typename L::T* w = W + n * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), L::load(w + k), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), L::load(w + k + 16), a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 32), L::load(w + k + 32), a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 48), L::load(w + k + 48), a3);
    }
    for (; k + 16 <= K; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), L::load(w + k), a0);
    if (k < K) {  // masked lanes load as 0 in both x and W
      const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1u);
      a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + k), L::load_tail(w + k, mask), a1);
    }
    const float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    y[n] = p.scale ? s * p.scale[n] : s;
  }
}

// Tile heights: MB * RB <= 24 accumulators + RB weight vectors + 1 x vector within 32 zmm registers.
// Larger RB for small MB gives more independent FMA chains and fewer x loads per weight vector.
template <class L>
static void rows_mb(const Problem& p, int64_t m0, int64_t mb, int64_t n0, int64_t n1) {
  switch (mb) {
    case 1:  // int8: the interleaved tiles measured faster (its widening is heavier: more rows in flight)
      if constexpr (std::is_same_v<L, I8>) return rows<L, 1, 6>(p, m0, n0, n1);
      else return rows_m1<L>(p, m0, n0, n1);
    case 2: return rows<L, 2, 6>(p, m0, n0, n1);
    case 3: return rows<L, 3, 4>(p, m0, n0, n1);
    case 4: return rows<L, 4, 4>(p, m0, n0, n1);
    case 5: return rows<L, 5, 4>(p, m0, n0, n1);
    case 6: return rows<L, 6, 3>(p, m0, n0, n1);
    case 7: return rows<L, 7, 3>(p, m0, n0, n1);
    default: return rows<L, 8, 3>(p, m0, n0, n1);
  }
}

template <class L>
void panels(const Problem& p, int64_t p0, int64_t p1) {
  const int64_t nc = n_chunks(p.M, kMaxMB);
  for (int64_t q = p0; q < p1; ++q) {
    const int64_t n0 = q * kPanel, n1 = std::min(p.N, n0 + kPanel);
    for (int64_t c = 0; c < nc; ++c) {  // every chunk of x over the same (cached) panel of W
      const int64_t m0 = chunk_begin(p.M, nc, c), m1 = chunk_begin(p.M, nc, c + 1);
      rows_mb<L>(p, m0, m1 - m0, n0, n1);
    }
  }
}

}  // namespace avx512
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// Dispatch and the operator.
// ------------------------------------------------------------------------------------------------

}  // namespace

// cpu_has, best_isa and panel_fn have external linkage: declared in gemv.h for the other kernels.
bool cpu_has(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case kScalar: return true;
    case kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case kAvx512Vnni: return cpu_has(kAvx512) && __builtin_cpu_supports("avx512vnni");
    default: return false;
  }
}

// The best ISA of this CPU, detected once (the answer cannot change while the process runs).
int64_t best_isa() {
  static const int64_t isa = cpu_has(kAvx512) ? kAvx512 : cpu_has(kAvx2) ? kAvx2 : kScalar;
  return isa;
}

PanelFn panel_fn(int64_t isa, at::ScalarType dt) {
  const int which = dt == at::kFloat ? 0 : dt == at::kBFloat16 ? 1 : 2;
  static const PanelFn table[3][3] = {
      {scalar::panels<float>, scalar::panels<uint16_t>, scalar::panels<int8_t>},
      {avx2::panels<avx2::F32>, avx2::panels<avx2::BF16>, avx2::panels<avx2::I8>},
      {avx512::panels<avx512::F32>, avx512::panels<avx512::BF16>, avx512::panels<avx512::I8>},
  };
  return table[std::min<int64_t>(isa, kAvx512) - kScalar][which];  // kAvx512Vnni: the AVX-512 kernels
}

namespace {

// y = (x @ w^T) * scale. `isa` 0 picks the best for this CPU; 1/2/3 force plain C++/AVX2/AVX-512
// (for tests; an ISA the CPU lacks is an error, never a crash).
at::Tensor gemv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& scale, int64_t isa) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "gemv: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "gemv: x must be a contiguous float32 [M, K] tensor");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "gemv: w must be a contiguous [N, K] tensor");
  const at::ScalarType dt = w.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kChar, "gemv: w must be float32, bfloat16 or int8");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "gemv: x is [M, ", K, "] but w is [", N, ", ", w.size(1), "]");
  const float* sp = nullptr;
  if (scale.has_value()) {
    const at::Tensor& s = *scale;
    TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kFloat && s.is_contiguous() && s.dim() == 1 &&
                    s.size(0) == N,
                "gemv: scale must be a contiguous float32 [N] tensor");
    sp = s.data_ptr<float>();
  }
  if (isa == kAuto) isa = best_isa();
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512, "gemv: isa must be 0 (auto), 1, 2 or 3");
  TORCH_CHECK(cpu_has(static_cast<Isa>(isa)), "gemv: this CPU lacks the requested instruction set");

  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();

  const Problem p{x.data_ptr<float>(), w.data_ptr(), sp, y.data_ptr<float>(), M, N, K, N};
  const PanelFn fn = panel_fn(isa, dt);
  const int64_t n_panels = (N + kPanel - 1) / kPanel;
  // Grain: a thread gets at least ~64 KB of weights; below that the OpenMP fork/join (a few us)
  // costs more than the second core saves. 768 x 768 bf16 (1.2 MB) still splits over 2 cores.
  const int64_t panel_bytes = kPanel * K * static_cast<int64_t>(w.element_size());
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, panel_bytes));
  at::parallel_for(0, n_panels, grain, [&](int64_t p0, int64_t p1) { fn(p, p0, p1); });
  return y;
}

int64_t selected_isa() { return best_isa(); }

}  // namespace
}  // namespace rwkvkit_gemv

TORCH_LIBRARY(rwkvkit_kernels, m) {
  m.def("gemv(Tensor x, Tensor w, Tensor? scale=None, int isa=0) -> Tensor");
  m.def("selected_isa() -> int", &rwkvkit_gemv::selected_isa);
}

TORCH_LIBRARY_IMPL(rwkvkit_kernels, CPU, m) { m.impl("gemv", &rwkvkit_gemv::gemv); }
