// Matrix-vector products with int8 activations for CPU decoding: 4-bit weights (GGUF Q4_0 values in
// Q4Linear's packed layout) and int8 weights (Int8Linear's); and the 4-bit weights' dequantization
// for prefill.
//
//   rwkvkit_kernels::gemv_q4(Tensor x, Tensor qweight, Tensor scales, int N, int isa=0) -> Tensor y
//       y [M, N] float32 = x [M, K] float32 @ W^T, W [N, K] held as qweight [P, KB, 256] uint8 and
//       scales [P, KB, 16] int16 (fp16 bits), P = ceil(N / 16), KB = ceil(K / 32).
//   rwkvkit_kernels::q4_dequant(Tensor qweight, Tensor scales, int row0, int row1, int K) -> Tensor
//       rows [row0, row1) of W as bfloat16 [row1 - row0, K]: d * (code - 8) in fp32, rounded to
//       nearest even (what torch's .to(torch.bfloat16) does).
//   rwkvkit_kernels::gemv_int8(Tensor x, Tensor w, Tensor scale, int isa=0) -> Tensor y
//       y [M, N] float32 = (x [M, K] @ w^T) * scale for int8 w [N, K] (Int8Linear's) and per-row
//       float32 scale [N], x quantized to int8 per block of 32 as for gemv_q4.
//   rwkvkit_kernels::quantize_activations(Tensor x, int isa=0) -> (Tensor xq, Tensor xd)
//       the int8 activations gemv_q4 / gemv_int8 multiply (tests): xq [M, KB * 32] int8, xd [M, KB].
//
// How gemv_q4 computes (llama.cpp's Q4_0 x Q8_0 dot product, rearranged for 16 rows at a time):
//
//   * x is quantized once per call, per row and block of 32 inputs, to int8 with one fp32 scale
//     (quantize_rows: d = max|x| / 127, xq = round-half-even(x / d)); this is the only rounding
//     besides the fp32 sums, a relative error of ~2^-8 / sqrt(3) per activation.
//   * Integer dot products: the codes (unsigned, 0..15) times xq (signed) with vpdpbusd (AVX-512
//     VNNI: 64 products and their sums by 4 into 16 int32 lanes per instruction), or vpmaddubsw +
//     vpmaddwd without VNNI (AVX-512BW, AVX2). Exact: |sum| <= 32 * 15 * 127 per block.
//   * The packed layout puts the same 4 inputs of 16 rows in one 64-byte vector, so one instruction
//     yields 16 rows' partial sums with x broadcast (no horizontal reductions), and the codes stream
//     from memory in one sequential pass per thread (panels of 16 rows, all K, one after the other).
//   * Per block, the int32 row sums become fp32 and are scaled by d_w (16 rows, fp16 -> fp32 with
//     F16C) times d_x; fp32 accumulation over the blocks.
//
// gemv_int8 (row-major int8 weights, per-row scale) sums w * xq by 4s in the same integer units:
// VNNI needs an unsigned operand, so it multiplies (w + 128) (the sign bit flipped) and subtracts
// 128 * sum(xq) per block; vpmaddubsw takes |w| and x with w's sign (no saturation: |pair| <= 2 * 128
// * 127). 64 inputs (two blocks) per vector, RB = 4 rows at a time with software prefetch of the
// rows ahead (interleaved short rows defeat the hardware prefetchers, see gemv.cpp).
//
// ISA dispatch at run time as gemv.cpp (and the same reasons): AVX-512 with or without VNNI, AVX2
// (+F16C), plain C++. All paths compute the same integer sums and round x identically.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace rwkvkit_gemv {
namespace {

inline int32_t load4(const int8_t* p) {  // 4 bytes as one int32 (to broadcast); memcpy: no aliasing issue
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// fp16 bits -> fp32 (exact, subnormals and inf/nan included): the plain C++ path's F16C.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: mant * 2^-24, normalized
      exp = 113;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// fp32 -> bf16 bits, round to nearest even (finite values; NaN stays NaN): torch's conversion.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// ------------------------------------------------------------------------------------------------
// Plain C++ path.
// ------------------------------------------------------------------------------------------------
namespace scalar {

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xd, int32_t* xs) {
  const int64_t KB = (K + kQ4Block - 1) / kQ4Block;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    int8_t* qr = xq + m * KB * kQ4Block;
    for (int64_t b = 0; b < KB; ++b) {
      const int64_t k0 = b * kQ4Block, n = std::min<int64_t>(kQ4Block, K - k0);
      float amax = 0.0f;
      for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(xr[k0 + i]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      int32_t s = 0;
      for (int64_t i = 0; i < kQ4Block; ++i) {
        const int q = i < n ? static_cast<int>(std::nearbyint(xr[k0 + i] * id)) : 0;
        qr[k0 + i] = static_cast<int8_t>(q);
        s += q;
      }
      xd[m * KB + b] = d;
      xs[m * KB + b] = s;
    }
  }
}

// Row r's code of input 32 b + i in a (panel, block) of 256 bytes (see quant.py's Q4Linear).
inline int code(const uint8_t* blk, int64_t r, int64_t i) {
  const int64_t g = i / 4, j = i % 4;  // group of 4 inputs 0..7: 0..3 low nibbles, 4..7 high
  const uint8_t byte = blk[64 * (g % 4) + 4 * r + j];
  return g < 4 ? (byte & 0x0F) : (byte >> 4);
}

void q4_panels(const QProblem& p, int64_t p0, int64_t p1) {
  const int64_t KB = p.KB, Kp = KB * kQ4Block;
  for (int64_t q = p0; q < p1; ++q) {
    const int64_t rows = std::min<int64_t>(kQ4Panel, p.N - q * kQ4Panel);
    for (int64_t m = 0; m < p.M; ++m) {
      for (int64_t r = 0; r < rows; ++r) {
        float acc = 0.0f;
        for (int64_t b = 0; b < KB; ++b) {
          const uint8_t* blk = p.w + (q * KB + b) * kQ4PanelBlockBytes;
          const int8_t* xb = p.xq + m * Kp + b * kQ4Block;
          int32_t s = -8 * p.xs[m * KB + b];
          for (int64_t i = 0; i < kQ4Block; ++i) s += code(blk, r, i) * xb[i];
          const float dw = half_to_float(p.d[(q * KB + b) * kQ4Panel + r]);
          acc += static_cast<float>(s) * (dw * p.xd[m * KB + b]);
        }
        p.y[m * p.ldy + q * kQ4Panel + r] = acc;
      }
    }
  }
}

void i8_panels(const I8Problem& p, int64_t p0, int64_t p1) {
  const int64_t KB = (p.K + kQ4Block - 1) / kQ4Block, Kp = KB * kQ4Block;
  const int64_t n1 = std::min(p.N, p1 * kPanel);
  for (int64_t n = p0 * kPanel; n < n1; ++n) {
    const int8_t* wr = p.w + n * p.K;
    for (int64_t m = 0; m < p.M; ++m) {
      const int8_t* xr = p.xq + m * Kp;
      float acc = 0.0f;
      for (int64_t b = 0; b < KB; ++b) {
        int32_t s = 0;
        for (int64_t k = b * kQ4Block; k < std::min(p.K, (b + 1) * kQ4Block); ++k) s += wr[k] * xr[k];
        acc += static_cast<float>(s) * p.xd[m * KB + b];
      }
      p.y[m * p.ldy + n] = acc * p.scale[n];
    }
  }
}

}  // namespace scalar

// ------------------------------------------------------------------------------------------------
// AVX2 (+F16C) path: vpmaddubsw + vpmaddwd, a panel as two halves of 8 rows.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xd, int32_t* xs) {
  const int64_t KB = (K + kQ4Block - 1) / kQ4Block;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  alignas(32) int32_t q[kQ4Block];
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    int8_t* qr = xq + m * KB * kQ4Block;
    for (int64_t b = 0; b < KB; ++b) {
      const int64_t k0 = b * kQ4Block, n = std::min<int64_t>(kQ4Block, K - k0);
      __m256 v[4];
      alignas(32) float tail[kQ4Block];
      const float* src = xr + k0;
      if (n < kQ4Block) {  // the last block of a row whose K is not a multiple of 32: zero padded
        std::fill(tail, tail + kQ4Block, 0.0f);
        std::memcpy(tail, src, n * sizeof(float));
        src = tail;
      }
      __m256 amax = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(src + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
      }
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_movehdup_ps(h));
      const float d = _mm_cvtss_f32(h) / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const __m256 idv = _mm256_set1_ps(id);
      __m256i sum = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        const __m256i qi = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], idv));  // round half to even
        _mm256_store_si256(reinterpret_cast<__m256i*>(q + 8 * i), qi);
        sum = _mm256_add_epi32(sum, qi);
      }
      for (int i = 0; i < kQ4Block; ++i) qr[k0 + i] = static_cast<int8_t>(q[i]);
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
      xd[m * KB + b] = d;
      xs[m * KB + b] = _mm_cvtsi128_si32(s4);
    }
  }
}

