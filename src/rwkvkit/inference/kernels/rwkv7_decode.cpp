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
//   F = dim_ffn, Dw/Da/Dv/Dg the LoRA ranks; LoRA matrices pre-transposed so that they are
//   [out, in] gemv weights):
//        0 ln1.weight [C]      1 ln1.bias [C]       2 ln2.weight [C]      3 ln2.bias [C]
//        4 x_r [C]   5 x_w [C]   6 x_k [C]   7 x_v [C]   8 x_a [C]   9 x_g [C]
//       10 w0 [C]    11 w1^T [Dw, C]    12 w2^T [C, Dw]
//       13 a0 [C]    14 a1^T [Da, C]    15 a2^T [C, Da]
//       16 v0 [C]    17 v1^T [Dv, C]    18 v2^T [C, Dv]      (not read at layer 0)
//       19 g1^T [Dg, C]                 20 g2^T [C, Dg]
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
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
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

}  // namespace avx2
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// AVX-512 head: groups of up to 4 x 16 value columns (N = 64: the whole row) in registers.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {

template <int NV>
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
      _mm512_mask_storeu_ps(out + 16 * q, m[q], s);
      o0[q] = _mm512_fmadd_ps(ri, s, o0[q]);
    }
  }
  for (int q = 0; q < NV; ++q) _mm512_mask_storeu_ps(o + j0 + 16 * q, m[q], _mm512_add_ps(o0[q], o1[q]));
}

void head(const float* r, const float* d, const float* k, const float* v, const float* a, const float* b,
          const float* S, float* So, float* o, int64_t N, float*) {
  for (int64_t j0 = 0; j0 < N; j0 += 64) {
    switch (std::min<int64_t>(4, (N - j0 + 15) / 16)) {
      case 1: group<1>(r, d, k, v, a, b, S, So, o, N, j0); break;
      case 2: group<2>(r, d, k, v, a, b, S, So, o, N, j0); break;
      case 3: group<3>(r, d, k, v, a, b, S, So, o, N, j0); break;
      default: group<4>(r, d, k, v, a, b, S, So, o, N, j0); break;
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
// Several gemv products in one parallel region: the panels of all of them, split over the threads
// in ranges of equal weight bytes (so a thread streams its share of every matrix of the stage).
// ------------------------------------------------------------------------------------------------
struct Job {
  Problem p;
  PanelFn fn = nullptr;    // float weights: p, fn
  QProblem q;
  QPanelFn qfn = nullptr;  // 4-bit weights: q, qfn (x already quantized)
  int64_t panels;          // ceil(N / kPanel) (ceil(N / kQ4Panel) for 4-bit weights)
  int64_t panel_cost;      // bytes of weights per panel
};

void run_jobs(const Job* jobs, int n) {
  int64_t total = 0;
  for (int j = 0; j < n; ++j) total += jobs[j].panels * jobs[j].panel_cost;
  if (total == 0) return;
  // >= 64 KB of weights per thread (as gemv): below, the fork/join costs more than a core saves
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total / (64 * 1024)));
  auto task = [&](int64_t t) {
    const int64_t lo = total * t / T, hi = total * (t + 1) / T;
    int64_t start = 0;  // cost before job j
    for (int j = 0; j < n; ++j) {
      const Job& jb = jobs[j];
      const int64_t c = std::max<int64_t>(1, jb.panel_cost);
      // panel q belongs to task t when its start cost start + q * c lies in [lo, hi)
      auto first = [&](int64_t bound) {
        const int64_t rel = bound - start;
        return rel <= 0 ? int64_t{0} : std::min<int64_t>(jb.panels, (rel + c - 1) / c);
      };
      const int64_t q0 = first(lo), q1 = first(hi);
      if (q0 < q1) {
        if (jb.qfn)
          jb.qfn(jb.q, q0, q1);
        else
          jb.fn(jb.p, q0, q1);
      }
      start += jb.panels * jb.panel_cost;
    }
  };
  if (T == 1) {
    task(0);
    return;
  }
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) task(t);
  });
}

