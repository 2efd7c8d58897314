// RWKV-7 decoding operators for CPU: one WKV-7 step, and one whole block for one token.
//
// Both are registered in the `rwkvkit_kernels` library next to gemv (gemv.cpp) and built with it.
//
// ------------------------------------------------------------------------------------------------
// rwkvkit_kernels::wkv7_step(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor a, Tensor b,
//                            Tensor S_in, Tensor(a!) S_out, int isa=0) -> Tensor o
//
//   r, log_w, k, v, a, b: [B, H, N] float32 contiguous; S_in, S_out: [B, H, N, N] float32 contiguous,
//   key-major (S[i, j], i = key, j = value). S_out may be S_in itself (in place) or a tensor that does
//   not overlap it. Per (batch, head):
//       sa[j]    = sum_i a[i] S[i, j]
//       S'[i, j] = S[i, j] * exp(log_w[i]) + b[i] * sa[j] + k[i] * v[j]      -> S_out
//       o[j]     = sum_i r[i] S'[i, j]                                       -> returned [B, H, N]
//   One pass over the state: a head's N x N block (16 KB for N = 64) is read from memory once, stays
//   in L1 for the second sweep, and is written once. Heads are spread over torch's threads.
//
// ------------------------------------------------------------------------------------------------
// rwkvkit_kernels::rwkv7_block_decode(Tensor x, Tensor(a!) att_shift, Tensor S_in, Tensor(b!) S_out,
//                                     Tensor(c!) ffn_shift, Tensor(d!) v_first, Tensor[] params,
//                                     Tensor?[] scales, int layer_id, int isa=0, int dim_ffn=0)
//                                     -> Tensor x_out
//
//   Block.forward for one token (T = 1) with ln0 already folded into the embedding (optimize()):
//       x [B, C] float32 -> returns the new x [B, C] (a new tensor).
//   State, updated in place: att_shift [B, C] (<- LN1 output), ffn_shift [B, C] (<- LN2 output), the
//   WKV state read from S_in [B, H, N, N] and written to S_out (may be S_in), v_first [B, C]:
//   written (= this layer's v) when layer_id == 0, read otherwise.
//   params, in this fixed order (float32 contiguous unless said otherwise; C channels, H heads of N,
//   F = dim_ffn, Dw/Da/Dv/Dg the LoRA ranks; the LoRA down-projections pre-transposed so that they
//   are [out, in] gemv weights, the up-projections [D, C] head-major as [H, D, N]):
//        0 ln1.weight [C]      1 ln1.bias [C]       2 ln2.weight [C]      3 ln2.bias [C]
//        4 x_r [C]   5 x_w [C]   6 x_k [C]   7 x_v [C]   8 x_a [C]   9 x_g [C]
//       10 w0 [C]    11 w1^T [Dw, C]    12 w2^H [H, Dw, N]
//       13 a0 [C]    14 a1^T [Da, C]    15 a2^H [H, Da, N]
//       16 v0 [C]    17 v1^T [Dv, C]    18 v2^H [H, Dv, N]      (not read at layer 0)
//       19 g1^T [Dg, C]                 20 g2^H [H, Dg, N]
//       21 k_k [C]   22 k_a [C]   23 r_k [H, N] (gives H and N)
//       24 ln_x.weight [C]    25 ln_x.bias [C]
//       26 W_r [C, C]   27 W_k [C, C]   28 W_v [C, C]   29 W_o [C, C]      float32, bfloat16 or int8
//       30 ffn.x_k [C]  31 ffn W_key [F, C]   32 ffn W_value [C, F]        (weights likewise)
//   or, for any of the six weights, 4-bit: Q4Linear's qweight (uint8 [ceil(rows / 16), ceil(cols / 32),
//   256]; its input is quantized to int8 per block of 32 as gemv_q4 does).
//   scales: 6 entries for W_r, W_k, W_v, W_o, W_key, W_value: float32 [rows] per-row scales (required
//   for int8 weights), Q4Linear's int16 scales (required for 4-bit weights), or None.
//   dim_ffn: F; 0 takes it from W_key's rows, which 4-bit weights do not give (padded to 16).
//   Norm epsilons are RWKV-7's: LayerNorm 1e-5, GroupNorm ln_x 64e-5, L2 normalisation of kk 1e-12.
//   All projections and LoRA products run through gemv's panel kernels (products of one stage share
//   one parallel region); the elementwise work (B * C values) is plain loops on the calling thread;
//   scratch memory is a per-thread buffer reused across calls (no allocation but the output).
//
// `isa`: 0 = best for this CPU, 1 = plain C++, 2 = AVX2, 3 = AVX-512, 4 = AVX-512 with VNNI (which
// only the 4-bit products use; tests; lacking it is an error).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gemv.h"

namespace rwkvkit_rwkv7 {
namespace {

using rwkvkit_gemv::Isa;
using rwkvkit_gemv::kPanel;
using rwkvkit_gemv::PanelFn;
using rwkvkit_gemv::Problem;
using rwkvkit_gemv::I8PanelFn;
using rwkvkit_gemv::I8Problem;
using rwkvkit_gemv::QPanelFn;
using rwkvkit_gemv::QProblem;
using rwkvkit_gemv::kQ4Block;
using rwkvkit_gemv::kQ4Panel;
using rwkvkit_gemv::kQ4PanelBlockBytes;

// One head of the WKV step (see the top of the file). d = exp(log_w), precomputed by the caller.
// tmp: 2 * N floats of scratch. S and So may be the same pointer.
using HeadFn = void (*)(const float* r, const float* d, const float* k, const float* v, const float* a,
                        const float* b, const float* S, float* So, float* o, int64_t N, float* tmp);

// ------------------------------------------------------------------------------------------------
// Plain C++ head.
// ------------------------------------------------------------------------------------------------
void head_scalar(const float* r, const float* d, const float* k, const float* v, const float* a,
                 const float* b, const float* S, float* So, float* o, int64_t N, float* tmp) {
  float* sa = tmp;
  std::fill(sa, sa + N, 0.0f);
  std::fill(o, o + N, 0.0f);
  for (int64_t i = 0; i < N; ++i) {
    const float ai = a[i];
    const float* row = S + i * N;
    for (int64_t j = 0; j < N; ++j) sa[j] += ai * row[j];
  }
  for (int64_t i = 0; i < N; ++i) {
    const float di = d[i], bi = b[i], ki = k[i], ri = r[i];
    const float* row = S + i * N;
    float* out = So + i * N;
    for (int64_t j = 0; j < N; ++j) {
      const float s = row[j] * di + bi * sa[j] + ki * v[j];
      out[j] = s;
      o[j] += ri * s;
    }
  }
}


// ------------------------------------------------------------------------------------------------
// The WKV inputs of one head (N channels; w0, a0, v0, k_k, k_a point at the head's first channel,
// the others at this batch row's first value of the head):
//     kk = normalize(k * k_k)       a = sigmoid(a0 + al)      k <- k * (1 + (a - 1) * k_a)
//     d = exp(-exp(-1/2) * sigmoid(w0 + wl))  (the decay)     wa = -kk, wb = kk * a
//     v <- v + (vf - v) * sigmoid(v0 + vl), or vf <- v at layer 0.
// Four exponentials per channel: vectorized (a Cephes-style expf, <= 2 ulp) on AVX2 / AVX-512.
// ------------------------------------------------------------------------------------------------
using PrepFn = void (*)(const float* w0, const float* a0, const float* v0, const float* k_k, const float* k_a,
                        float* k, float* v, const float* wl, const float* al, const float* vl, float* vf, float* wa,
                        float* wb, float* d, int64_t N, bool first);

inline float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

void prep_scalar(const float* w0, const float* a0, const float* v0, const float* k_k, const float* k_a, float* k,
                 float* v, const float* wl, const float* al, const float* vl, float* vf, float* wa, float* wb,
                 float* d, int64_t N, bool first) {
  const float neg_exp_half = static_cast<float>(-std::exp(-0.5));
  float ss = 0.0f;
  for (int64_t j = 0; j < N; ++j) {
    const float tk = k[j] * k_k[j];
    wa[j] = tk;
    ss += tk * tk;
  }
  const float inv = 1.0f / std::max(std::sqrt(ss), 1e-12f);
  for (int64_t j = 0; j < N; ++j) {
    const float kk = wa[j] * inv;
    d[j] = std::exp(neg_exp_half * sigmoid(w0[j] + wl[j]));
    const float ai = sigmoid(a0[j] + al[j]);
    k[j] = k[j] * (1.0f + (ai - 1.0f) * k_a[j]);
    wa[j] = -kk;
    wb[j] = kk * ai;
    if (first)
      vf[j] = v[j];
    else
      v[j] = v[j] + (vf[j] - v[j]) * sigmoid(v0[j] + vl[j]);
  }
}

// ------------------------------------------------------------------------------------------------
// The LoRA up-projections per head: y[m, h N + j] = sum_d x[m, d] W[h, d, j] for the heads [h0, h1),
// W [H, D, N] head-major (pack_block's copy of the model's [D, C]): a thread's heads are one
// contiguous stream, and the N outputs of a head stay in registers over the D inputs (short rows of
// D inputs per output, the [C, D] layout, would spend more time in horizontal sums than in products).
// ------------------------------------------------------------------------------------------------
using UpFn = void (*)(const float* x, const float* W, float* y, int64_t M, int64_t D, int64_t N, int64_t ldy,
                      int64_t h0, int64_t h1);

void up_scalar(const float* x, const float* W, float* y, int64_t M, int64_t D, int64_t N, int64_t ldy, int64_t h0,
               int64_t h1) {
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t m = 0; m < M; ++m) {
      float* yr = y + m * ldy + h * N;
      for (int64_t j = 0; j < N; ++j) yr[j] = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float xd = x[m * D + d];
        const float* wr = W + (h * D + d) * N;
        for (int64_t j = 0; j < N; ++j) yr[j] += xd * wr[j];
      }
    }
}