// One panel against MB (<= 2) rows of x. Per 64-byte chunk, rows 0-7 are the first 32 bytes and rows
// 8-15 the next 32. vpmaddubsw sums pairs of code * xq into int16 lanes (|pair| <= 2 * 15 * 127 =
// 3810), and the 8 chunks of a block add up in int16 (<= 30480 < 32767) before one vpmaddwd.
template <int MB>
static inline void q4_panel(const QProblem& p, int64_t q, int64_t m0) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const int64_t KB = p.KB, Kp = KB * kQ4Block;
  const uint8_t* w = p.w + q * KB * kQ4PanelBlockBytes;
  const uint16_t* dw = p.d + q * KB * kQ4Panel;
  __m256 acc[MB][2];
  for (int m = 0; m < MB; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < KB; ++b, w += kQ4PanelBlockBytes, dw += kQ4Panel) {
    __m256i s16[MB][2];
    for (int m = 0; m < MB; ++m) s16[m][0] = s16[m][1] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * t + 32 * half));
        const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
#pragma GCC unroll 2
        for (int m = 0; m < MB; ++m) {
          const int8_t* xb = p.xq + (m0 + m) * Kp + b * kQ4Block;
          const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(load4(xb + 4 * t)));
          const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load4(xb + 16 + 4 * t)));
          s16[m][half] = _mm256_add_epi16(s16[m][half], _mm256_add_epi16(plo, phi));
        }
      }
    }
    const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dw)));
    const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dw + 8)));
    for (int m = 0; m < MB; ++m) {
      const int64_t row = m0 + m;
      const __m256i bias = _mm256_set1_epi32(-8 * p.xs[row * KB + b]);
      const __m256 xdv = _mm256_set1_ps(p.xd[row * KB + b]);
      const __m256i i0 = _mm256_add_epi32(_mm256_madd_epi16(s16[m][0], ones), bias);
      const __m256i i1 = _mm256_add_epi32(_mm256_madd_epi16(s16[m][1], ones), bias);
      acc[m][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(d0, xdv), acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(d1, xdv), acc[m][1]);
    }
  }
  const int64_t n0 = q * kQ4Panel, rows = std::min<int64_t>(kQ4Panel, p.N - n0);
  for (int m = 0; m < MB; ++m) {
    float* y = p.y + (m0 + m) * p.ldy + n0;
    if (rows == kQ4Panel) {
      _mm256_storeu_ps(y, acc[m][0]);
      _mm256_storeu_ps(y + 8, acc[m][1]);
    } else {
      alignas(32) float tmp[kQ4Panel];
      _mm256_store_ps(tmp, acc[m][0]);
      _mm256_store_ps(tmp + 8, acc[m][1]);
      std::memcpy(y, tmp, rows * sizeof(float));
    }
  }
}

