// Sequential (forward-only) WKV recurrences for CPU prefill: RWKV-7, RWKV-5/6 and RWKV-4.
//
// The chunked PyTorch forms spend their time in hundreds of small tensor ops. Run as a plain loop
// over time, a head's state (K x V fp32, 16 KB for 64 x 64) stays in L1 and each token costs a few
// K x V multiply-adds. Design:
//
//   * Inputs in the operators' layout [B, T, H, K] (values [B, T, H, V]), contiguous fp32; state
//     [B, H, K, V] key-major. Columns of the state never mix (every update is "row i of S times a
//     per-key scalar, plus per-key scalar times a V-vector"), so the work splits into independent
//     items (batch, head, block of value columns); at::parallel_for spreads them over the cores.
//   * An item copies its [K, block] slice of the state into an aligned local buffer (allocated once
//     per thread chunk, never per token), runs all T tokens on it, and writes it back. A block is at
//     most 4 vector registers wide (64 columns with AVX-512), so the per-token vectors (v, a^T S,
//     the output) stay in registers; the value tail is handled with masked loads/stores.
//   * The decay exp(log_w) is computed once per (token, head, key) by at::exp on the whole tensor
//     before the loop (torch's vectorised exp, the same values as the PyTorch reference).
//   * RWKV-4 is elementwise per channel: items are (batch, block of channels), the state (aa, bb,
//     pp) lives in registers for the whole sequence, and exp is a vectorised polynomial.
//
// The kernel bodies are written once, in the second half of this file, as templates over a `Vec`
// type (scalar / AVX2 / AVX-512 registers). The file includes itself three times inside namespaces
// compiled with `#pragma GCC target`, so the cached build runs on any x86-64 CPU and the ISA is picked
// at run time with __builtin_cpu_supports (no -march=native).
//
// Operators (TORCH_LIBRARY, namespace rwkvkit_wkv; `isa` 0 = best for this CPU, 1/2/3 force plain
// C++ / AVX2 / AVX-512):
//   wkv7(r, log_w, k, v, a, b, state?, isa) -> (o [B,T,H,V], state [B,H,K,V])
//   wkv6(r, log_w, k, v, u [H,K], state?, isa) -> (o [B,T,H,V], state [B,H,K,V])
//   wkv4(w [C], u [C], k [B,T,C], v [B,T,C], state [B,3,C]?, isa) -> (y [B,T,C], state [B,3,C])
//   selected_isa() -> int

#ifndef RWKVKIT_WKV_SEQ_BODY

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <tuple>