// ------------------------------------------------------------------------------------------------
// AVX2 head: groups of up to 4 x 8 value columns kept in registers, masked loads/stores at the edge.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

template <int NV>
static inline void group(const float* r, const float* d, const float* k, const float* v, const float* a,
                         const float* b, const float* S, float* So, float* o, int64_t N, int64_t j0) {
  __m256i m[NV];
  for (int q = 0; q < NV; ++q) {
    const int64_t rem = std::min<int64_t>(8, N - j0 - 8 * q);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    m[q] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), lane);
  }
  __m256 s0[NV], s1[NV];
  for (int q = 0; q < NV; ++q) s0[q] = s1[q] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= N; i += 2) {
    const __m256 a0 = _mm256_set1_ps(a[i]), a1 = _mm256_set1_ps(a[i + 1]);
    const float* row0 = S + i * N + j0;
    const float* row1 = row0 + N;
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
      s0[q] = _mm256_fmadd_ps(a0, _mm256_maskload_ps(row0 + 8 * q, m[q]), s0[q]);
      s1[q] = _mm256_fmadd_ps(a1, _mm256_maskload_ps(row1 + 8 * q, m[q]), s1[q]);
    }
  }
  if (i < N) {
    const __m256 a0 = _mm256_set1_ps(a[i]);
    const float* row0 = S + i * N + j0;
    for (int q = 0; q < NV; ++q) s0[q] = _mm256_fmadd_ps(a0, _mm256_maskload_ps(row0 + 8 * q, m[q]), s0[q]);
  }
  __m256 sa[NV], vv[NV], o0[NV], o1[NV];
  for (int q = 0; q < NV; ++q) {
    sa[q] = _mm256_add_ps(s0[q], s1[q]);
    vv[q] = _mm256_maskload_ps(v + j0 + 8 * q, m[q]);
    o0[q] = o1[q] = _mm256_setzero_ps();
  }
  for (i = 0; i < N; ++i) {
    const __m256 di = _mm256_set1_ps(d[i]), bi = _mm256_set1_ps(b[i]), ki = _mm256_set1_ps(k[i]);
    const __m256 ri = _mm256_set1_ps(r[i]);
    const float* row = S + i * N + j0;
    float* out = So + i * N + j0;
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
      __m256 s = _mm256_mul_ps(_mm256_maskload_ps(row + 8 * q, m[q]), di);
      s = _mm256_fmadd_ps(ki, vv[q], _mm256_fmadd_ps(bi, sa[q], s));
      _mm256_maskstore_ps(out + 8 * q, m[q], s);
      if (i & 1)
        o1[q] = _mm256_fmadd_ps(ri, s, o1[q]);
      else
        o0[q] = _mm256_fmadd_ps(ri, s, o0[q]);
    }
  }
  for (int q = 0; q < NV; ++q) _mm256_maskstore_ps(o + j0 + 8 * q, m[q], _mm256_add_ps(o0[q], o1[q]));
}

void head(const float* r, const float* d, const float* k, const float* v, const float* a, const float* b,
          const float* S, float* So, float* o, int64_t N, float*) {
  for (int64_t j0 = 0; j0 < N; j0 += 32) {
    switch (std::min<int64_t>(4, (N - j0 + 7) / 8)) {
      case 1: group<1>(r, d, k, v, a, b, S, So, o, N, j0); break;
      case 2: group<2>(r, d, k, v, a, b, S, So, o, N, j0); break;
      case 3: group<3>(r, d, k, v, a, b, S, So, o, N, j0); break;
      default: group<4>(r, d, k, v, a, b, S, So, o, N, j0); break;
    }
  }
}


// A head's N outputs in blocks of up to 8 x 8 registers (the last one masked), two accumulator sets
// (even and odd inputs d) for more independent FMA chains.
void up(const float* x, const float* W, float* y, int64_t M, int64_t D, int64_t N, int64_t ldy, int64_t h0,
        int64_t h1) {
  constexpr int NV = 8;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t jb = 0; jb < N; jb += 8 * NV) {
        const int64_t n = std::min<int64_t>(8 * NV, N - jb), nv = (n + 7) / 8;
        __m256i mask[NV];
        __m256 a0[NV], a1[NV];
        for (int i = 0; i < NV; ++i) {
          mask[i] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - 8 * i)), lane);
          a0[i] = a1[i] = _mm256_setzero_ps();
        }
        const float* xm = x + m * D;
        const float* wh = W + h * D * N + jb;
        int64_t d = 0;
        for (; d + 2 <= D; d += 2) {
          const __m256 x0 = _mm256_set1_ps(xm[d]), x1 = _mm256_set1_ps(xm[d + 1]);
          for (int i = 0; i < nv; ++i) {
            a0[i] = _mm256_fmadd_ps(x0, _mm256_maskload_ps(wh + d * N + 8 * i, mask[i]), a0[i]);
            a1[i] = _mm256_fmadd_ps(x1, _mm256_maskload_ps(wh + (d + 1) * N + 8 * i, mask[i]), a1[i]);
          }
        }
        if (d < D) {
          const __m256 x0 = _mm256_set1_ps(xm[d]);
          for (int i = 0; i < nv; ++i) a0[i] = _mm256_fmadd_ps(x0, _mm256_maskload_ps(wh + d * N + 8 * i, mask[i]), a0[i]);
        }
        for (int i = 0; i < nv; ++i)
          _mm256_maskstore_ps(y + m * ldy + h * N + jb + 8 * i, mask[i], _mm256_add_ps(a0[i], a1[i]));
      }
}

// exp(x) for 8 lanes: x = n ln2 + r, |r| <= ln2 / 2, e^r by its degree-7 Taylor-like polynomial
// (Cephes expf's coefficients), times 2^n built in the exponent bits. x is clamped to [-87, 88]
// (n in [-126, 127]: no overflow, no subnormals; e^-87 ~ 1.6e-38 stands for anything smaller).
static inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 sigmoid8(__m256 z) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
}

void prep(const float* w0, const float* a0, const float* v0, const float* k_k, const float* k_a, float* k, float* v,
          const float* wl, const float* al, const float* vl, float* vf, float* wa, float* wb, float* d, int64_t N,
          bool first) {
  const int64_t N8 = N - N % 8;
  if (N8 == 0) return prep_scalar(w0, a0, v0, k_k, k_a, k, v, wl, al, vl, vf, wa, wb, d, N, first);
  __m256 ss8 = _mm256_setzero_ps();
  float ss = 0.0f;
  for (int64_t j = 0; j < N8; j += 8) {
    const __m256 tk = _mm256_mul_ps(_mm256_loadu_ps(k + j), _mm256_loadu_ps(k_k + j));
    _mm256_storeu_ps(wa + j, tk);
    ss8 = _mm256_fmadd_ps(tk, tk, ss8);
  }
  for (int64_t j = N8; j < N; ++j) {
    wa[j] = k[j] * k_k[j];
    ss += wa[j] * wa[j];
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, ss8);
  for (float l : lanes) ss += l;
  const float inv_s = 1.0f / std::max(std::sqrt(ss), 1e-12f);
  const __m256 inv = _mm256_set1_ps(inv_s), one = _mm256_set1_ps(1.0f);
  const __m256 neh = _mm256_set1_ps(static_cast<float>(-std::exp(-0.5)));
  for (int64_t j = 0; j < N8; j += 8) {
    const __m256 kk = _mm256_mul_ps(_mm256_loadu_ps(wa + j), inv);
    const __m256 lw = _mm256_mul_ps(neh, sigmoid8(_mm256_add_ps(_mm256_loadu_ps(w0 + j), _mm256_loadu_ps(wl + j))));
    _mm256_storeu_ps(d + j, exp8(lw));
    const __m256 ai = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(a0 + j), _mm256_loadu_ps(al + j)));
    const __m256 kj = _mm256_loadu_ps(k + j);
    _mm256_storeu_ps(k + j, _mm256_mul_ps(kj, _mm256_fmadd_ps(_mm256_sub_ps(ai, one), _mm256_loadu_ps(k_a + j), one)));
    _mm256_storeu_ps(wa + j, _mm256_sub_ps(_mm256_setzero_ps(), kk));
    _mm256_storeu_ps(wb + j, _mm256_mul_ps(kk, ai));
    const __m256 vj = _mm256_loadu_ps(v + j);
    if (first) {
      _mm256_storeu_ps(vf + j, vj);
    } else {
      const __m256 g = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(v0 + j), _mm256_loadu_ps(vl + j)));
      _mm256_storeu_ps(v + j, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(vf + j), vj), g, vj));
    }
  }
  if (N8 < N) {  // the last N % 8 channels: the scalar code on the tail (kk already in wa)
    const float neg_exp_half = static_cast<float>(-std::exp(-0.5));
    for (int64_t j = N8; j < N; ++j) {
      const float kk = wa[j] * inv_s;
      d[j] = std::exp(neg_exp_half * sigmoid(w0[j] + wl[j]));
      const float ai = sigmoid(a0[j] + al[j]);
      k[j] = k[j] * (1.0f + (ai - 1.0f) * k_a[j]);
      wa[j] = -kk;
      wb[j] = kk * ai;
      if (first)
        vf[j] = v[j];
      else
        v[j] = v[j] + (vf[j] - v[j]) * sigmoid(v0[j] + vl[j]);
    }
  }
}

}  // namespace avx2
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// AVX-512 head: groups of up to 4 x 16 value columns (N = 64: the whole row) in registers.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {

// Stream: the new state goes out with non-temporal stores (full, aligned vectors only): it is not
// read again before the next token, by when the weights streamed meanwhile have evicted it from the
// caches, so writing it through the cache would only add a read of every line (read for ownership).
template <int NV, bool Stream>
static inline void group(const float* r, const float* d, const float* k, const float* v, const float* a,
                         const float* b, const float* S, float* So, float* o, int64_t N, int64_t j0) {
  __mmask16 m[NV];
  for (int q = 0; q < NV; ++q) {
    const int64_t rem = N - j0 - 16 * q;
    m[q] = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
  }
  __m512 s0[NV], s1[NV];
  for (int q = 0; q < NV; ++q) s0[q] = s1[q] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= N; i += 2) {  // sa = a^T S, two independent accumulator chains
    const __m512 a0 = _mm512_set1_ps(a[i]), a1 = _mm512_set1_ps(a[i + 1]);
    const float* row0 = S + i * N + j0;
    const float* row1 = row0 + N;
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
      s0[q] = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(m[q], row0 + 16 * q), s0[q]);
      s1[q] = _mm512_fmadd_ps(a1, _mm512_maskz_loadu_ps(m[q], row1 + 16 * q), s1[q]);
    }
  }
  if (i < N) {
    const __m512 a0 = _mm512_set1_ps(a[i]);
    const float* row0 = S + i * N + j0;
    for (int q = 0; q < NV; ++q) s0[q] = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(m[q], row0 + 16 * q), s0[q]);
  }
  __m512 sa[NV], vv[NV], o0[NV], o1[NV];
  for (int q = 0; q < NV; ++q) {
    sa[q] = _mm512_add_ps(s0[q], s1[q]);
    vv[q] = _mm512_maskz_loadu_ps(m[q], v + j0 + 16 * q);
    o0[q] = o1[q] = _mm512_setzero_ps();
  }
  for (i = 0; i + 2 <= N; i += 2) {  // the update (the rows are in L1 now), written once; o = S'^T r
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int64_t ii = i + h;
      const __m512 di = _mm512_set1_ps(d[ii]), bi = _mm512_set1_ps(b[ii]), ki = _mm512_set1_ps(k[ii]);
      const __m512 ri = _mm512_set1_ps(r[ii]);
      const float* row = S + ii * N + j0;
      float* out = So + ii * N + j0;
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) {
        __m512 s = _mm512_mul_ps(_mm512_maskz_loadu_ps(m[q], row + 16 * q), di);
        s = _mm512_fmadd_ps(ki, vv[q], _mm512_fmadd_ps(bi, sa[q], s));
        if constexpr (Stream)
          _mm512_stream_ps(out + 16 * q, s);
        else
          _mm512_mask_storeu_ps(out + 16 * q, m[q], s);
        if (h == 0)
          o0[q] = _mm512_fmadd_ps(ri, s, o0[q]);
        else
          o1[q] = _mm512_fmadd_ps(ri, s, o1[q]);
      }
    }
  }
  if (i < N) {
    const __m512 di = _mm512_set1_ps(d[i]), bi = _mm512_set1_ps(b[i]), ki = _mm512_set1_ps(k[i]);
    const __m512 ri = _mm512_set1_ps(r[i]);
    const float* row = S + i * N + j0;
    float* out = So + i * N + j0;
    for (int q = 0; q < NV; ++q) {
      __m512 s = _mm512_mul_ps(_mm512_maskz_loadu_ps(m[q], row + 16 * q), di);
      s = _mm512_fmadd_ps(ki, vv[q], _mm512_fmadd_ps(bi, sa[q], s));
      if constexpr (Stream)
        _mm512_stream_ps(out + 16 * q, s);
      else
        _mm512_mask_storeu_ps(out + 16 * q, m[q], s);
      o0[q] = _mm512_fmadd_ps(ri, s, o0[q]);
    }
  }
  for (int q = 0; q < NV; ++q) _mm512_mask_storeu_ps(o + j0 + 16 * q, m[q], _mm512_add_ps(o0[q], o1[q]));
}

template <bool Stream>
static inline void head_groups(const float* r, const float* d, const float* k, const float* v, const float* a,
                               const float* b, const float* S, float* So, float* o, int64_t N) {
  for (int64_t j0 = 0; j0 < N; j0 += 64) {
    switch (std::min<int64_t>(4, (N - j0 + 15) / 16)) {
      case 1: group<1, Stream>(r, d, k, v, a, b, S, So, o, N, j0); break;
      case 2: group<2, Stream>(r, d, k, v, a, b, S, So, o, N, j0); break;
      case 3: group<3, Stream>(r, d, k, v, a, b, S, So, o, N, j0); break;
      default: group<4, Stream>(r, d, k, v, a, b, S, So, o, N, j0); break;
    }
  }
}

void head(const float* r, const float* d, const float* k, const float* v, const float* a, const float* b,
          const float* S, float* So, float* o, int64_t N, float*) {
  // non-temporal stores when every vector is whole and aligned, and the state is not updated in
  // place (then the lines just read are in the cache anyway)
  if (N % 16 == 0 && So != S && reinterpret_cast<uintptr_t>(So) % 64 == 0) {
    head_groups<true>(r, d, k, v, a, b, S, So, o, N);
    _mm_sfence();  // order the streamed state before anything that follows
  } else {
    head_groups<false>(r, d, k, v, a, b, S, So, o, N);
  }
}


// A head's N outputs in blocks of up to 8 x 16 registers (the last one masked), two accumulator sets
// (even and odd inputs d) for more independent FMA chains.
template <int NV>
static inline void up_block(const float* xm, const float* wh, float* yh, int64_t D, int64_t N, int64_t n) {
  __mmask16 mask[NV];
  __m512 a0[NV], a1[NV];
#pragma GCC unroll 8
  for (int i = 0; i < NV; ++i) {
    const int64_t rem = n - 16 * i;  // lanes of vector i inside the block (<= 0: none)
    mask[i] = rem >= 16  ? static_cast<__mmask16>(0xFFFF)
              : rem <= 0 ? static_cast<__mmask16>(0)
                         : static_cast<__mmask16>((1u << rem) - 1u);
    a0[i] = a1[i] = _mm512_setzero_ps();
  }
  int64_t d = 0;
  for (; d + 2 <= D; d += 2) {
    const __m512 x0 = _mm512_set1_ps(xm[d]), x1 = _mm512_set1_ps(xm[d + 1]);
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i) {
      a0[i] = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(mask[i], wh + d * N + 16 * i), a0[i]);
      a1[i] = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(mask[i], wh + (d + 1) * N + 16 * i), a1[i]);
    }
  }
  if (d < D) {
    const __m512 x0 = _mm512_set1_ps(xm[d]);
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i) a0[i] = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(mask[i], wh + d * N + 16 * i), a0[i]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < NV; ++i) _mm512_mask_storeu_ps(yh + 16 * i, mask[i], _mm512_add_ps(a0[i], a1[i]));
}

void up(const float* x, const float* W, float* y, int64_t M, int64_t D, int64_t N, int64_t ldy, int64_t h0,
        int64_t h1) {
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t jb = 0; jb < N; jb += 128) {
        const int64_t n = std::min<int64_t>(128, N - jb);
        const float* xm = x + m * D;
        const float* wh = W + h * D * N + jb;
        float* yh = y + m * ldy + h * N + jb;
        if (n > 64)
          up_block<8>(xm, wh, yh, D, N, n);
        else if (n > 32)
          up_block<4>(xm, wh, yh, D, N, n);
        else
          up_block<2>(xm, wh, yh, D, N, n);
      }
}

// exp(x) for 16 lanes: as avx2::exp8, 2^n by vscalefps.
static inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

static inline __m512 sigmoid16(__m512 z) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), z))));
}