void q4_panels(const QProblem& p, int64_t p0, int64_t p1) {
  const int64_t nc = (p.M + 1) / 2;
  for (int64_t q = p0; q < p1; ++q) {
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t m0 = p.M * c / nc, mb = p.M * (c + 1) / nc - m0;
      if (mb == 1)
        q4_panel<1>(p, q, m0);
      else
        q4_panel<2>(p, q, m0);
    }
  }
}

// int8 weights: RB rows x MB (<= 2) rows of x, one block of 32 inputs (one ymm) at a time. vpmaddubsw
// needs an unsigned operand: |w| times x with w's sign (|pair| <= 2 * 128 * 127 < 2^15: no saturation).
template <int MB, int RB>
static inline void i8_tile(const I8Problem& p, int64_t n, int64_t m0) {
  const int64_t K = p.K, KB = (K + kQ4Block - 1) / kQ4Block, Kp = KB * kQ4Block;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MB][RB];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < RB; ++r) acc[m][r] = _mm256_setzero_ps();
  alignas(32) int8_t tail[RB][kQ4Block];
  const char* pf = reinterpret_cast<const char*>(p.w + (n + RB) * K);  // the next tile (see the AVX-512 one)
  for (int64_t b = 0; b < KB; ++b, pf += RB * kQ4Block) {
    const int64_t k0 = b * kQ4Block;
    for (int r = 0; r < RB; r += 2) _mm_prefetch(pf + 64 * (r / 2), _MM_HINT_T0);
    __m256i w[RB];
    if (k0 + kQ4Block <= K) {
      for (int r = 0; r < RB; ++r) w[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + (n + r) * K + k0));
    } else {  // the last, partial block: zero padded (x is zero there too)
      for (int r = 0; r < RB; ++r) {
        std::memset(tail[r], 0, kQ4Block);
        std::memcpy(tail[r], p.w + (n + r) * K + k0, K - k0);
        w[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail[r]));
      }
    }
    __m256i aw[RB];
    for (int r = 0; r < RB; ++r) aw[r] = _mm256_sign_epi8(w[r], w[r]);
    for (int m = 0; m < MB; ++m) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xq + (m0 + m) * Kp + k0));
      const __m256 xd = _mm256_set1_ps(p.xd[(m0 + m) * KB + b]);
      for (int r = 0; r < RB; ++r) {
        const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(x, w[r])), ones);
        acc[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), xd, acc[m][r]);
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < RB; ++r) {
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[m][r]), _mm256_extractf128_ps(acc[m][r], 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      p.y[(m0 + m) * p.ldy + n + r] = _mm_cvtss_f32(h) * p.scale[n + r];
    }
}