// Scratch for the int8 activations of the 4-bit products of one stage (reset per stage).
struct QArena {
  std::vector<char>& buf;
  size_t used = 0;
  template <typename T>
  T* take(int64_t n) {
    T* p = reinterpret_cast<T*>(buf.data() + used);
    used += (static_cast<size_t>(n) * sizeof(T) + 63) & ~size_t{63};
    TORCH_INTERNAL_ASSERT(used <= buf.size(), "rwkv7_block_decode: q4 scratch too small");
    return p;
  }
};
// Bytes of QArena a 4-bit product with M rows of K inputs takes.
inline size_t q_bytes(int64_t M, int64_t K) {
  const int64_t KB = (K + kQ4Block - 1) / kQ4Block;
  auto round = [](int64_t n) { return (static_cast<size_t>(n) + 63) & ~size_t{63}; };
  return round(M * KB * kQ4Block) + 2 * round(M * KB * 4);
}

// A gemv weight from the parameter list: dtype, shape [rows, cols], contiguity; the scale if any.
// 4-bit weights (uint8 [P, KB, 256], Q4Linear's qweight, with the int16 [P, KB, 16] scales) also
// quantize x into `arena` (isa: q4_isa).
Job make_job(int64_t isa, const at::Tensor& w, const c10::optional<at::Tensor>& scale, int64_t rows, int64_t cols,
             const float* x, float* y, int64_t M, const char* name, int64_t q4_isa = 0, QArena* arena = nullptr) {
  const char* op = "rwkv7_block_decode";
  const at::ScalarType dt = w.scalar_type();
  TORCH_CHECK(w.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  if (dt == at::kByte) {  // 4-bit
    TORCH_CHECK(arena != nullptr, op, ": ", name, " cannot be a 4-bit weight");
    const int64_t P = (rows + kQ4Panel - 1) / kQ4Panel, KB = (cols + kQ4Block - 1) / kQ4Block;
    TORCH_CHECK(w.dim() == 3 && w.size(0) == P && w.size(1) == KB && w.size(2) == kQ4PanelBlockBytes &&
                    w.is_contiguous(),
                op, ": ", name, " (4-bit) must be a contiguous uint8 [", P, ", ", KB, ", 256] tensor, got ", w.sizes());
    TORCH_CHECK(scale.has_value() && scale->defined() && scale->scalar_type() == at::kShort &&
                    scale->device().is_cpu() && scale->is_contiguous() &&
                    scale->sizes() == at::IntArrayRef({P, KB, kQ4Panel}),
                op, ": ", name, " (4-bit) needs its int16 [", P, ", ", KB, ", 16] scales");
    int8_t* xq = arena->take<int8_t>(M * KB * kQ4Block);
    float* xd = arena->take<float>(M * KB);
    int32_t* xs = arena->take<int32_t>(M * KB);
    rwkvkit_gemv::quantize_rows(q4_isa, x, M, cols, xq, xd, xs);
    Job j;
    j.q = QProblem{xq, xd, xs, w.data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(scale->data_ptr<int16_t>()),
                   y, M, rows, KB};
    j.qfn = rwkvkit_gemv::q4_panel_fn(q4_isa);
    j.panels = P;
    j.panel_cost = KB * (kQ4PanelBlockBytes + 2 * kQ4Panel) + 1;
    return j;
  }
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kChar, op, ": ", name,
              " must be float32, bfloat16, int8 or 4-bit (uint8), got ", dt);
  TORCH_CHECK(w.dim() == 2 && w.size(0) == rows && w.size(1) == cols, op, ": ", name, " must have shape [", rows,
              ", ", cols, "], got ", w.sizes());
  TORCH_CHECK(w.is_contiguous(), op, ": ", name, " must be contiguous");
  const float* sp = nullptr;
  if (scale.has_value() && scale->defined()) {
    check_f32(*scale, {rows}, op, "a scale");
    sp = scale->data_ptr<float>();
  }
  TORCH_CHECK(dt != at::kChar || sp != nullptr, op, ": ", name, " is int8 and needs its float32 scale");
  Job j;
  j.p = Problem{x, w.data_ptr(), sp, y, M, rows, cols};
  j.fn = rwkvkit_gemv::panel_fn(isa, dt);
  j.panels = (rows + kPanel - 1) / kPanel;
  j.panel_cost = kPanel * cols * static_cast<int64_t>(w.element_size()) + 1;
  return j;
}

inline float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

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

constexpr int kNumParams = 33;
constexpr int kNumScales = 6;