namespace rwkvkit_wkv {
namespace {

enum Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };

struct Seq7 {  // wkv7: w = exp(log_w) already; s0 may be null (zero state)
  const float *r, *w, *k, *v, *a, *b, *s0;
  float *o, *s1;
  int64_t B, T, H, K, V;
};
struct Seq6 {  // wkv6 / wkv5: u is [H, K]
  const float *r, *w, *k, *v, *u, *s0;
  float *o, *s1;
  int64_t B, T, H, K, V;
};
struct Seq4 {  // wkv4: w, u [C]; k, v, y [B, T, C]; state [B, 3, C] (aa, bb, pp); s0 may be null
  const float *w, *u, *k, *v, *s0;
  float *y, *s1;
  int64_t B, T, C;
};

constexpr float kPpInit = -1e30f;  // the fresh RWKV-4 state's "minus infinity" (ops/rwkv4/naive.py)

inline float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

// Cephes-style constants for exp: ln 2 split in a part with few mantissa bits and the rest.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;

// ------------------------------------------------------------------------------------------------
// Register types. Each provides: R (register), M (lane mask), W (lanes), mask(n) (first n lanes),
// load/store (full, aligned data in the local buffers), loadm/storem (masked, unaligned, for tensor
// data), set1, zero, add, sub, mul, div, max, fma(a, b, c) = a * b + c, exp.
// ------------------------------------------------------------------------------------------------
namespace scalar {
struct Vec {
  using R = float;
  using M = bool;
  static constexpr int W = 1;
  static M mask(int64_t n) { return n > 0; }
  static R load(const float* p) { return *p; }
  static void store(float* p, R x) { *p = x; }
  static R loadm(const float* p, M m) { return m ? *p : 0.0f; }
  static void storem(float* p, R x, M m) {
    if (m) *p = x;
  }
  static R set1(float x) { return x; }
  static R zero() { return 0.0f; }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R div(R a, R b) { return a / b; }
  static R max(R a, R b) { return a < b ? b : a; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R exp(R x) { return std::exp(x); }
};
#define RWKVKIT_WKV_SEQ_BODY
#include "wkv_seq.cpp"
}  // namespace scalar

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct Vec {
  using R = __m256;
  using M = __m256i;
  static constexpr int W = 8;
  static M mask(int64_t n) {
    const int c = static_cast<int>(std::min<int64_t>(std::max<int64_t>(n, 0), W));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R load(const float* p) { return _mm256_load_ps(p); }
  static void store(float* p, R x) { _mm256_store_ps(p, x); }
  static R loadm(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  static void storem(float* p, R x, M m) { _mm256_maskstore_ps(p, m, x); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R zero() { return _mm256_setzero_ps(); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  // exp(x) to ~2 ulp for x <= 88 (the kernels only exponentiate differences x - max <= 0); results
  // below the normal range (x < -87.3) are flushed to 0.
  static R exp(R x) {
    const R lo = _mm256_set1_ps(-87.3365447f);  // ln(2^-126)
    const R xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
    const R n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    R r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    const R p = poly(r);
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const R y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  }
  static R poly(R r) {  // Taylor series of e^r to degree 7; |r| <= ln(2)/2, truncation < 6e-9
    R p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    return _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  }
};
#include "wkv_seq.cpp"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
struct Vec {
  using R = __m512;
  using M = __mmask16;
  static constexpr int W = 16;
  static M mask(int64_t n) {
    return n <= 0 ? M(0) : n >= W ? M(0xFFFF) : static_cast<M>((1u << static_cast<unsigned>(n)) - 1u);
  }
  static R load(const float* p) { return _mm512_load_ps(p); }
  static void store(float* p, R x) { _mm512_store_ps(p, x); }
  static R loadm(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static void storem(float* p, R x, M m) { _mm512_mask_storeu_ps(p, m, x); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R zero() { return _mm512_setzero_ps(); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  // exp(x) to ~2 ulp; scalef does the 2^n scaling with correct underflow to 0 (x < -104 gives 0).
  static R exp(R x) {
    const R xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.8f));
    const R n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    R r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    R p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
  }
};
#include "wkv_seq.cpp"
}  // namespace avx512
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// Dispatch and the operators.
// ------------------------------------------------------------------------------------------------

bool cpu_has(int64_t isa) {
  __builtin_cpu_init();
  switch (isa) {
    case kScalar: return true;
    case kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    default: return false;
  }
}

int64_t best_isa() {
  static const int64_t isa = cpu_has(kAvx512) ? kAvx512 : cpu_has(kAvx2) ? kAvx2 : kScalar;
  return isa;
}

int64_t resolve_isa(int64_t isa, const char* op) {
  if (isa == kAuto) isa = best_isa();
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512, op, ": isa must be 0 (auto), 1, 2 or 3");
  TORCH_CHECK(cpu_has(isa), op, ": this CPU lacks the requested instruction set");
  return isa;
}

int lanes(int64_t isa) { return isa == kAvx512 ? 16 : isa == kAvx2 ? 8 : 1; }

template <class S>
using ItemFn = void (*)(const S&, int64_t, int64_t);

// Registers per value block: as many as the value width needs, at most 4.
int regs_for(int64_t width, int W) { return static_cast<int>(std::min<int64_t>(4, std::max<int64_t>(1, (width + W - 1) / W))); }

ItemFn<Seq7> fn7(int64_t isa, int nb) {
  static const ItemFn<Seq7> t[3][4] = {
      {scalar::wkv7_items<1>, scalar::wkv7_items<2>, scalar::wkv7_items<3>, scalar::wkv7_items<4>},
      {avx2::wkv7_items<1>, avx2::wkv7_items<2>, avx2::wkv7_items<3>, avx2::wkv7_items<4>},
      {avx512::wkv7_items<1>, avx512::wkv7_items<2>, avx512::wkv7_items<3>, avx512::wkv7_items<4>},
  };
  return t[isa - kScalar][nb - 1];
}
ItemFn<Seq6> fn6(int64_t isa, int nb) {
  static const ItemFn<Seq6> t[3][4] = {
      {scalar::wkv6_items<1>, scalar::wkv6_items<2>, scalar::wkv6_items<3>, scalar::wkv6_items<4>},
      {avx2::wkv6_items<1>, avx2::wkv6_items<2>, avx2::wkv6_items<3>, avx2::wkv6_items<4>},
      {avx512::wkv6_items<1>, avx512::wkv6_items<2>, avx512::wkv6_items<3>, avx512::wkv6_items<4>},
  };
  return t[isa - kScalar][nb - 1];
}
ItemFn<Seq4> fn4(int64_t isa) {
  static const ItemFn<Seq4> t[3] = {scalar::wkv4_items<4>, avx2::wkv4_items<2>, avx512::wkv4_items<2>};
  return t[isa - kScalar];
}

void check_f32(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), op, ": `", name, "` must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": `", name, "` must be float32");
  TORCH_CHECK(x.is_contiguous(), op, ": `", name, "` must be contiguous");
}

// Grain: items per task such that a task has at least ~64k multiply-adds (fork/join costs a few us).
int64_t grain_for(int64_t work_per_item) { return std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, work_per_item)); }

std::tuple<at::Tensor, at::Tensor> wkv7(const at::Tensor& r, const at::Tensor& log_w, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& a, const at::Tensor& b,
                                        const c10::optional<at::Tensor>& state, int64_t isa) {
  const char* op = "rwkvkit_wkv::wkv7";
  const at::Tensor* ins[] = {&r, &log_w, &k, &v, &a, &b};
  const char* names[] = {"r", "log_w", "k", "v", "a", "b"};
  for (int i = 0; i < 6; ++i) {
    check_f32(*ins[i], op, names[i]);
    TORCH_CHECK(ins[i]->dim() == 4, op, ": `", names[i], "` must be [B, T, H, K]");
  }
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), K = r.size(3), V = v.size(3);
  for (const at::Tensor* x : {&log_w, &k, &a, &b}) TORCH_CHECK(x->sizes() == r.sizes(), op, ": shape mismatch with r");
  TORCH_CHECK(v.size(0) == B && v.size(1) == T && v.size(2) == H, op, ": v must be [B, T, H, V]");
  const float* s0 = nullptr;
  if (state.has_value()) {
    check_f32(*state, op, "state");
    TORCH_CHECK(state->dim() == 4 && state->size(0) == B && state->size(1) == H && state->size(2) == K &&
                    state->size(3) == V,
                op, ": state must be [B, H, K, V]");
    s0 = state->data_ptr<float>();
  }
  isa = resolve_isa(isa, op);
  at::Tensor w = at::exp(log_w);
  at::Tensor o = at::empty({B, T, H, V}, r.options());
  at::Tensor s1 = at::empty({B, H, K, V}, r.options());
  const Seq7 p{r.data_ptr<float>(), w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
               a.data_ptr<float>(), b.data_ptr<float>(), s0, o.data_ptr<float>(), s1.data_ptr<float>(),
               B, T, H, K, V};
  if (B * H * V == 0) return {o, s1};
  const int W = lanes(isa), nb = regs_for(V, W);
  const int64_t bw = nb * W, items = B * H * ((V + bw - 1) / bw);
  const ItemFn<Seq7> fn = fn7(isa, nb);
  at::parallel_for(0, items, grain_for(std::max<int64_t>(T, 1) * K * bw * 2),
                   [&](int64_t i0, int64_t i1) { fn(p, i0, i1); });
  return {o, s1};
}

std::tuple<at::Tensor, at::Tensor> wkv6(const at::Tensor& r, const at::Tensor& log_w, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& u,
                                        const c10::optional<at::Tensor>& state, int64_t isa) {
  const char* op = "rwkvkit_wkv::wkv6";
  const at::Tensor* ins[] = {&r, &log_w, &k, &v};
  const char* names[] = {"r", "log_w", "k", "v"};
  for (int i = 0; i < 4; ++i) {
    check_f32(*ins[i], op, names[i]);
    TORCH_CHECK(ins[i]->dim() == 4, op, ": `", names[i], "` must be [B, T, H, K]");
  }
  check_f32(u, op, "u");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), K = r.size(3), V = v.size(3);
  for (const at::Tensor* x : {&log_w, &k}) TORCH_CHECK(x->sizes() == r.sizes(), op, ": shape mismatch with r");
  TORCH_CHECK(v.size(0) == B && v.size(1) == T && v.size(2) == H, op, ": v must be [B, T, H, V]");
  TORCH_CHECK(u.dim() == 2 && u.size(0) == H && u.size(1) == K, op, ": u must be [H, K]");
  const float* s0 = nullptr;
  if (state.has_value()) {
    check_f32(*state, op, "state");
    TORCH_CHECK(state->dim() == 4 && state->size(0) == B && state->size(1) == H && state->size(2) == K &&
                    state->size(3) == V,
                op, ": state must be [B, H, K, V]");
    s0 = state->data_ptr<float>();
  }
  isa = resolve_isa(isa, op);
  at::Tensor w = at::exp(log_w);
  at::Tensor o = at::empty({B, T, H, V}, r.options());
  at::Tensor s1 = at::empty({B, H, K, V}, r.options());
  const Seq6 p{r.data_ptr<float>(), w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
               u.data_ptr<float>(), s0, o.data_ptr<float>(), s1.data_ptr<float>(), B, T, H, K, V};
  if (B * H * V == 0) return {o, s1};
  const int W = lanes(isa), nb = regs_for(V, W);
  const int64_t bw = nb * W, items = B * H * ((V + bw - 1) / bw);
  const ItemFn<Seq6> fn = fn6(isa, nb);
  at::parallel_for(0, items, grain_for(std::max<int64_t>(T, 1) * K * bw * 2),
                   [&](int64_t i0, int64_t i1) { fn(p, i0, i1); });
  return {o, s1};
}