// Masked lanes (the N % 16 tail) load zeros and are not stored.
void prep(const float* w0, const float* a0, const float* v0, const float* k_k, const float* k_a, float* k, float* v,
          const float* wl, const float* al, const float* vl, float* vf, float* wa, float* wb, float* d, int64_t N,
          bool first) {
  auto mask_at = [N](int64_t j) {
    return N - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (N - j)) - 1u);
  };
  __m512 ss = _mm512_setzero_ps();
  for (int64_t j = 0; j < N; j += 16) {
    const __mmask16 m = mask_at(j);
    const __m512 tk = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, k + j), _mm512_maskz_loadu_ps(m, k_k + j));
    _mm512_mask_storeu_ps(wa + j, m, tk);
    ss = _mm512_fmadd_ps(tk, tk, ss);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / std::max(std::sqrt(_mm512_reduce_add_ps(ss)), 1e-12f));
  const __m512 one = _mm512_set1_ps(1.0f), neh = _mm512_set1_ps(static_cast<float>(-std::exp(-0.5)));
  for (int64_t j = 0; j < N; j += 16) {
    const __mmask16 m = mask_at(j);
    auto ld = [m, j](const float* p) { return _mm512_maskz_loadu_ps(m, p + j); };
    const __m512 kk = _mm512_mul_ps(ld(wa), inv);
    _mm512_mask_storeu_ps(d + j, m, exp16(_mm512_mul_ps(neh, sigmoid16(_mm512_add_ps(ld(w0), ld(wl))))));
    const __m512 ai = sigmoid16(_mm512_add_ps(ld(a0), ld(al)));
    _mm512_mask_storeu_ps(k + j, m, _mm512_mul_ps(ld(k), _mm512_fmadd_ps(_mm512_sub_ps(ai, one), ld(k_a), one)));
    _mm512_mask_storeu_ps(wa + j, m, _mm512_sub_ps(_mm512_setzero_ps(), kk));
    _mm512_mask_storeu_ps(wb + j, m, _mm512_mul_ps(kk, ai));
    const __m512 vj = ld(v);
    if (first) {
      _mm512_mask_storeu_ps(vf + j, m, vj);
    } else {
      const __m512 g = sigmoid16(_mm512_add_ps(ld(v0), ld(vl)));
      _mm512_mask_storeu_ps(v + j, m, _mm512_fmadd_ps(_mm512_sub_ps(ld(vf), vj), g, vj));
    }
  }
}

}  // namespace avx512
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// Shared helpers.
// ------------------------------------------------------------------------------------------------

int64_t resolve_isa(int64_t isa, const char* op) {
  if (isa == rwkvkit_gemv::kAuto) isa = rwkvkit_gemv::best_isa();
  TORCH_CHECK(isa >= rwkvkit_gemv::kScalar && isa <= rwkvkit_gemv::kAvx512, op,
              ": isa must be 0 (auto), 1, 2 or 3");
  TORCH_CHECK(rwkvkit_gemv::cpu_has(static_cast<Isa>(isa)), op, ": this CPU lacks the requested instruction set");
  return isa;
}

UpFn up_fn(int64_t isa) {
  switch (isa) {
    case rwkvkit_gemv::kAvx512Vnni:
    case rwkvkit_gemv::kAvx512: return avx512::up;
    case rwkvkit_gemv::kAvx2: return avx2::up;
    default: return up_scalar;
  }
}

PrepFn prep_fn(int64_t isa) {
  switch (isa) {
    case rwkvkit_gemv::kAvx512Vnni:
    case rwkvkit_gemv::kAvx512: return avx512::prep;
    case rwkvkit_gemv::kAvx2: return avx2::prep;
    default: return prep_scalar;
  }
}

HeadFn head_fn(int64_t isa) {
  switch (isa) {
    case rwkvkit_gemv::kAvx512Vnni:
    case rwkvkit_gemv::kAvx512: return avx512::head;
    case rwkvkit_gemv::kAvx2: return avx2::head;
    default: return head_scalar;
  }
}

// All B * H heads: inputs [B*H, N] (rows of stride N), states [B*H, N, N]. Threads take ranges of
// heads; a range needs >= ~32 KB of state, below that a fork/join costs more than it saves.
void wkv_heads(HeadFn fn, int64_t BH, int64_t N, const float* r, const float* lw, const float* k,
               const float* v, const float* a, const float* b, const float* S, float* So, float* o) {
  const int64_t grain = std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(1, N * N * 4));
  at::parallel_for(0, BH, grain, [&](int64_t h0, int64_t h1) {
    std::vector<float> tmp(3 * N);  // decay, then the scalar path's scratch
    float* d = tmp.data();
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t off = h * N;
      for (int64_t i = 0; i < N; ++i) d[i] = std::exp(lw[off + i]);
      fn(r + off, d, k + off, v + off, a + off, b + off, S + off * N, So + off * N, o + off, N, d + N);
    }
  });
}