void i8_panels(const I8Problem& p, int64_t p0, int64_t p1) {
  const int64_t nc = (p.M + 1) / 2;
  for (int64_t q = p0; q < p1; ++q) {
    const int64_t n0 = q * kPanel, n1 = std::min(p.N, n0 + kPanel);
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t m0 = p.M * c / nc, mb = p.M * (c + 1) / nc - m0;
      int64_t n = n0;
      for (; n + 4 <= n1; n += 4) mb == 1 ? i8_tile<1, 4>(p, n, m0) : i8_tile<2, 4>(p, n, m0);
      for (; n < n1; ++n) mb == 1 ? i8_tile<1, 1>(p, n, m0) : i8_tile<2, 1>(p, n, m0);
    }
  }
}

}  // namespace avx2
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// AVX-512 paths: the kernel body (qgemv_avx512.inc) with and without VNNI.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace avx512 {

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xd, int32_t* xs) {
  const int64_t KB = (K + kQ4Block - 1) / kQ4Block;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    int8_t* qr = xq + m * KB * kQ4Block;
    for (int64_t b = 0; b < KB; ++b) {
      const int64_t k0 = b * kQ4Block, n = std::min<int64_t>(kQ4Block, K - k0);
      const __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1u);
      const __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1u);
      const __m512 v0 = _mm512_maskz_loadu_ps(m0, xr + k0), v1 = _mm512_maskz_loadu_ps(m1, xr + k0 + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const __m512 idv = _mm512_set1_ps(id);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));  // round half to even
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k0), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k0 + 16), _mm512_cvtsepi32_epi8(q1));
      xd[m * KB + b] = d;
      xs[m * KB + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
  }
}

static inline __m512i dot(__m512i acc, __m512i w, __m512i x) {
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1)));
}