std::tuple<at::Tensor, at::Tensor> wkv4(const at::Tensor& w, const at::Tensor& u, const at::Tensor& k,
                                        const at::Tensor& v, const c10::optional<at::Tensor>& state, int64_t isa) {
  const char* op = "rwkvkit_wkv::wkv4";
  check_f32(w, op, "w");
  check_f32(u, op, "u");
  check_f32(k, op, "k");
  check_f32(v, op, "v");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes(), op, ": k and v must both be [B, T, C]");
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK(w.numel() == C && u.numel() == C, op, ": w and u must have C elements");
  const float* s0 = nullptr;
  if (state.has_value()) {
    check_f32(*state, op, "state");
    TORCH_CHECK(state->dim() == 3 && state->size(0) == B && state->size(1) == 3 && state->size(2) == C, op,
                ": state must be [B, 3, C]");
    s0 = state->data_ptr<float>();
  }
  isa = resolve_isa(isa, op);
  at::Tensor y = at::empty({B, T, C}, k.options());
  at::Tensor s1 = at::empty({B, 3, C}, k.options());
  const Seq4 p{w.data_ptr<float>(), u.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), s0,
               y.data_ptr<float>(), s1.data_ptr<float>(), B, T, C};
  if (B * C == 0) return {y, s1};
  const int64_t bw = (isa == kScalar ? 4 : 2) * lanes(isa), items = B * ((C + bw - 1) / bw);
  const ItemFn<Seq4> fn = fn4(isa);
  at::parallel_for(0, items, grain_for(std::max<int64_t>(T, 1) * bw * 32),
                   [&](int64_t i0, int64_t i1) { fn(p, i0, i1); });
  return {y, s1};
}