void check_f32(const at::Tensor& t, at::IntArrayRef shape, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// S_out is S_in, or does not overlap it.
void check_alias(const at::Tensor& S_in, const at::Tensor& S_out, const char* op) {
  const char* a = static_cast<const char*>(S_in.data_ptr());
  const char* b = static_cast<const char*>(S_out.data_ptr());
  const int64_t n = S_in.numel() * 4;
  TORCH_CHECK(a == b || a + n <= b || b + n <= a, op, ": S_out must be S_in itself or not overlap it");
}

at::Tensor wkv7_step(const at::Tensor& r, const at::Tensor& log_w, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& a, const at::Tensor& b, const at::Tensor& S_in, const at::Tensor& S_out,
                     int64_t isa) {
  const char* op = "wkv7_step";
  TORCH_CHECK(r.dim() == 3, op, ": r must be [B, H, N], got ", r.sizes());
  const int64_t B = r.size(0), H = r.size(1), N = r.size(2);
  check_f32(r, {B, H, N}, op, "r");
  check_f32(log_w, {B, H, N}, op, "log_w");
  check_f32(k, {B, H, N}, op, "k");
  check_f32(v, {B, H, N}, op, "v");
  check_f32(a, {B, H, N}, op, "a");
  check_f32(b, {B, H, N}, op, "b");
  check_f32(S_in, {B, H, N, N}, op, "S_in");
  check_f32(S_out, {B, H, N, N}, op, "S_out");
  check_alias(S_in, S_out, op);
  const HeadFn fn = head_fn(resolve_isa(isa, op));
  at::Tensor o = at::empty({B, H, N}, r.options());
  if (o.numel() == 0) return o;
  wkv_heads(fn, B * H, N, r.data_ptr<float>(), log_w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
            a.data_ptr<float>(), b.data_ptr<float>(), S_in.data_ptr<float>(), S_out.data_ptr<float>(),
            o.data_ptr<float>());
  return o;
}

// ------------------------------------------------------------------------------------------------
// The products of a stage, shared out over the threads of the block's parallel region: the panels
// of all of a stage's products are split in ranges of equal weight bytes, so each thread streams its
// share of every matrix of the stage. An epilogue is applied to the rows a thread computed.
// ------------------------------------------------------------------------------------------------
enum class Epi { kNone, kTanh, kSigmoid, kReluSq, kAdd };

// Bytes of the next stage's weights a thread prefetches before a barrier (prefetch_share).
constexpr int64_t kPrefetchNext = 16 * 1024;

struct Job {
  Problem p;
  PanelFn fn = nullptr;    // float weights: p, fn
  QProblem q;
  QPanelFn qfn = nullptr;  // 4-bit weights: q, qfn (x already quantized)
  I8Problem i8;
  I8PanelFn i8fn = nullptr;  // int8 weights: i8, i8fn (x already quantized)
  int64_t panels = 0;      // ceil(N / kPanel) (ceil(N / kQ4Panel) for 4-bit weights)
  int64_t panel_rows = 0;  // kPanel or kQ4Panel
  int64_t panel_cost = 0;  // bytes of weights per panel (+1: never 0)
  Epi epi = Epi::kNone;
  const float* add = nullptr;  // kAdd: out[m, n] = add[m, n] + y[m, n] (row stride ldo for both)
  float* out = nullptr;
  int64_t ldo = 0;
};

// Rows [q0, q1) of panels of job j, then its epilogue on those rows.
void run_panels(const Job& j, int64_t q0, int64_t q1) {
  int64_t M, N, ldy;
  float* y;
  if (j.qfn) {
    j.qfn(j.q, q0, q1);
    M = j.q.M, N = j.q.N, ldy = j.q.ldy, y = j.q.y;
  } else if (j.i8fn) {
    j.i8fn(j.i8, q0, q1);
    M = j.i8.M, N = j.i8.N, ldy = j.i8.ldy, y = j.i8.y;
  } else {
    j.fn(j.p, q0, q1);
    M = j.p.M, N = j.p.N, ldy = j.p.ldy, y = j.p.y;
  }
  if (j.epi == Epi::kNone) return;
  const int64_t n0 = q0 * j.panel_rows, n1 = std::min(N, q1 * j.panel_rows);
  for (int64_t m = 0; m < M; ++m) {
    float* yr = y + m * ldy;
    switch (j.epi) {
      case Epi::kTanh:
        for (int64_t n = n0; n < n1; ++n) yr[n] = std::tanh(yr[n]);
        break;
      case Epi::kSigmoid:
        for (int64_t n = n0; n < n1; ++n) yr[n] = sigmoid(yr[n]);
        break;
      case Epi::kReluSq:
        for (int64_t n = n0; n < n1; ++n) {
          const float t = std::max(yr[n], 0.0f);
          yr[n] = t * t;
        }
        break;
      case Epi::kAdd:
        for (int64_t n = n0; n < n1; ++n) j.out[m * j.ldo + n] = j.add[m * j.ldo + n] + yr[n];
        break;
      default: break;
    }
  }
}

// Thread t's share (of T) of the jobs: the panels whose cost range starts in [total t / T, total (t+1) / T).
void run_share(const Job* jobs, int n, int t, int T) {
  int64_t total = 0;
  for (int j = 0; j < n; ++j) total += jobs[j].panels * jobs[j].panel_cost;
  const int64_t lo = total * t / T, hi = total * (t + 1) / T;
  int64_t start = 0;  // cost before job j
  for (int j = 0; j < n; ++j) {
    const Job& jb = jobs[j];
    const int64_t c = jb.panel_cost;
    auto first = [&](int64_t bound) {  // the first panel whose start cost is >= bound
      const int64_t rel = bound - start;
      return rel <= 0 ? int64_t{0} : std::min<int64_t>(jb.panels, (rel + c - 1) / c);
    };
    const int64_t q0 = first(lo), q1 = first(hi);
    if (q0 < q1) run_panels(jb, q0, q1);
    start += jb.panels * c;
  }
}

// A projection weight as the operator takes it (checked before the parallel region: no exception
// may leave an OpenMP region): float32 / bfloat16 / int8 [rows, cols] (int8: with its float32
// [rows] scale), or 4-bit: Q4Linear's uint8 [ceil(rows / 16), ceil(cols / 32), 256] codes and
// int16 [.., .., 16] scales.
struct Weight {
  const void* w = nullptr;
  const float* scale = nullptr;   // float weights
  const uint16_t* d = nullptr;    // 4-bit weights
  at::ScalarType dt = at::kFloat;
  int64_t rows = 0, cols = 0;
  bool q4() const { return dt == at::kByte; }
  bool i8() const { return dt == at::kChar; }
  int64_t cost() const {  // bytes streamed per product
    return q4() ? ((rows + kQ4Panel - 1) / kQ4Panel) * ((cols + kQ4Block - 1) / kQ4Block) *
                      (kQ4PanelBlockBytes + 2 * kQ4Panel)
                : rows * cols * static_cast<int64_t>(at::elementSize(dt));
  }
};

Weight check_weight(const at::Tensor& w, const c10::optional<at::Tensor>& scale, int64_t rows, int64_t cols,
                    const char* name) {
  const char* op = "rwkv7_block_decode";
  const at::ScalarType dt = w.scalar_type();
  TORCH_CHECK(w.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  Weight r;
  r.w = w.data_ptr();
  r.dt = dt;
  r.rows = rows;
  r.cols = cols;
  const bool has_scale = scale.has_value() && scale->defined();
  if (dt == at::kByte) {  // 4-bit
    const int64_t P = (rows + kQ4Panel - 1) / kQ4Panel, KB = (cols + kQ4Block - 1) / kQ4Block;
    TORCH_CHECK(w.dim() == 3 && w.size(0) == P && w.size(1) == KB && w.size(2) == kQ4PanelBlockBytes &&
                    w.is_contiguous(),
                op, ": ", name, " (4-bit) must be a contiguous uint8 [", P, ", ", KB, ", 256] tensor, got ", w.sizes());
    TORCH_CHECK(has_scale && scale->scalar_type() == at::kShort && scale->device().is_cpu() &&
                    scale->is_contiguous() && scale->sizes() == at::IntArrayRef({P, KB, kQ4Panel}),
                op, ": ", name, " (4-bit) needs its int16 [", P, ", ", KB, ", 16] scales");
    r.d = reinterpret_cast<const uint16_t*>(scale->data_ptr<int16_t>());
    return r;
  }
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kChar, op, ": ", name,
              " must be float32, bfloat16, int8 or 4-bit (uint8), got ", dt);
  TORCH_CHECK(w.dim() == 2 && w.size(0) == rows && w.size(1) == cols, op, ": ", name, " must have shape [", rows,
              ", ", cols, "], got ", w.sizes());
  TORCH_CHECK(w.is_contiguous(), op, ": ", name, " must be contiguous");
  if (has_scale) {
    check_f32(*scale, {rows}, op, "a scale");
    r.scale = scale->data_ptr<float>();
  }
  TORCH_CHECK(dt != at::kChar || r.scale != nullptr, op, ": ", name, " is int8 and needs its float32 scale");
  return r;
}

// The start of thread t's share (of T) of a stage's weights, as run_share splits the jobs that
// make_job builds from them, prefetched (`bytes`, and the matching scales of 4-bit weights): called
// before a barrier, it starts the next stage's memory streams while the thread waits.
void prefetch_share(std::initializer_list<const Weight*> ws, int t, int T, int64_t bytes) {
  auto split = [](const Weight& W, int64_t& panels, int64_t& cost, int64_t& panel_bytes) {
    if (W.q4()) {
      const int64_t KB = (W.cols + kQ4Block - 1) / kQ4Block;
      panels = (W.rows + kQ4Panel - 1) / kQ4Panel;
      panel_bytes = KB * kQ4PanelBlockBytes;
      cost = KB * (kQ4PanelBlockBytes + 2 * kQ4Panel) + 1;
    } else {
      panels = (W.rows + kPanel - 1) / kPanel;
      panel_bytes = kPanel * W.cols * static_cast<int64_t>(at::elementSize(W.dt));
      cost = panel_bytes + 1;
    }
  };
  int64_t total = 0, panels, cost, panel_bytes;
  for (const Weight* W : ws) {
    split(*W, panels, cost, panel_bytes);
    total += panels * cost;
  }
  const int64_t lo = total * t / T;
  int64_t start = 0;
  for (const Weight* W : ws) {
    split(*W, panels, cost, panel_bytes);
    if (lo < start + panels * cost) {
      const int64_t q = std::max<int64_t>(0, (lo - start + cost - 1) / cost);
      if (q >= panels) continue;
      const char* p = static_cast<const char*>(W->w) + q * panel_bytes;
      for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
      if (W->q4()) {  // the scales: 32 bytes per block of 256 codes
        const char* d = reinterpret_cast<const char*>(W->d) + q * (panel_bytes / 8);
        for (int64_t b = 0; b < bytes / 8; b += 64) _mm_prefetch(d + b, _MM_HINT_T0);
      }
      return;
    }
    start += panels * cost;
  }
}

// The first `bytes` of a range (a thread's LoRA up-projection weights).
inline void prefetch_bytes(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(static_cast<const char*>(p) + b, _MM_HINT_T0);
}

// Bytes of int8 activations (xq, xd, xs, each 64-byte aligned) of a 4-bit product of M rows of K.
inline size_t q_bytes(int64_t M, int64_t K) {
  const int64_t KB = (K + kQ4Block - 1) / kQ4Block;
  auto round = [](int64_t n) { return (static_cast<size_t>(n) + 63) & ~size_t{63}; };
  return round(M * KB * kQ4Block) + 2 * round(M * KB * 4);
}

// The int8 activations of a product's input x [M, cols] in qbuf (q_bytes(M, cols) of this thread's
// scratch): xq, then xd and xs, each 64-byte aligned.
void quantize_into(char* qbuf, const float* x, int64_t M, int64_t cols, int64_t isa, int8_t*& xq, float*& xd,
                   int32_t*& xs) {
  const int64_t KB = (cols + kQ4Block - 1) / kQ4Block;
  auto round = [](int64_t n) { return (n + 63) & ~int64_t{63}; };
  xq = reinterpret_cast<int8_t*>(qbuf);
  xd = reinterpret_cast<float*>(qbuf + round(M * KB * kQ4Block));
  xs = reinterpret_cast<int32_t*>(qbuf + round(M * KB * kQ4Block) + round(M * KB * 4));
  rwkvkit_gemv::quantize_rows(isa, x, M, cols, xq, xd, xs);
}

// The job of y = x @ W^T (y rows ldy apart). 4-bit and int8 weights multiply int8 activations,
// quantized first into `qbuf` (q_bytes(M, W.cols) of this thread's scratch) with `qisa`.
Job make_job(const Weight& W, const float* x, float* y, int64_t M, int64_t ldy, int64_t isa, int64_t qisa,
             char* qbuf, Epi epi = Epi::kNone) {
  Job j;
  j.epi = epi;
  int8_t* xq = nullptr;
  float* xd = nullptr;
  int32_t* xs = nullptr;
  if (W.q4() || W.i8()) quantize_into(qbuf, x, M, W.cols, qisa, xq, xd, xs);
  if (W.q4()) {
    const int64_t KB = (W.cols + kQ4Block - 1) / kQ4Block;
    j.q = QProblem{xq, xd, xs, static_cast<const uint8_t*>(W.w), W.d, y, M, W.rows, KB, ldy};
    j.qfn = rwkvkit_gemv::q4_panel_fn(qisa);
    j.panel_rows = kQ4Panel;
    j.panels = (W.rows + kQ4Panel - 1) / kQ4Panel;
    j.panel_cost = KB * (kQ4PanelBlockBytes + 2 * kQ4Panel) + 1;
  } else if (W.i8()) {  // int8 activations too: the exact int8 x fp32 product is compute-bound
    j.i8 = I8Problem{xq, xd, xs, static_cast<const int8_t*>(W.w), W.scale, y, M, W.rows, W.cols, ldy};
    j.i8fn = rwkvkit_gemv::i8_panel_fn(qisa);
    j.panel_rows = kPanel;
    j.panels = (W.rows + kPanel - 1) / kPanel;
    j.panel_cost = kPanel * W.cols + 1;
  } else {
    const int64_t es = static_cast<int64_t>(at::elementSize(W.dt));
    j.p = Problem{x, W.w, W.scale, y, M, W.rows, W.cols, ldy};
    j.fn = rwkvkit_gemv::panel_fn(isa, W.dt);
    j.panel_rows = kPanel;
    j.panels = (W.rows + kPanel - 1) / kPanel;
    j.panel_cost = kPanel * W.cols * es + 1;
  }
  return j;
}

// y = LayerNorm(x) over n values (biased variance, two passes), weight w, bias b.
void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, float eps) {
  float mean = 0.0f;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<float>(n);
  float var = 0.0f;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<float>(n);
  const float rstd = 1.0f / std::sqrt(var + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

// ------------------------------------------------------------------------------------------------
// Optional per-stage timers (rwkvkit_kernels::rwkv7_decode_profile): thread 0's time in each stage
// (barrier waits included), summed over the layers and calls.
// ------------------------------------------------------------------------------------------------
constexpr int kStages = 7;  // ln1+rkv+lora_down, heads, output, ln2+ffn_key, ffn_value, head, join
std::atomic<bool> g_profile{false};
std::atomic<int64_t> g_stage_ns[kStages + 1];  // + the number of calls

struct StageClock {
  bool on = g_profile.load(std::memory_order_relaxed);
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void mark(int stage) {
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    g_stage_ns[stage].fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count(),
                                std::memory_order_relaxed);
    last = now;
  }
};

at::Tensor decode_profile(bool enable) {
  at::Tensor out = at::empty({kStages + 1}, at::TensorOptions().dtype(at::kLong));
  for (int i = 0; i <= kStages; ++i) out.data_ptr<int64_t>()[i] = g_stage_ns[i].exchange(0);
  g_profile.store(enable);
  return out;
}

// ------------------------------------------------------------------------------------------------
// One block, checked once (check_layer) and run by every thread of a parallel region (layer_step).
// ------------------------------------------------------------------------------------------------
constexpr int kNumParams = 33;
constexpr int kNumScales = 6;

struct Dims {
  int64_t C = 0, H = 0, N = 0, F = 0, Dw = 0, Da = 0, Dv = 0, Dg = 0;
  bool operator==(const Dims& o) const {
    return C == o.C && H == o.H && N == o.N && F == o.F && Dw == o.Dw && Da == o.Da && Dv == o.Dv && Dg == o.Dg;
  }
};

struct LayerParams {
  const float *ln1w, *ln1b, *ln2w, *ln2b, *mix_r, *mix_w, *mix_k, *mix_v, *mix_a, *mix_g;
  const float *w0, *a0, *v0, *k_k, *k_a, *r_k, *gnw, *gnb, *fmix;
  Weight Wr, Wk, Wv, Wo, Fk, Fv, w1, a1, v1, g1;
  const float *w2, *a2, *v2, *g2;  // the LoRA up-projections, [H, D, N] (UpFn)
  int64_t up_bytes;
  bool first;
  int64_t bytes() const {  // weights streamed per token
    return Wr.cost() + Wk.cost() + Wv.cost() + Wo.cost() + Fk.cost() + Fv.cost() + w1.cost() + a1.cost() +
           (first ? 0 : v1.cost()) + g1.cost() + up_bytes;
  }
};

// The checks of the 33 parameters and 6 scales of a block (see the top of the file).
LayerParams check_layer(at::TensorList P, const c10::List<c10::optional<at::Tensor>>& scales, int64_t layer_id,
                        int64_t dim_ffn, Dims& d, const char* op) {
  TORCH_CHECK(P.size() == kNumParams, op, ": params must hold ", kNumParams, " tensors, got ", P.size());
  TORCH_CHECK(scales.size() == kNumScales, op, ": scales must hold ", kNumScales, " entries, got ", scales.size());
  TORCH_CHECK(P[23].dim() == 2, op, ": r_k (params[23]) must be [H, N], got ", P[23].sizes());
  d.H = P[23].size(0), d.N = P[23].size(1), d.C = d.H * d.N;
  d.Dw = P[11].size(0), d.Da = P[14].size(0), d.Dv = P[17].size(0), d.Dg = P[19].size(0);
  TORCH_CHECK(dim_ffn > 0 || P[31].scalar_type() != at::kByte, op, ": a 4-bit ffn W_key needs dim_ffn");
  d.F = dim_ffn > 0 ? dim_ffn : P[31].size(0);
  const int64_t C = d.C;
  static const char* names[kNumParams] = {
      "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1^T",
      "w2^H", "a0", "a1^T", "a2^H", "v0", "v1^T", "v2^H", "g1^T", "g2^H", "k_k", "k_a", "r_k", "ln_x.weight",
      "ln_x.bias", "W_r", "W_k", "W_v", "W_o", "ffn.x_k", "ffn W_key", "ffn W_value"};
  for (int i : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 21, 22, 24, 25, 30}) check_f32(P[i], {C}, op, names[i]);
  check_f32(P[23], {d.H, d.N}, op, names[23]);
  for (int i : {11, 14, 17, 19}) check_f32(P[i], {P[i].size(0), C}, op, names[i]);
  check_f32(P[12], {d.H, d.Dw, d.N}, op, names[12]);
  check_f32(P[15], {d.H, d.Da, d.N}, op, names[15]);
  check_f32(P[18], {d.H, d.Dv, d.N}, op, names[18]);
  check_f32(P[20], {d.H, d.Dg, d.N}, op, names[20]);
  const auto none = c10::optional<at::Tensor>();
  auto fp = [&](int i) { return P[i].data_ptr<float>(); };
  LayerParams L{fp(0),  fp(1),  fp(2),  fp(3),  fp(4),  fp(5),  fp(6),  fp(7),  fp(8),  fp(9),
                fp(10), fp(13), fp(16), fp(21), fp(22), fp(23), fp(24), fp(25), fp(30),
                check_weight(P[26], scales.get(0), C, C, names[26]),
                check_weight(P[27], scales.get(1), C, C, names[27]),
                check_weight(P[28], scales.get(2), C, C, names[28]),
                check_weight(P[29], scales.get(3), C, C, names[29]),
                check_weight(P[31], scales.get(4), d.F, C, names[31]),
                check_weight(P[32], scales.get(5), C, d.F, names[32]),
                check_weight(P[11], none, d.Dw, C, names[11]),
                check_weight(P[14], none, d.Da, C, names[14]),
                check_weight(P[17], none, d.Dv, C, names[17]),
                check_weight(P[19], none, d.Dg, C, names[19]),
                fp(12),
                fp(15),
                fp(18),
                fp(20),
                4 * C * (d.Dw + d.Da + (layer_id == 0 ? 0 : d.Dv) + d.Dg),
                layer_id == 0};
  return L;
}