// Signed int8 weights: |w| times x with w's sign (as the AVX2 path); no bias.
constexpr int32_t kI8Bias = 0;
static inline __m512i i8_unsigned(__m512i w) { return _mm512_abs_epi8(w); }
static inline __m512i dot_i8(__m512i acc, __m512i w, __m512i aw, __m512i x) {
  const __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
  return dot(acc, aw, sx);
}

#include "qgemv_avx512.inc"

}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
namespace avx512vnni {

static inline __m512i dot(__m512i acc, __m512i w, __m512i x) { return _mm512_dpbusd_epi32(acc, w, x); }

// Signed int8 weights: w + 128 (flipping the sign bit) is unsigned, and sum (w + 128) x = sum w x +
// 128 sum x: the bias -128 * xs removes the second term.
constexpr int32_t kI8Bias = 128;
static inline __m512i i8_unsigned(__m512i w) { return _mm512_xor_si512(w, _mm512_set1_epi8(static_cast<char>(0x80))); }
static inline __m512i dot_i8(__m512i acc, __m512i, __m512i uw, __m512i x) { return _mm512_dpbusd_epi32(acc, uw, x); }

#include "qgemv_avx512.inc"

}  // namespace avx512vnni
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// Dequantization to bf16 (prefill): plain C++ (the compiler vectorizes the inner loops well enough
// for a step that costs a small fraction of the bf16 product that follows).
// ------------------------------------------------------------------------------------------------
void dequant_rows(const uint8_t* w, const uint16_t* dq, int64_t KB, int64_t K, int64_t r0, int64_t r1,
                  uint16_t* out) {
  for (int64_t n = r0; n < r1; ++n) {
    const int64_t q = n / kQ4Panel, r = n % kQ4Panel;
    uint16_t* o = out + (n - r0) * K;
    for (int64_t b = 0; b < KB; ++b) {
      const uint8_t* blk = w + (q * KB + b) * kQ4PanelBlockBytes;
      const float d = half_to_float(dq[(q * KB + b) * kQ4Panel + r]);
      const int64_t k0 = b * kQ4Block, n_in = std::min<int64_t>(kQ4Block, K - k0);
      float vals[kQ4Block];
      for (int t = 0; t < 4; ++t)
        for (int j = 0; j < 4; ++j) {
          const uint8_t byte = blk[64 * t + 4 * r + j];
          vals[4 * t + j] = static_cast<float>((byte & 0x0F) - 8) * d;
          vals[16 + 4 * t + j] = static_cast<float>((byte >> 4) - 8) * d;
        }
      for (int64_t i = 0; i < n_in; ++i) o[k0 + i] = float_to_bf16(vals[i]);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Operators.
// ------------------------------------------------------------------------------------------------

int64_t resolve_qisa(int64_t isa, const char* op) {
  if (isa == kAuto) isa = best_qisa();
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512Vnni, op, ": isa must be 0 (auto), 1, 2, 3 or 4");
  TORCH_CHECK(cpu_has(static_cast<Isa>(isa)), op, ": this CPU lacks the requested instruction set");
  return isa;
}

void check_q4(const at::Tensor& qweight, const at::Tensor& scales, int64_t N, int64_t K, const char* op) {
  const int64_t P = (N + kQ4Panel - 1) / kQ4Panel, KB = (K + kQ4Block - 1) / kQ4Block;
  TORCH_CHECK(qweight.device().is_cpu() && scales.device().is_cpu(), op, ": CPU tensors only");
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.is_contiguous() &&
                  qweight.sizes() == at::IntArrayRef({P, KB, kQ4PanelBlockBytes}),
              op, ": qweight must be a contiguous uint8 [", P, ", ", KB, ", 256] tensor for [", N, ", ", K,
              "] weights, got ", qweight.scalar_type(), " ", qweight.sizes());
  TORCH_CHECK(scales.scalar_type() == at::kShort && scales.is_contiguous() &&
                  scales.sizes() == at::IntArrayRef({P, KB, kQ4Panel}),
              op, ": scales must be a contiguous int16 [", P, ", ", KB, ", 16] tensor, got ", scales.scalar_type(),
              " ", scales.sizes());
}

std::tuple<at::Tensor, at::Tensor> quantize_activations(const at::Tensor& x, int64_t isa) {
  const char* op = "quantize_activations";
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), op,
              ": x must be a contiguous float32 [M, K] CPU tensor");
  isa = resolve_qisa(isa, op);
  const int64_t M = x.size(0), K = x.size(1), KB = (K + kQ4Block - 1) / kQ4Block;
  at::Tensor xq = at::empty({M, KB * kQ4Block}, x.options().dtype(at::kChar));
  at::Tensor xd = at::empty({M, KB}, x.options());
  at::Tensor xs = at::empty({M, KB}, x.options().dtype(at::kInt));
  quantize_rows(isa, x.data_ptr<float>(), M, K, xq.data_ptr<int8_t>(), xd.data_ptr<float>(), xs.data_ptr<int32_t>());
  return {xq, xd};
}