int64_t selected_isa() { return best_isa(); }

}  // namespace
}  // namespace rwkvkit_wkv

TORCH_LIBRARY(rwkvkit_wkv, m) {
  m.def("wkv7(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor? state=None, int isa=0) -> (Tensor, Tensor)");
  m.def("wkv6(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor u, Tensor? state=None, int isa=0) -> (Tensor, Tensor)");
  m.def("wkv4(Tensor w, Tensor u, Tensor k, Tensor v, Tensor? state=None, int isa=0) -> (Tensor, Tensor)");
  m.def("selected_isa() -> int", &rwkvkit_wkv::selected_isa);
}

TORCH_LIBRARY_IMPL(rwkvkit_wkv, CPU, m) {
  m.impl("wkv7", &rwkvkit_wkv::wkv7);
  m.impl("wkv6", &rwkvkit_wkv::wkv6);
  m.impl("wkv4", &rwkvkit_wkv::wkv4);
}

#else  // RWKVKIT_WKV_SEQ_BODY: the kernel bodies, included once per ISA namespace (which defines Vec)

// WKV-7 for items [i0, i1); an item is (batch, head, value block). Per token, with S the item's
// [K, bw] slice (local, aligned, rows of bw = NB * W floats):
//   sa = S^T a;  S = diag(w) S + b sa^T + k v^T;  o = S^T r
template <int NB>
void wkv7_items(const Seq7& p, int64_t i0, int64_t i1) {
  using R = typename Vec::R;
  using M = typename Vec::M;
  constexpr int W = Vec::W;
  constexpr int64_t BW = int64_t(NB) * W;
  const int64_t K = p.K, V = p.V, H = p.H, T = p.T, nvb = (V + BW - 1) / BW;
  std::unique_ptr<float[]> buf(new float[K * BW + 16]);
  float* const S = align64(buf.get());
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t bh = item / nvb, v0 = (item % nvb) * BW, h = bh % H, bi = bh / H;
    M m[NB];
    for (int j = 0; j < NB; ++j) m[j] = Vec::mask(V - v0 - int64_t(j) * W);
    const float* s0 = p.s0 ? p.s0 + bh * K * V + v0 : nullptr;
    for (int64_t i = 0; i < K; ++i)
      for (int j = 0; j < NB; ++j)
        Vec::store(S + i * BW + j * W, s0 ? Vec::loadm(s0 + i * V + j * W, m[j]) : Vec::zero());
    // sa = S^T a for the first token; later ones are accumulated while the previous token updates S
    // (one pass over S per token instead of two). Same order of additions both ways, so a sequence
    // split in two calls (chained through the state) gives bit-identical results.
    R sa[NB];
    for (int j = 0; j < NB; ++j) sa[j] = Vec::zero();
    if (T > 0) {
      const float* a = p.a + (bi * T * H + h) * K;
      for (int64_t i = 0; i < K; ++i) {
        const R ai = Vec::set1(a[i]);
        for (int j = 0; j < NB; ++j) sa[j] = Vec::fma(ai, Vec::load(S + i * BW + j * W), sa[j]);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = (bi * T + t) * H + h;
      const float *r = p.r + row * K, *w = p.w + row * K, *kk = p.k + row * K, *b = p.b + row * K;
      // the next token's a (on the last token: this one's, and the sum is not used)
      const float* an = p.a + (t + 1 < T ? row + H : row) * K;
      R vv[NB], o[NB], sn[NB];
      for (int j = 0; j < NB; ++j) {
        vv[j] = Vec::loadm(p.v + row * V + v0 + j * W, m[j]);
        o[j] = Vec::zero();
        sn[j] = Vec::zero();
      }
      for (int64_t i = 0; i < K; ++i) {
        const R wi = Vec::set1(w[i]), bi_ = Vec::set1(b[i]), ki = Vec::set1(kk[i]), ri = Vec::set1(r[i]),
                ai = Vec::set1(an[i]);
        float* Si = S + i * BW;
        for (int j = 0; j < NB; ++j) {
          R s = Vec::mul(Vec::load(Si + j * W), wi);
          s = Vec::fma(bi_, sa[j], s);
          s = Vec::fma(ki, vv[j], s);
          Vec::store(Si + j * W, s);
          o[j] = Vec::fma(ri, s, o[j]);
          sn[j] = Vec::fma(ai, s, sn[j]);
        }
      }
      for (int j = 0; j < NB; ++j) {
        Vec::storem(p.o + row * V + v0 + j * W, o[j], m[j]);
        sa[j] = sn[j];
      }
    }
    float* s1 = p.s1 + bh * K * V + v0;
    for (int64_t i = 0; i < K; ++i)
      for (int j = 0; j < NB; ++j) Vec::storem(s1 + i * V + j * W, Vec::load(S + i * BW + j * W), m[j]);
  }
}