at::Tensor block_decode(const at::Tensor& x, const at::Tensor& att_shift, const at::Tensor& S_in,
                        const at::Tensor& S_out, const at::Tensor& ffn_shift, const at::Tensor& v_first,
                        at::TensorList P, const c10::List<c10::optional<at::Tensor>>& scales, int64_t layer_id,
                        int64_t isa_arg, int64_t dim_ffn) {
  const char* op = "rwkv7_block_decode";
  TORCH_CHECK(P.size() == kNumParams, op, ": params must hold ", kNumParams, " tensors, got ", P.size());
  TORCH_CHECK(scales.size() == kNumScales, op, ": scales must hold ", kNumScales, " entries, got ", scales.size());
  TORCH_CHECK(x.dim() == 2, op, ": x must be [B, C], got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(P[23].dim() == 2, op, ": r_k (params[23]) must be [H, N], got ", P[23].sizes());
  const int64_t H = P[23].size(0), N = P[23].size(1);
  TORCH_CHECK(H * N == C, op, ": r_k is [", H, ", ", N, "] but C = ", C);
  const int64_t Dw = P[11].size(0), Da = P[14].size(0), Dv = P[17].size(0), Dg = P[19].size(0);
  TORCH_CHECK(dim_ffn > 0 || P[31].scalar_type() != at::kByte, op, ": a 4-bit ffn W_key needs dim_ffn");
  const int64_t F = dim_ffn > 0 ? dim_ffn : P[31].size(0);
  check_f32(x, {B, C}, op, "x");
  check_f32(att_shift, {B, C}, op, "att_shift");
  check_f32(ffn_shift, {B, C}, op, "ffn_shift");
  check_f32(v_first, {B, C}, op, "v_first");
  check_f32(S_in, {B, H, N, N}, op, "S_in");
  check_f32(S_out, {B, H, N, N}, op, "S_out");
  check_alias(S_in, S_out, op);
  static const char* names[kNumParams] = {
      "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1^T",
      "w2^T", "a0", "a1^T", "a2^T", "v0", "v1^T", "v2^T", "g1^T", "g2^T", "k_k", "k_a", "r_k", "ln_x.weight",
      "ln_x.bias", "W_r", "W_k", "W_v", "W_o", "ffn.x_k", "ffn W_key", "ffn W_value"};
  for (int i : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 21, 22, 24, 25, 30}) check_f32(P[i], {C}, op, names[i]);
  check_f32(P[23], {H, N}, op, names[23]);
  for (int i : {11, 14, 17, 19}) check_f32(P[i], {P[i].size(0), C}, op, names[i]);
  check_f32(P[12], {C, Dw}, op, names[12]);
  check_f32(P[15], {C, Da}, op, names[15]);
  check_f32(P[18], {C, Dv}, op, names[18]);
  check_f32(P[20], {C, Dg}, op, names[20]);
  TORCH_CHECK(x.data_ptr() != att_shift.data_ptr() && x.data_ptr() != ffn_shift.data_ptr(), op,
              ": x must not be a state tensor");
  // the float kernels' isa, and the 4-bit kernels' (isa 4 = AVX-512 with VNNI: 3 for the float ones)
  const int64_t q4_isa = isa_arg == rwkvkit_gemv::kAuto ? rwkvkit_gemv::best_q4_isa() : isa_arg;
  TORCH_CHECK(q4_isa >= rwkvkit_gemv::kScalar && q4_isa <= rwkvkit_gemv::kAvx512Vnni, op,
              ": isa must be 0 (auto), 1, 2, 3 or 4");
  TORCH_CHECK(rwkvkit_gemv::cpu_has(static_cast<Isa>(q4_isa)), op, ": this CPU lacks the requested instruction set");
  const int64_t isa = isa_arg == rwkvkit_gemv::kAuto ? rwkvkit_gemv::best_isa()
                                                     : std::min<int64_t>(isa_arg, rwkvkit_gemv::kAvx512);
  const bool first = layer_id == 0;
  // int8 activations of the 4-bit products: r, k, v of stage 2 at once, then one input at a time
  static thread_local std::vector<char> qbuf;
  const size_t qneed = std::max(3 * q_bytes(B, C), q_bytes(B, F));
  if (qbuf.size() < qneed) qbuf.resize(qneed);

  auto fp = [&](int i) { return P[i].data_ptr<float>(); };
  const float *ln1w = fp(0), *ln1b = fp(1), *ln2w = fp(2), *ln2b = fp(3);
  const float *mix_r = fp(4), *mix_w = fp(5), *mix_k = fp(6), *mix_v = fp(7), *mix_a = fp(8), *mix_g = fp(9);
  const float *w0 = fp(10), *a0 = fp(13), *v0 = fp(16), *k_k = fp(21), *k_a = fp(22), *r_k = fp(23);
  const float *gnw = fp(24), *gnb = fp(25), *fmix = fp(30);

  // Scratch, reused across calls (grows only): [B, C] buffers, the LoRA hiddens, the FFN hidden.
  static thread_local std::vector<float> scratch;
  const int64_t BC = B * C;
  const size_t need = static_cast<size_t>(14 * BC + B * (Dw + Da + Dv + Dg + F));
  if (scratch.size() < need) scratch.resize(need);
  float* p = scratch.data();
  auto take = [&](int64_t n) {
    float* q = p;
    p += n;
    return q;
  };
  float *xr = take(BC), *xw = take(BC), *xk = take(BC), *xv = take(BC), *xa = take(BC), *xg = take(BC);
  float *r = take(BC), *k = take(BC), *v = take(BC), *wl = take(BC), *al = take(BC), *vl = take(BC), *g = take(BC);
  float* y = take(BC);
  float *hw = take(B * Dw), *ha = take(B * Da), *hv = take(B * Dv), *hg = take(B * Dg), *hf = take(B * F);

  at::Tensor out = at::empty({B, C}, x.options());
  const float* X = x.data_ptr<float>();
  float* Xo = out.data_ptr<float>();
  float* sh_att = att_shift.data_ptr<float>();
  float* sh_ffn = ffn_shift.data_ptr<float>();
  float* vf = v_first.data_ptr<float>();

  // 1. LN1, token shift (the new att_shift is the LN1 output), the six mixes.
  for (int64_t bb = 0; bb < B; ++bb) {
    const int64_t o = bb * C;
    float* xl = y + o;  // LN1 output, temporarily in y
    layer_norm(X + o, ln1w, ln1b, xl, C, 1e-5f);
    for (int64_t c = 0; c < C; ++c) {
      const float xc = xl[c], dc = sh_att[o + c] - xc;
      xr[o + c] = xc + dc * mix_r[c];
      xw[o + c] = xc + dc * mix_w[c];
      xk[o + c] = xc + dc * mix_k[c];
      xv[o + c] = xc + dc * mix_v[c];
      xa[o + c] = xc + dc * mix_a[c];
      xg[o + c] = xc + dc * mix_g[c];
      sh_att[o + c] = xc;
    }
  }

  // 2. r, k, v and the LoRA down-projections, in one parallel region.
  const auto none = c10::optional<at::Tensor>();
  {
    QArena qa{qbuf};
    Job jobs[7];
    int n = 0;
    jobs[n++] = make_job(isa, P[26], scales.get(0), C, C, xr, r, B, names[26], q4_isa, &qa);
    jobs[n++] = make_job(isa, P[27], scales.get(1), C, C, xk, k, B, names[27], q4_isa, &qa);
    jobs[n++] = make_job(isa, P[28], scales.get(2), C, C, xv, v, B, names[28], q4_isa, &qa);
    jobs[n++] = make_job(isa, P[11], none, Dw, C, xw, hw, B, names[11]);
    jobs[n++] = make_job(isa, P[14], none, Da, C, xa, ha, B, names[14]);
    if (!first) jobs[n++] = make_job(isa, P[17], none, Dv, C, xv, hv, B, names[17]);
    jobs[n++] = make_job(isa, P[19], none, Dg, C, xg, hg, B, names[19]);
    run_jobs(jobs, n);
  }
  for (int64_t i = 0; i < B * Dw; ++i) hw[i] = std::tanh(hw[i]);
  for (int64_t i = 0; i < B * Dg; ++i) hg[i] = sigmoid(hg[i]);

  // 3. The LoRA up-projections.
  {
    Job jobs[4];
    int n = 0;
    jobs[n++] = make_job(isa, P[12], none, C, Dw, hw, wl, B, names[12]);
    jobs[n++] = make_job(isa, P[15], none, C, Da, ha, al, B, names[15]);
    if (!first) jobs[n++] = make_job(isa, P[18], none, C, Dv, hv, vl, B, names[18]);
    jobs[n++] = make_job(isa, P[20], none, C, Dg, hg, g, B, names[20]);
    run_jobs(jobs, n);
  }

  // 4. Decay, in-context rate, kk, k, value residual; WKV inputs a = -kk (in xw), b = kk * a (in xa).
  const float neg_exp_half = static_cast<float>(-std::exp(-0.5));
  for (int64_t bb = 0; bb < B; ++bb) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = bb * C + h * N;
      float ss = 0.0f;
      for (int64_t j = 0; j < N; ++j) {
        const float t = k[o + j] * k_k[h * N + j];
        xr[o + j] = t;  // k * k_k (xr is free after stage 2)
        ss += t * t;
      }
      const float inv = 1.0f / std::max(std::sqrt(ss), 1e-12f);
      for (int64_t j = 0; j < N; ++j) {
        const int64_t c = h * N + j, i = o + j;
        const float kk = xr[i] * inv;
        wl[i] = neg_exp_half * sigmoid(w0[c] + wl[i]);  // log_w
        const float ai = sigmoid(a0[c] + al[i]);
        k[i] = k[i] * (1.0f + (ai - 1.0f) * k_a[c]);
        xw[i] = -kk;
        xa[i] = kk * ai;
        if (first)
          vf[i] = v[i];
        else
          v[i] = v[i] + (vf[i] - v[i]) * sigmoid(v0[c] + vl[i]);
      }
    }
  }

  // 5. WKV step: output into y.
  wkv_heads(head_fn(isa), B * H, N, r, wl, k, v, xw, xa, S_in.data_ptr<float>(), S_out.data_ptr<float>(), y);

  // 6. GroupNorm per head + bonus, times g (into xk).
  for (int64_t bb = 0; bb < B; ++bb) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = bb * C + h * N;
      float mean = 0.0f, var = 0.0f, bonus = 0.0f;
      for (int64_t j = 0; j < N; ++j) mean += y[o + j];
      mean /= static_cast<float>(N);
      for (int64_t j = 0; j < N; ++j) var += (y[o + j] - mean) * (y[o + j] - mean);
      var /= static_cast<float>(N);
      const float rstd = 1.0f / std::sqrt(var + 64e-5f);
      for (int64_t j = 0; j < N; ++j) bonus += r[o + j] * k[o + j] * r_k[h * N + j];
      for (int64_t j = 0; j < N; ++j) {
        const int64_t c = h * N + j;
        const float gn = (y[o + j] - mean) * rstd * gnw[c] + gnb[c];
        xk[o + j] = (gn + bonus * v[o + j]) * g[o + j];
      }
    }
  }

  // 7. Output projection (into xv), residual (into out).
  {
    QArena qa{qbuf};
    Job job = make_job(isa, P[29], scales.get(3), C, C, xk, xv, B, names[29], q4_isa, &qa);
    run_jobs(&job, 1);
  }
  for (int64_t i = 0; i < BC; ++i) Xo[i] = X[i] + xv[i];

  // 8. Channel mix: LN2, token shift (the new ffn_shift is the LN2 output), relu(key)^2, value.
  for (int64_t bb = 0; bb < B; ++bb) {
    const int64_t o = bb * C;
    float* xl = y + o;
    layer_norm(Xo + o, ln2w, ln2b, xl, C, 1e-5f);
    for (int64_t c = 0; c < C; ++c) {
      const float xc = xl[c];
      xr[o + c] = xc + (sh_ffn[o + c] - xc) * fmix[c];
      sh_ffn[o + c] = xc;
    }
  }
  {
    QArena qa{qbuf};
    Job job = make_job(isa, P[31], scales.get(4), F, C, xr, hf, B, names[31], q4_isa, &qa);
    run_jobs(&job, 1);
  }
  for (int64_t i = 0; i < B * F; ++i) {
    const float t = std::max(hf[i], 0.0f);
    hf[i] = t * t;
  }
  {
    QArena qa{qbuf};
    Job job = make_job(isa, P[32], scales.get(5), C, F, hf, xv, B, names[32], q4_isa, &qa);
    run_jobs(&job, 1);
  }
  for (int64_t i = 0; i < BC; ++i) Xo[i] += xv[i];
  return out;
}

}  // namespace
}  // namespace rwkvkit_rwkv7

TORCH_LIBRARY_FRAGMENT(rwkvkit_kernels, m) {
  m.def(
      "wkv7_step(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor S_in, Tensor(a!) S_out, "
      "int isa=0) -> Tensor");
  m.def(
      "rwkv7_block_decode(Tensor x, Tensor(a!) att_shift, Tensor S_in, Tensor(b!) S_out, Tensor(c!) ffn_shift, "
      "Tensor(d!) v_first, Tensor[] params, Tensor?[] scales, int layer_id, int isa=0, int dim_ffn=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(rwkvkit_kernels, CPU, m) {
  m.impl("wkv7_step", &rwkvkit_rwkv7::wkv7_step);
  m.impl("rwkv7_block_decode", &rwkvkit_rwkv7::block_decode);
}