at::Tensor gemv_q4(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales, int64_t N, int64_t isa) {
  const char* op = "gemv_q4";
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), op,
              ": x must be a contiguous float32 [M, K] CPU tensor");
  const int64_t M = x.size(0), K = x.size(1), KB = (K + kQ4Block - 1) / kQ4Block;
  TORCH_CHECK(N >= 0, op, ": N must be >= 0");
  check_q4(qweight, scales, N, K, op);
  isa = resolve_qisa(isa, op);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  // the quantized activations: small (M * K bytes), made once on the calling thread
  at::Tensor xq = at::empty({M * KB * kQ4Block}, x.options().dtype(at::kChar));
  at::Tensor xd = at::empty({M * KB}, x.options());
  at::Tensor xs = at::empty({M * KB}, x.options().dtype(at::kInt));
  quantize_rows(isa, x.data_ptr<float>(), M, K, xq.data_ptr<int8_t>(), xd.data_ptr<float>(), xs.data_ptr<int32_t>());
  const QProblem p{xq.data_ptr<int8_t>(),
                   xd.data_ptr<float>(),
                   xs.data_ptr<int32_t>(),
                   qweight.data_ptr<uint8_t>(),
                   reinterpret_cast<const uint16_t*>(scales.data_ptr<int16_t>()),
                   y.data_ptr<float>(),
                   M,
                   N,
                   KB,
                   N};
  const QPanelFn fn = q4_panel_fn(isa);
  const int64_t P = (N + kQ4Panel - 1) / kQ4Panel;
  // >= ~64 KB of weights per thread (see gemv.cpp)
  const int64_t panel_bytes = KB * (kQ4PanelBlockBytes + 2 * kQ4Panel);
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / panel_bytes);
  at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) { fn(p, p0, p1); });
  return y;
}

// y = (x @ w^T) * scale for int8 weights w [N, K] with int8 activations (see gemv.h's I8Problem).
at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int64_t isa) {
  const char* op = "gemv_int8";
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), op,
              ": x must be a contiguous float32 [M, K] CPU tensor");
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous(), op,
              ": w must be a contiguous int8 [N, K] CPU tensor");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), KB = (K + kQ4Block - 1) / kQ4Block;
  TORCH_CHECK(w.size(1) == K, op, ": x is [M, ", K, "] but w is ", w.sizes());
  TORCH_CHECK(scale.device().is_cpu() && scale.scalar_type() == at::kFloat && scale.is_contiguous() &&
                  scale.dim() == 1 && scale.size(0) == N,
              op, ": scale must be a contiguous float32 [N] tensor");
  isa = resolve_qisa(isa, op);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  at::Tensor xq = at::empty({M * KB * kQ4Block}, x.options().dtype(at::kChar));
  at::Tensor xd = at::empty({M * KB}, x.options());
  at::Tensor xs = at::empty({M * KB}, x.options().dtype(at::kInt));
  quantize_rows(isa, x.data_ptr<float>(), M, K, xq.data_ptr<int8_t>(), xd.data_ptr<float>(), xs.data_ptr<int32_t>());
  const I8Problem p{xq.data_ptr<int8_t>(), xd.data_ptr<float>(), xs.data_ptr<int32_t>(), w.data_ptr<int8_t>(),
                    scale.data_ptr<float>(), y.data_ptr<float>(), M, N, K, N};
  const I8PanelFn fn = i8_panel_fn(isa);
  const int64_t P = (N + kPanel - 1) / kPanel;
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, kPanel * K));
  at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) { fn(p, p0, p1); });
  return y;
}