// WKV-6 / WKV-5 for items [i0, i1): per token
//   o = S^T r + (r . (u * k)) v;  S = diag(w) S + k v^T
template <int NB>
void wkv6_items(const Seq6& p, int64_t i0, int64_t i1) {
  using R = typename Vec::R;
  using M = typename Vec::M;
  constexpr int W = Vec::W;
  constexpr int64_t BW = int64_t(NB) * W;
  const int64_t K = p.K, V = p.V, H = p.H, T = p.T, nvb = (V + BW - 1) / BW;
  std::unique_ptr<float[]> buf(new float[K * BW + 16]);
  float* const S = align64(buf.get());
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t bh = item / nvb, v0 = (item % nvb) * BW, h = bh % H, bi = bh / H;
    const float* u = p.u + h * K;
    M m[NB];
    for (int j = 0; j < NB; ++j) m[j] = Vec::mask(V - v0 - int64_t(j) * W);
    const float* s0 = p.s0 ? p.s0 + bh * K * V + v0 : nullptr;
    for (int64_t i = 0; i < K; ++i)
      for (int j = 0; j < NB; ++j)
        Vec::store(S + i * BW + j * W, s0 ? Vec::loadm(s0 + i * V + j * W, m[j]) : Vec::zero());
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = (bi * T + t) * H + h;
      const float *r = p.r + row * K, *w = p.w + row * K, *kk = p.k + row * K;
      float bonus = 0.0f;
      for (int64_t i = 0; i < K; ++i) bonus += r[i] * (u[i] * kk[i]);
      const R bo = Vec::set1(bonus);
      R vv[NB], o[NB];
      for (int j = 0; j < NB; ++j) {
        vv[j] = Vec::loadm(p.v + row * V + v0 + j * W, m[j]);
        o[j] = Vec::mul(bo, vv[j]);
      }
      for (int64_t i = 0; i < K; ++i) {
        const R wi = Vec::set1(w[i]), ki = Vec::set1(kk[i]), ri = Vec::set1(r[i]);
        float* Si = S + i * BW;
        for (int j = 0; j < NB; ++j) {
          const R s = Vec::load(Si + j * W);
          o[j] = Vec::fma(ri, s, o[j]);
          Vec::store(Si + j * W, Vec::fma(ki, vv[j], Vec::mul(s, wi)));
        }
      }
      for (int j = 0; j < NB; ++j) Vec::storem(p.o + row * V + v0 + j * W, o[j], m[j]);
    }
    float* s1 = p.s1 + bh * K * V + v0;
    for (int64_t i = 0; i < K; ++i)
      for (int j = 0; j < NB; ++j) Vec::storem(s1 + i * V + j * W, Vec::load(S + i * BW + j * W), m[j]);
  }
}