// The isa arguments: the float kernels' and the 4-bit kernels' (isa 4 = AVX-512 with VNNI: the float
// kernels take 3).
std::pair<int64_t, int64_t> resolve_isas(int64_t isa_arg, const char* op) {
  const int64_t qisa = isa_arg == rwkvkit_gemv::kAuto ? rwkvkit_gemv::best_qisa() : isa_arg;
  TORCH_CHECK(qisa >= rwkvkit_gemv::kScalar && qisa <= rwkvkit_gemv::kAvx512Vnni, op,
              ": isa must be 0 (auto), 1, 2, 3 or 4");
  TORCH_CHECK(rwkvkit_gemv::cpu_has(static_cast<Isa>(qisa)), op, ": this CPU lacks the requested instruction set");
  const int64_t isa = isa_arg == rwkvkit_gemv::kAuto ? rwkvkit_gemv::best_isa()
                                                     : std::min<int64_t>(isa_arg, rwkvkit_gemv::kAvx512);
  return {isa, qisa};
}

// Scratch for B sequences and T threads: shared buffers (the products' outputs), then per thread the
// inputs it multiplies (every thread computes all of them, which costs less than a barrier) and
// their int8 forms. A per-thread vector of the calling thread, reused across calls (grows only).
struct Scratch {
  float *r, *k, *v, *wl, *al, *vl, *g, *xo, *yo, *yf, *hw, *ha, *hv, *hg, *hf, *xa_, *xb_, *vf;
  char* priv;
  size_t priv_bytes, priv_floats;
  struct Private {
    float *xr, *xw, *xk, *xv, *xa, *xg, *xl, *xf, *dec;
    char* qb;
  };
  Private mine(int t, int64_t BC) const {
    float* pf = reinterpret_cast<float*>(priv + t * priv_bytes);
    return {pf, pf + BC, pf + 2 * BC, pf + 3 * BC, pf + 4 * BC, pf + 5 * BC, pf + 6 * BC, pf + 7 * BC, pf + 8 * BC,
            priv + t * priv_bytes + priv_floats * 4};
  }
};

Scratch make_scratch(const Dims& d, int64_t B, int T) {
  static thread_local std::vector<char> buf;
  const int64_t BC = B * d.C;
  const size_t shared_floats = static_cast<size_t>(13 * BC + B * (d.Dw + d.Da + d.Dv + d.Dg + d.F));
  const size_t priv_floats = static_cast<size_t>(8 * BC + 3 * d.N);
  const size_t priv_q = std::max(3 * q_bytes(B, d.C), q_bytes(B, d.F));
  const size_t priv_bytes = (priv_floats * 4 + priv_q + 63) & ~size_t{63};
  const size_t shared_bytes = (shared_floats * 4 + 63) & ~size_t{63};
  const size_t need = 64 + shared_bytes + T * priv_bytes;
  if (buf.size() < need) buf.resize(need);
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  float* sp = reinterpret_cast<float*>(base);
  auto take = [&](int64_t n) {
    float* q = sp;
    sp += n;
    return q;
  };
  Scratch s;
  s.r = take(BC), s.k = take(BC), s.v = take(BC), s.wl = take(BC), s.al = take(BC), s.vl = take(BC);
  s.g = take(BC), s.xo = take(BC), s.yo = take(BC), s.yf = take(BC), s.xa_ = take(BC), s.xb_ = take(BC);
  s.vf = take(BC);
  s.hw = take(B * d.Dw), s.ha = take(B * d.Da), s.hv = take(B * d.Dv), s.hg = take(B * d.Dg), s.hf = take(B * d.F);
  s.priv = base + shared_bytes;
  s.priv_bytes = priv_bytes;
  s.priv_floats = priv_floats;
  return s;
}