at::Tensor q4_dequant(const at::Tensor& qweight, const at::Tensor& scales, int64_t row0, int64_t row1, int64_t K) {
  const char* op = "q4_dequant";
  TORCH_CHECK(qweight.dim() == 3, op, ": qweight must be [P, KB, 256], got ", qweight.sizes());
  const int64_t P = qweight.size(0), N = P * kQ4Panel, KB = (K + kQ4Block - 1) / kQ4Block;
  TORCH_CHECK(K >= 0 && 0 <= row0 && row0 <= row1 && row1 <= N, op, ": rows [", row0, ", ", row1,
              ") out of range for ", N, " padded rows");
  check_q4(qweight, scales, N, K, op);
  at::Tensor out = at::empty({row1 - row0, K}, qweight.options().dtype(at::kBFloat16));
  if (out.numel() == 0) return out;
  const uint8_t* w = qweight.data_ptr<uint8_t>();
  const uint16_t* d = reinterpret_cast<const uint16_t*>(scales.data_ptr<int16_t>());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t grain = std::max<int64_t>(1, (256 * 1024) / std::max<int64_t>(1, K * 2));
  at::parallel_for(row0, row1, grain, [&](int64_t r0, int64_t r1) {
    dequant_rows(w, d, KB, K, r0, r1, o + (r0 - row0) * K);
  });
  return out;
}

}  // namespace

int64_t best_qisa() {
  static const int64_t isa = cpu_has(kAvx512Vnni)                     ? kAvx512Vnni
                             : cpu_has(kAvx512)                        ? kAvx512
                             : cpu_has(kAvx2) && __builtin_cpu_supports("f16c") ? kAvx2
                                                                       : kScalar;
  return isa;
}

QPanelFn q4_panel_fn(int64_t isa) {
  switch (isa) {
    case kAvx512Vnni: return avx512vnni::q4_panels;
    case kAvx512: return avx512::q4_panels;
    case kAvx2: return avx2::q4_panels;
    default: return scalar::q4_panels;
  }
}

I8PanelFn i8_panel_fn(int64_t isa) {
  switch (isa) {
    case kAvx512Vnni: return avx512vnni::i8_panels;
    case kAvx512: return avx512::i8_panels;
    case kAvx2: return avx2::i8_panels;
    default: return scalar::i8_panels;
  }
}

void quantize_rows(int64_t isa, const float* x, int64_t M, int64_t K, int8_t* xq, float* xd, int32_t* xs) {
  switch (isa) {
    case kAvx512Vnni:
    case kAvx512: return avx512::quantize_rows(x, M, K, xq, xd, xs);
    case kAvx2: return avx2::quantize_rows(x, M, K, xq, xd, xs);
    default: return scalar::quantize_rows(x, M, K, xq, xd, xs);
  }
}

}  // namespace rwkvkit_gemv

TORCH_LIBRARY_FRAGMENT(rwkvkit_kernels, m) {
  m.def("gemv_q4(Tensor x, Tensor qweight, Tensor scales, int N, int isa=0) -> Tensor");
  m.def("q4_dequant(Tensor qweight, Tensor scales, int row0, int row1, int K) -> Tensor");
  m.def("quantize_activations(Tensor x, int isa=0) -> (Tensor, Tensor)");
  m.def("gemv_int8(Tensor x, Tensor w, Tensor scale, int isa=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(rwkvkit_kernels, CPU, m) {
  m.impl("gemv_q4", &rwkvkit_gemv::gemv_q4);
  m.impl("q4_dequant", &rwkvkit_gemv::q4_dequant);
  m.impl("quantize_activations", &rwkvkit_gemv::quantize_activations);
  m.impl("gemv_int8", &rwkvkit_gemv::gemv_int8);
}