// WKV-4 for items [i0, i1); an item is (batch, block of NB * W channels). The same operations in the
// same order as wkv4_naive / wkv4_step:
//   ww = u + k; p = max(pp, ww); y = (e^(pp-p) aa + e^(ww-p) v) / (e^(pp-p) bb + e^(ww-p))
//   ww = w + pp; p = max(ww, k); aa = e^(ww-p) aa + e^(k-p) v; bb = e^(ww-p) bb + e^(k-p); pp = p
template <int NB>
void wkv4_items(const Seq4& p, int64_t i0, int64_t i1) {
  using R = typename Vec::R;
  using M = typename Vec::M;
  constexpr int W = Vec::W;
  constexpr int64_t BW = int64_t(NB) * W;
  const int64_t C = p.C, T = p.T, ncb = (C + BW - 1) / BW;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t bi = item / ncb, c0 = (item % ncb) * BW;
    M m[NB];
    R w[NB], u[NB], aa[NB], bb[NB], pp[NB];
    for (int j = 0; j < NB; ++j) {
      const int64_t c = c0 + int64_t(j) * W;
      m[j] = Vec::mask(C - c);
      w[j] = Vec::loadm(p.w + c, m[j]);
      u[j] = Vec::loadm(p.u + c, m[j]);
      if (p.s0) {
        aa[j] = Vec::loadm(p.s0 + (bi * 3 + 0) * C + c, m[j]);
        bb[j] = Vec::loadm(p.s0 + (bi * 3 + 1) * C + c, m[j]);
        pp[j] = Vec::loadm(p.s0 + (bi * 3 + 2) * C + c, m[j]);
      } else {
        aa[j] = Vec::zero();
        bb[j] = Vec::zero();
        pp[j] = Vec::set1(kPpInit);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      const int64_t base = (bi * T + t) * C + c0;
      for (int j = 0; j < NB; ++j) {
        const R kt = Vec::loadm(p.k + base + j * W, m[j]), vt = Vec::loadm(p.v + base + j * W, m[j]);
        R ww = Vec::add(u[j], kt);
        R q = Vec::max(pp[j], ww);
        R e1 = Vec::exp(Vec::sub(pp[j], q)), e2 = Vec::exp(Vec::sub(ww, q));
        const R y = Vec::div(Vec::fma(e1, aa[j], Vec::mul(e2, vt)), Vec::fma(e1, bb[j], e2));
        Vec::storem(p.y + base + j * W, y, m[j]);
        ww = Vec::add(w[j], pp[j]);
        q = Vec::max(ww, kt);
        e1 = Vec::exp(Vec::sub(ww, q));
        e2 = Vec::exp(Vec::sub(kt, q));
        aa[j] = Vec::fma(e1, aa[j], Vec::mul(e2, vt));
        bb[j] = Vec::fma(e1, bb[j], e2);
        pp[j] = q;
      }
    }
    for (int j = 0; j < NB; ++j) {
      const int64_t c = c0 + int64_t(j) * W;
      Vec::storem(p.s1 + (bi * 3 + 0) * C + c, aa[j], m[j]);
      Vec::storem(p.s1 + (bi * 3 + 1) * C + c, bb[j], m[j]);
      Vec::storem(p.s1 + (bi * 3 + 2) * C + c, pp[j], m[j]);
    }
  }
}

#endif  // RWKVKIT_WKV_SEQ_BODY