// One block's inputs and outputs: x [B, C] in, Xo out; the state (updated in place); v_first.
struct LayerIO {
  const float* X;
  float* Xo;
  float *sh_att, *sh_ffn, *vf;
  const float* Sin;
  float* Sout;
};

// Block.forward for one token, all B sequences, by thread t of the nt threads of a parallel region
// (every thread calls it). Barriers inside; it returns after this thread's share of the last product
// (FFN value, added into Xo): the caller's barrier (or the region's end) completes Xo.
void layer_step(const LayerParams& L, const Dims& d, int64_t B, const Scratch& s, const LayerIO& io, int64_t isa,
                int64_t qisa, HeadFn wkv_head, PrepFn prep, UpFn up, int t, int nt, StageClock& clock) {
  const int64_t C = d.C, H = d.H, N = d.N, BC = B * C;
  const Scratch::Private p = s.mine(t, BC);
  float *xr = p.xr, *xw = p.xw, *xk = p.xk, *xv = p.xv, *xa = p.xa, *xg = p.xg, *xl = p.xl, *xf = p.xf;
  float *r = s.r, *k = s.k, *v = s.v, *wl = s.wl, *al = s.al, *vl = s.vl, *g = s.g, *xo = s.xo;
  const float* X = io.X;
  float* Xo = io.Xo;
  const int64_t c0 = BC * t / nt, c1 = BC * (t + 1) / nt;  // this thread's share of the state writes

  // 1. LN1, token shift, the six mixes (every thread, all values: its private inputs); then r, k, v
  //    and the LoRA down-projections (with their nonlinearities), shared out.
  for (int64_t bb = 0; bb < B; ++bb) {
    const int64_t o = bb * C;
    layer_norm(X + o, L.ln1w, L.ln1b, xl + o, C, 1e-5f);
    for (int64_t c = 0; c < C; ++c) {
      const float xc = xl[o + c], dc = io.sh_att[o + c] - xc;
      xr[o + c] = xc + dc * L.mix_r[c];
      xw[o + c] = xc + dc * L.mix_w[c];
      xk[o + c] = xc + dc * L.mix_k[c];
      xv[o + c] = xc + dc * L.mix_v[c];
      xa[o + c] = xc + dc * L.mix_a[c];
      xg[o + c] = xc + dc * L.mix_g[c];
    }
  }
  {
    Job jobs[7];
    int n = 0;
    const size_t qc = q_bytes(B, C);
    jobs[n++] = make_job(L.Wr, xr, r, B, C, isa, qisa, p.qb);
    jobs[n++] = make_job(L.Wk, xk, k, B, C, isa, qisa, p.qb + qc);
    jobs[n++] = make_job(L.Wv, xv, v, B, C, isa, qisa, p.qb + 2 * qc);
    jobs[n++] = make_job(L.w1, xw, s.hw, B, d.Dw, isa, qisa, nullptr, Epi::kTanh);
    jobs[n++] = make_job(L.a1, xa, s.ha, B, d.Da, isa, qisa, nullptr);
    if (!L.first) jobs[n++] = make_job(L.v1, xv, s.hv, B, d.Dv, isa, qisa, nullptr);
    jobs[n++] = make_job(L.g1, xg, s.hg, B, d.Dg, isa, qisa, nullptr, Epi::kSigmoid);
    run_share(jobs, n, t, nt);
  }
  const int64_t h0 = H * t / nt, h1 = H * (t + 1) / nt;
  if (h0 < h1) {  // the next stage's first weights, while waiting (see prefetch_share)
    prefetch_bytes(L.w2 + h0 * d.Dw * N, kPrefetchNext);
    prefetch_bytes(L.a2 + h0 * d.Da * N, kPrefetchNext);
  }
#pragma omp barrier
  // every thread has read the old att_shift: the new one (the LN1 output) can be written
  for (int64_t i = c0; i < c1; ++i) io.sh_att[i] = xl[i];
  if (t == 0) clock.mark(0);

  // 2. Per head, for this thread's heads: the LoRA up-projections of the head's channels, decay,
  //    in-context rate, kk, k, value residual, the WKV step, GroupNorm and bonus, times g (into xo).
  if (h0 < h1) {
    up(s.hw, L.w2, wl, B, d.Dw, N, C, h0, h1);
    up(s.ha, L.a2, al, B, d.Da, N, C, h0, h1);
    if (!L.first) up(s.hv, L.v2, vl, B, d.Dv, N, C, h0, h1);
    up(s.hg, L.g2, g, B, d.Dg, N, C, h0, h1);
  }
  for (int64_t bb = 0; bb < B; ++bb) {
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t o = bb * C + h * N;
      // decay, in-context rate, kk, k, value residual; WKV inputs a = -kk (in xw), b = kk * a (in xa)
      const int64_t c = h * N, s_off = (bb * H + h) * N * N;
      prep(L.w0 + c, L.a0 + c, L.v0 + c, L.k_k + c, L.k_a + c, k + o, v + o, wl + o, al + o, vl + o, io.vf + o, xw + o,
           xa + o, p.dec, N, L.first);
      // the WKV step of head (bb, h): output into xl (free: the LN1 output is in att_shift now)
      wkv_head(r + o, p.dec, k + o, v + o, xw + o, xa + o, io.Sin + s_off, io.Sout + s_off, xl + o, N, p.dec + N);
      // GroupNorm of the head + bonus, times g
      float mean = 0.0f, var = 0.0f, bonus = 0.0f;
      for (int64_t j = 0; j < N; ++j) mean += xl[o + j];
      mean /= static_cast<float>(N);
      for (int64_t j = 0; j < N; ++j) var += (xl[o + j] - mean) * (xl[o + j] - mean);
      var /= static_cast<float>(N);
      const float rstd = 1.0f / std::sqrt(var + 64e-5f);
      for (int64_t j = 0; j < N; ++j) bonus += r[o + j] * k[o + j] * L.r_k[h * N + j];
      for (int64_t j = 0; j < N; ++j) {
        const int64_t c = h * N + j;
        const float gn = (xl[o + j] - mean) * rstd * L.gnw[c] + L.gnb[c];
        xo[o + j] = (gn + bonus * v[o + j]) * g[o + j];
      }
    }
  }
  prefetch_share({&L.Wo}, t, nt, kPrefetchNext);
#pragma omp barrier
  if (t == 0) clock.mark(1);

  // 3. Output projection, residual: Xo = X + xo @ W_o^T.
  {
    Job job = make_job(L.Wo, xo, s.yo, B, C, isa, qisa, p.qb, Epi::kAdd);
    job.add = X, job.out = Xo, job.ldo = C;
    run_share(&job, 1, t, nt);
  }
  prefetch_share({&L.Fk}, t, nt, kPrefetchNext);
#pragma omp barrier
  if (t == 0) clock.mark(2);

  // 4. Channel mix: LN2, token shift (every thread, all values), relu(key)^2 (shared out).
  for (int64_t bb = 0; bb < B; ++bb) {
    const int64_t o = bb * C;
    layer_norm(Xo + o, L.ln2w, L.ln2b, xl + o, C, 1e-5f);
    for (int64_t c = 0; c < C; ++c) xf[o + c] = xl[o + c] + (io.sh_ffn[o + c] - xl[o + c]) * L.fmix[c];
  }
  {
    Job job = make_job(L.Fk, xf, s.hf, B, d.F, isa, qisa, p.qb, Epi::kReluSq);
    run_share(&job, 1, t, nt);
  }
  prefetch_share({&L.Fv}, t, nt, kPrefetchNext);
#pragma omp barrier
  for (int64_t i = c0; i < c1; ++i) io.sh_ffn[i] = xl[i];  // every thread has read the old ffn_shift
  if (t == 0) clock.mark(3);

  // 5. Value projection, residual: Xo += hf @ W_value^T.
  {
    Job job = make_job(L.Fv, s.hf, s.yf, B, C, isa, qisa, p.qb, Epi::kAdd);
    job.add = Xo, job.out = Xo, job.ldo = C;
    run_share(&job, 1, t, nt);
  }
}

// Threads for `bytes` of weights per token: >= ~64 KB each (below, a fork/join costs more than a
// core saves), at most torch's thread count.
int pick_threads(int64_t bytes) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), bytes / (64 * 1024))));
}

at::Tensor block_decode(const at::Tensor& x, const at::Tensor& att_shift, const at::Tensor& S_in,
                        const at::Tensor& S_out, const at::Tensor& ffn_shift, const at::Tensor& v_first,
                        at::TensorList P, const c10::List<c10::optional<at::Tensor>>& scales, int64_t layer_id,
                        int64_t isa_arg, int64_t dim_ffn) {
  const char* op = "rwkv7_block_decode";
  Dims d;
  const LayerParams L = check_layer(P, scales, layer_id, dim_ffn, d, op);
  TORCH_CHECK(x.dim() == 2, op, ": x must be [B, C], got ", x.sizes());
  const int64_t B = x.size(0), C = d.C, H = d.H, N = d.N;
  TORCH_CHECK(x.size(1) == C, op, ": r_k is [", H, ", ", N, "] but x is ", x.sizes());
  check_f32(x, {B, C}, op, "x");
  check_f32(att_shift, {B, C}, op, "att_shift");
  check_f32(ffn_shift, {B, C}, op, "ffn_shift");
  check_f32(v_first, {B, C}, op, "v_first");
  check_f32(S_in, {B, H, N, N}, op, "S_in");
  check_f32(S_out, {B, H, N, N}, op, "S_out");
  check_alias(S_in, S_out, op);
  TORCH_CHECK(x.data_ptr() != att_shift.data_ptr() && x.data_ptr() != ffn_shift.data_ptr(), op,
              ": x must not be a state tensor");
  const auto [isa, qisa] = resolve_isas(isa_arg, op);
  const HeadFn wkv_head = head_fn(isa);
  const PrepFn prep = prep_fn(isa);
  const UpFn up = up_fn(isa);
  const int T = pick_threads(L.bytes());
  const Scratch s = make_scratch(d, B, T);
  at::Tensor out = at::empty({B, C}, x.options());
  const LayerIO io{x.data_ptr<float>(), out.data_ptr<float>(),   att_shift.data_ptr<float>(),
                   ffn_shift.data_ptr<float>(), v_first.data_ptr<float>(), S_in.data_ptr<float>(),
                   S_out.data_ptr<float>()};
  StageClock clock;
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();  // nt < T in a nested region
    layer_step(L, d, B, s, io, isa, qisa, wkv_head, prep, up, t, nt, clock);
    if (t == 0) clock.mark(4);
  }
  clock.mark(6);
  if (clock.on) g_stage_ns[kStages].fetch_add(1);
  return out;
}

// ------------------------------------------------------------------------------------------------
// A whole model's decoding step: every block, then (optionally) ln_out and the head, in one parallel
// region. The parameters are checked once, when the plan is made (Rwkv7Plan's constructor); the plan
// keeps references to its tensors.
// ------------------------------------------------------------------------------------------------
struct Rwkv7Plan : torch::CustomClassHolder {
  std::vector<at::Tensor> keep;  // every tensor the pointers below point into
  std::vector<LayerParams> layers;
  Dims d;
  bool has_head = false;
  const float *lnw = nullptr, *lnb = nullptr;
  double ln_eps = 1e-5;
  Weight head;
  int64_t V = 0, isa = 0, qisa = 0, bytes = 0;

  // params: the 33 tensors of every block in order (pack_block's); scales: their 6 scales each;
  // head: empty, or [ln_out.weight, ln_out.bias, head weight (+ its scale)] with head_rows rows.
  Rwkv7Plan(std::vector<at::Tensor> params, std::vector<c10::optional<at::Tensor>> scales, int64_t dim_ffn,
            std::vector<at::Tensor> head_params, int64_t head_rows, double eps, int64_t isa_arg) {
    const char* op = "Rwkv7Plan";
    TORCH_CHECK(!params.empty() && params.size() % kNumParams == 0, op, ": params must hold ", kNumParams,
                " tensors per block, got ", params.size());
    const size_t n_layer = params.size() / kNumParams;
    TORCH_CHECK(scales.size() == n_layer * kNumScales, op, ": scales must hold ", kNumScales, " per block");
    keep = params;
    for (const auto& sc : scales)
      if (sc.has_value()) keep.push_back(*sc);
    for (size_t l = 0; l < n_layer; ++l) {
      const std::vector<at::Tensor> P(params.begin() + l * kNumParams, params.begin() + (l + 1) * kNumParams);
      c10::List<c10::optional<at::Tensor>> S;
      for (int i = 0; i < kNumScales; ++i) S.push_back(scales[l * kNumScales + i]);
      Dims dl;
      layers.push_back(check_layer(P, S, static_cast<int64_t>(l), dim_ffn, dl, op));
      TORCH_CHECK(l == 0 || dl == d, op, ": block ", l, " has other dimensions than block 0");
      d = dl;
      bytes += layers.back().bytes();
    }
    TORCH_CHECK(head_params.empty() || head_params.size() == 3 || head_params.size() == 4, op,
                ": head must be [] or [ln_out.weight, ln_out.bias, weight(, scale)]");
    if (!head_params.empty()) {
      check_f32(head_params[0], {d.C}, op, "ln_out.weight");
      check_f32(head_params[1], {d.C}, op, "ln_out.bias");
      const c10::optional<at::Tensor> hs =
          head_params.size() == 4 ? c10::optional<at::Tensor>(head_params[3]) : c10::nullopt;
      head = check_weight(head_params[2], hs, head_rows, d.C, "head");
      for (const auto& t : head_params) keep.push_back(t);
      lnw = head_params[0].data_ptr<float>(), lnb = head_params[1].data_ptr<float>();
      has_head = true, V = head_rows, ln_eps = eps;
      bytes += head.cost();
    }
    std::tie(isa, qisa) = resolve_isas(isa_arg, op);
  }

  int64_t n_layer() const { return static_cast<int64_t>(layers.size()); }

  // x [B, C] (the embeddings) -> the logits [B, V] (or the last block's output [B, C] without a head).
  // att_shift, ffn_shift [L, B, C] updated in place; the WKV state read from S_in [L, B, H, N, N],
  // written to S_out (may be S_in).
  at::Tensor step(const at::Tensor& x, const at::Tensor& att_shift, const at::Tensor& S_in, const at::Tensor& S_out,
                  const at::Tensor& ffn_shift) {
    const char* op = "Rwkv7Plan.step";
    const int64_t L = n_layer(), C = d.C, H = d.H, N = d.N;
    TORCH_CHECK(x.dim() == 2 && x.size(1) == C, op, ": x must be [B, ", C, "], got ", x.sizes());
    const int64_t B = x.size(0), BC = B * C;
    check_f32(x, {B, C}, op, "x");
    check_f32(att_shift, {L, B, C}, op, "att_shift");
    check_f32(ffn_shift, {L, B, C}, op, "ffn_shift");
    check_f32(S_in, {L, B, H, N, N}, op, "S_in");
    check_f32(S_out, {L, B, H, N, N}, op, "S_out");
    check_alias(S_in, S_out, op);
    const HeadFn wkv_head = head_fn(isa);
    const PrepFn prep = prep_fn(isa);
    const UpFn up = up_fn(isa);
    const int T = pick_threads(bytes / L);
    const Scratch s = make_scratch(d, B, T);
    at::Tensor out = at::empty({B, has_head ? V : C}, x.options());
    const float* X0 = x.data_ptr<float>();
    float* att = att_shift.data_ptr<float>();
    float* ffn = ffn_shift.data_ptr<float>();
    const float* Sin = S_in.data_ptr<float>();
    float* Sout = S_out.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const int64_t SN = B * H * N * N;
    StageClock clock;
#pragma omp parallel num_threads(T)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const float* X = X0;
      for (int64_t l = 0; l < L; ++l) {
        float* Xo = (l == L - 1 && !has_head) ? o : (l % 2 ? s.xb_ : s.xa_);
        const LayerIO io{X, Xo, att + l * BC, ffn + l * BC, s.vf, Sin + l * SN, Sout + l * SN};
        layer_step(layers[l], d, B, s, io, isa, qisa, wkv_head, prep, up, t, nt, clock);
        if (l + 1 < L) {
          const LayerParams& n = layers[l + 1];
          prefetch_share({&n.Wr, &n.Wk, &n.Wv, &n.w1, &n.a1, &n.v1, &n.g1}, t, nt, kPrefetchNext);
        } else if (has_head) {
          prefetch_share({&head}, t, nt, kPrefetchNext);
        }
#pragma omp barrier
        if (t == 0) clock.mark(4);
        X = Xo;
      }
      if (has_head) {  // ln_out (every thread, all values), the head's rows shared out
        const Scratch::Private p = s.mine(t, BC);
        for (int64_t bb = 0; bb < B; ++bb)
          layer_norm(X + bb * C, lnw, lnb, p.xl + bb * C, C, static_cast<float>(ln_eps));
        Job job = make_job(head, p.xl, o, B, V, isa, qisa, p.qb);
        run_share(&job, 1, t, nt);
        if (t == 0) clock.mark(5);
      }
    }
    clock.mark(6);
    if (clock.on) g_stage_ns[kStages].fetch_add(1);
    return out;
  }
};

}  // namespace
}  // namespace rwkvkit_rwkv7

TORCH_LIBRARY_FRAGMENT(rwkvkit_kernels, m) {
  m.def(
      "wkv7_step(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor S_in, Tensor(a!) S_out, "
      "int isa=0) -> Tensor");
  m.def(
      "rwkv7_block_decode(Tensor x, Tensor(a!) att_shift, Tensor S_in, Tensor(b!) S_out, Tensor(c!) ffn_shift, "
      "Tensor(d!) v_first, Tensor[] params, Tensor?[] scales, int layer_id, int isa=0, int dim_ffn=0) -> Tensor");
  m.def("rwkv7_decode_profile(bool enable) -> Tensor", &rwkvkit_rwkv7::decode_profile);
  m.class_<rwkvkit_rwkv7::Rwkv7Plan>("Rwkv7Plan")
      .def(torch::init<std::vector<at::Tensor>, std::vector<c10::optional<at::Tensor>>, int64_t, std::vector<at::Tensor>,
                       int64_t, double, int64_t>())
      .def("n_layer", &rwkvkit_rwkv7::Rwkv7Plan::n_layer)
      .def("step", &rwkvkit_rwkv7::Rwkv7Plan::step);
}

TORCH_LIBRARY_IMPL(rwkvkit_kernels, CPU, m) {
  m.impl("wkv7_step", &rwkvkit_rwkv7::wkv7_step);
  m.impl("rwkv7_block_decode", &rwkvkit_rwkv7::block_decode);
}
