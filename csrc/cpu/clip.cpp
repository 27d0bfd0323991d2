// CPU implementation of the clipping ops (schemas in csrc/ops.cpp, semantics in csrc/clip.h).
//
// All gradients are viewed as one virtual vector: the concatenation of their elements. That vector
// is cut into fixed-size chunks (a chunk may span several small tensors); one at::parallel_for
// computes one partial per chunk, and the partials are combined in chunk order, so the result does
// not depend on the number of threads. A second parallel pass over the same chunks scales the
// grads, and is skipped when the coefficient is exactly 1 (x * 1 == x bit for bit, NaN included).
//
// Accumulation is in double for every dtype (on AVX2 machines float32 sums blocks of 1024 elements
// in float first, see sum_f32_avx2). Element order inside a tensor does not matter to a
// norm or a scale, so any non-overlapping-and-dense tensor (contiguous, transposed, channels-last)
// is processed in place as flat memory. A view with stride-0 dimensions (expand) repeats its
// elements: it is reduced over its distinct elements with the repetition counted (sum-type norms
// multiply the partial by it; max/min and the p = 0 count ignore it), never materialized
// (torch.ones(1).expand(2**40) is one element read once). Other strided views (x[:, ::2]) are
// reduced in place by ATen's linalg_vector_norm, as torch's own get_total_norm reduces every grad,
// and combined with the rest (no dense copy either). Both kinds are scaled with ATen's mul_ (which
// raises for an expanded grad, as torch's clip does).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "../clip.h"

namespace rnnfast {
namespace {

using clip::NormKind;

constexpr int64_t kChunk = 1 << 16;  // elements per parallel work item
// Threads join only for lists of at least this many elements. One thread streams
// ~10 GB/s, so below this a pass takes about a millisecond, and waking a second OpenMP thread costs
// tens of microseconds on an idle machine and milliseconds on a loaded one (measured here: 2 threads
// made a 4M-element norm 10x slower on a shared 2-core box). torch's per-tensor reductions go
// parallel only above 32K elements per tensor, so its small-tensor lists stay serial too.
constexpr int64_t kGrainChunks = (1 << 23) / kChunk;

struct Piece {
  void* data;            // flat memory of numel elements
  int64_t numel;
  at::ScalarType dtype;
  double repeat;         // how many times each element occurs in the grad (stride-0 dimensions)
};

// g without its stride-0 dimensions (each taken at index 0), and the number of times each of its
// elements occurs in g.
at::Tensor distinct_elements(const at::Tensor& g, double* repeat) {
  at::Tensor t = g;
  *repeat = 1.0;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {  // from the last: select() keeps lower dims in place
    if (t.stride(d) == 0 && t.size(d) > 1) {
      *repeat *= static_cast<double>(t.size(d));
      t = t.select(d, 0);
    }
  }
  return t;
}

// The grads as flat pieces, plus the strided views that went through a copy.
struct FlatList {
  std::vector<Piece> pieces;
  std::vector<int64_t> offsets;     // offsets[i] = first element of piece i in the virtual vector
  std::vector<at::Tensor> strided;  // grads that must be scaled with ATen (not flat)
  // non-dense views of distinct elements, reduced by ATen in place, and their repetition counts
  std::vector<std::pair<at::Tensor, double>> views;
  int64_t total = 0;
};

FlatList flatten(at::TensorList grads, bool for_write) {
  FlatList f;
  f.pieces.reserve(grads.size());
  f.offsets.reserve(grads.size() + 1);
  for (const at::Tensor& g : grads) {
    if (g.numel() == 0) continue;
    double repeat = 1.0;
    at::Tensor flat = g;
    if (!g.is_non_overlapping_and_dense()) {
      if (for_write) f.strided.push_back(g);
      flat = distinct_elements(g, &repeat);
      if (!flat.is_non_overlapping_and_dense()) {
        f.views.emplace_back(flat, repeat);
        continue;
      }
    }
    f.offsets.push_back(f.total);
    f.pieces.push_back({flat.data_ptr(), flat.numel(), flat.scalar_type(), repeat});
    f.total += flat.numel();
  }
  f.offsets.push_back(f.total);
  return f;
}

template <typename T>
inline double to_double(T v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else if constexpr (std::is_same_v<T, float>) return static_cast<double>(v);
  else return static_cast<double>(static_cast<float>(v));
}

// Reductions: step folds one |x| into an accumulator, combine merges two accumulators.
struct SumSq {
  static constexpr double init = 0.0;
  static double step(double a, double v) { return a + v * v; }
  static double combine(double a, double b) { return a + b; }
};
struct SumAbs {
  static constexpr double init = 0.0;
  static double step(double a, double v) { return a + std::fabs(v); }
  static double combine(double a, double b) { return a + b; }
};
// max/min that propagate NaN, as torch's inf norms do.
struct MaxAbs {
  static constexpr double init = 0.0;
  static double step(double a, double v) {
    const double x = std::fabs(v);
    return (x > a || x != x) ? x : a;
  }
  static double combine(double a, double b) { return (b > a || b != b) ? b : a; }
};
struct MinAbs {
  static constexpr double init = std::numeric_limits<double>::infinity();
  static double step(double a, double v) {
    const double x = std::fabs(v);
    return (x < a || x != x) ? x : a;
  }
  static double combine(double a, double b) { return (b < a || b != b) ? b : a; }
};

// kLanes independent accumulators: the compiler vectorizes the lane loop (no reassociation of a
// single sum is needed), and the lanes are merged in a fixed order, so results are reproducible.
template <typename Op, typename T>
double reduce_flat(const T* x, int64_t n) {
  constexpr int kLanes = 16;
  double acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = Op::init;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] = Op::step(acc[j], to_double(x[i + j]));
  double r = Op::init;
  for (; i < n; ++i) r = Op::step(r, to_double(x[i]));
  for (int j = 0; j < kLanes; ++j) r = Op::combine(r, acc[j]);
  return r;
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX2+FMA paths for the common cases (float32/float64 grads, p = 2 and p = 1), chosen at run time:
// the build targets baseline x86-64, where double accumulation of float32 does not vectorize well
// (3 GB/s measured, compute-bound, against ~10 GB/s of memory bandwidth per core). Sixteen double
// lanes in four registers, merged in a fixed order: reproducible on a given machine.
// RNNFAST_DISABLE_AVX2=1 forces the portable loops (what non-x86 builds run), for tests.
inline bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          std::getenv("RNNFAST_DISABLE_AVX2") == nullptr;
  return yes;
}

__attribute__((target("avx2,fma"))) inline double hsum_avx2(__m256d a0, __m256d a1, __m256d a2, __m256d a3) {
  const __m256d s = _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3));
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, s);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

__attribute__((target("avx2,fma"))) inline __m256d widen_add(__m256d acc, __m256 f) {
  acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
  return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
}

// acc_k += d_k² (kSquare) or |d_k|, four double accumulators (the tails of the f32 and f64 sums).
template <bool kSquare>
__attribute__((target("avx2,fma"))) inline void accumulate4(__m256d& a0, __m256d& a1, __m256d& a2, __m256d& a3,
                                                           __m256d d0, __m256d d1, __m256d d2, __m256d d3) {
  if constexpr (kSquare) {
    a0 = _mm256_fmadd_pd(d0, d0, a0); a1 = _mm256_fmadd_pd(d1, d1, a1);
    a2 = _mm256_fmadd_pd(d2, d2, a2); a3 = _mm256_fmadd_pd(d3, d3, a3);
  } else {
    const __m256d sign = _mm256_set1_pd(-0.0);
    a0 = _mm256_add_pd(a0, _mm256_andnot_pd(sign, d0)); a1 = _mm256_add_pd(a1, _mm256_andnot_pd(sign, d1));
    a2 = _mm256_add_pd(a2, _mm256_andnot_pd(sign, d2)); a3 = _mm256_add_pd(a3, _mm256_andnot_pd(sign, d3));
  }
}

// float32: blocks of 1024 elements are summed in float (32 lanes, 32 terms per lane: a relative
// error of at most ~32 ulp of float per block, 1e-7 typical), and the blocks in double. Full float
// throughput, no float error growth with the length (torch's float sum drifts: 6e-5 at 3M elements).
template <bool kSquare>
__attribute__((target("avx2,fma"))) double sum_f32_avx2(const float* x, int64_t n) {
  const __m256 signf = _mm256_set1_ps(-0.0f);
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  constexpr int64_t kBlock = 1024;
  for (; i + kBlock <= n; i += kBlock) {
    __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
    for (int64_t j = i; j < i + kBlock; j += 32) {
      const __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
      const __m256 v2 = _mm256_loadu_ps(x + j + 16), v3 = _mm256_loadu_ps(x + j + 24);
      if constexpr (kSquare) {
        f0 = _mm256_fmadd_ps(v0, v0, f0); f1 = _mm256_fmadd_ps(v1, v1, f1);
        f2 = _mm256_fmadd_ps(v2, v2, f2); f3 = _mm256_fmadd_ps(v3, v3, f3);
      } else {
        f0 = _mm256_add_ps(f0, _mm256_andnot_ps(signf, v0)); f1 = _mm256_add_ps(f1, _mm256_andnot_ps(signf, v1));
        f2 = _mm256_add_ps(f2, _mm256_andnot_ps(signf, v2)); f3 = _mm256_add_ps(f3, _mm256_andnot_ps(signf, v3));
      }
    }
    a0 = widen_add(a0, f0); a1 = widen_add(a1, f1); a2 = widen_add(a2, f2); a3 = widen_add(a3, f3);
  }
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    const __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v0));
    const __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v0, 1));
    const __m256d d2 = _mm256_cvtps_pd(_mm256_castps256_ps128(v1));
    const __m256d d3 = _mm256_cvtps_pd(_mm256_extractf128_ps(v1, 1));
    accumulate4<kSquare>(a0, a1, a2, a3, d0, d1, d2, d3);
  }
  double r = hsum_avx2(a0, a1, a2, a3);
  for (; i < n; ++i) {
    const double v = x[i];
    r += kSquare ? v * v : std::fabs(v);
  }
  return r;
}

template <bool kSquare>
__attribute__((target("avx2,fma"))) double sum_f64_avx2(const double* x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256d d0 = _mm256_loadu_pd(x + i), d1 = _mm256_loadu_pd(x + i + 4);
    const __m256d d2 = _mm256_loadu_pd(x + i + 8), d3 = _mm256_loadu_pd(x + i + 12);
    accumulate4<kSquare>(a0, a1, a2, a3, d0, d1, d2, d3);
  }
  double r = hsum_avx2(a0, a1, a2, a3);
  for (; i < n; ++i) r += kSquare ? x[i] * x[i] : std::fabs(x[i]);
  return r;
}

__attribute__((target("avx2,fma"))) void scale_f32_avx2(float* x, int64_t n, float c) {
  const __m256 vc = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    const __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    _mm256_storeu_ps(x + i, _mm256_mul_ps(v0, vc));
    _mm256_storeu_ps(x + i + 8, _mm256_mul_ps(v1, vc));
    _mm256_storeu_ps(x + i + 16, _mm256_mul_ps(v2, vc));
    _mm256_storeu_ps(x + i + 24, _mm256_mul_ps(v3, vc));
  }
  for (; i < n; ++i) x[i] *= c;
}
#else
inline bool has_avx2_fma() { return false; }
#endif

template <typename T>
double reduce_pow(const T* x, int64_t n, double p) {
  double r = 0.0;
  for (int64_t i = 0; i < n; ++i) r += std::pow(std::fabs(to_double(x[i])), p);
  return r;
}

template <typename T>
double reduce_piece(const T* x, int64_t n, NormKind kind, double p) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if ((kind == NormKind::Two || kind == NormKind::One) && has_avx2_fma()) {
      if constexpr (std::is_same_v<T, float>)
        return kind == NormKind::Two ? sum_f32_avx2<true>(x, n) : sum_f32_avx2<false>(x, n);
      else
        return kind == NormKind::Two ? sum_f64_avx2<true>(x, n) : sum_f64_avx2<false>(x, n);
    }
  }
#endif
  switch (kind) {
    case NormKind::Two: return reduce_flat<SumSq>(x, n);
    case NormKind::One: return reduce_flat<SumAbs>(x, n);
    case NormKind::Inf: return reduce_flat<MaxAbs>(x, n);
    case NormKind::NegInf: return reduce_flat<MinAbs>(x, n);
    default: return reduce_pow(x, n, p);
  }
}

double combine(NormKind kind, double a, double b) {
  switch (kind) {
    case NormKind::Inf: return MaxAbs::combine(a, b);
    case NormKind::NegInf: return MinAbs::combine(a, b);
    default: return a + b;
  }
}

double identity(NormKind kind) { return kind == NormKind::NegInf ? MinAbs::init : 0.0; }

// Calls f(typed pointer, begin, end, repeat) for the part [g0, g1) of the virtual vector.
template <typename F>
void for_pieces(const FlatList& fl, int64_t g0, int64_t g1, F&& f) {
  size_t i = std::upper_bound(fl.offsets.begin(), fl.offsets.end(), g0) - fl.offsets.begin() - 1;
  for (; g0 < g1; ++i) {
    const Piece& pc = fl.pieces[i];
    const int64_t b = g0 - fl.offsets[i];
    const int64_t e = std::min(pc.numel, g1 - fl.offsets[i]);
    switch (pc.dtype) {
      case at::kFloat: f(static_cast<float*>(pc.data), b, e, pc.repeat); break;
      case at::kDouble: f(static_cast<double*>(pc.data), b, e, pc.repeat); break;
      case at::kHalf: f(static_cast<c10::Half*>(pc.data), b, e, pc.repeat); break;
      default: f(static_cast<c10::BFloat16*>(pc.data), b, e, pc.repeat); break;
    }
    g0 = fl.offsets[i] + e;
  }
}

// Runs f(c) for every chunk c. Threads take chunks from a shared counter rather than a fixed half
// each: on a shared machine a descheduled thread then delays the pass by one chunk, not by half of
// the work. Which thread runs a chunk does not change its partial, so results stay reproducible.
template <typename F>
void for_each_chunk(int64_t nchunks, const F& f) {
  const int threads = at::get_num_threads();
  if (nchunks < kGrainChunks || threads == 1 || at::in_parallel_region()) {
    for (int64_t c = 0; c < nchunks; ++c) f(c);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < nchunks;
         c = next.fetch_add(1, std::memory_order_relaxed))
      f(c);
  });
}

// torch's p = 0 "norm" of a list is the number of tensors that hold a nonzero (or NaN) element:
// the 0-norm of the vector of per-tensor nonzero counts.
double count_nonzero_tensors(const FlatList& fl) {
  double n = 0.0;
  for (size_t i = 0; i < fl.pieces.size(); ++i) {
    bool any = false;
    for_pieces(fl, fl.offsets[i], fl.offsets[i + 1], [&](auto* x, int64_t b, int64_t e, double) {
      for (int64_t k = b; k < e && !any; ++k) any = to_double(x[k]) != 0.0;
    });
    n += any ? 1.0 : 0.0;
  }
  for (const auto& v : fl.views) n += at::linalg_vector_norm(v.first, 0.0).item<double>() != 0.0 ? 1.0 : 0.0;
  return n;
}

// The total norm in double, before rounding to the result dtype.
double total_norm_value(const FlatList& fl, double p, at::ScalarType out) {
  const NormKind kind = clip::norm_kind(p);
  if (kind == NormKind::Zero) return count_nonzero_tensors(fl);
  const int64_t nchunks = (fl.total + kChunk - 1) / kChunk;
  std::vector<double> partial(nchunks, identity(kind));
  for_each_chunk(nchunks, [&](int64_t c) {
    double acc = identity(kind);
    for_pieces(fl, c * kChunk, std::min(fl.total, (c + 1) * kChunk), [&](auto* x, int64_t b, int64_t e, double rep) {
      const double part = reduce_piece(x + b, e - b, kind, p);
      // a repeated element counts rep times in a sum; a max/min sees it once either way
      acc = combine(kind, acc, (rep == 1.0 || kind == NormKind::Inf || kind == NormKind::NegInf) ? part : part * rep);
    });
    partial[c] = acc;
  });
  double r = identity(kind);
  for (double v : partial) r = combine(kind, r, v);
  if (fl.total == 0) r = 0.0;  // ( -inf norm of no element is rejected before; keep 0 for the rest)
  bool have = fl.total > 0;
  for (const auto& [v, rep] : fl.views) {
    // ||v||_p from ATen (reduced in place), turned back into this reduction's partial: the sum of
    // |x|^p, counted rep times; max/min as they are
    const double nv = at::linalg_vector_norm(v, p).item<double>();
    double part = nv;
    if (kind == NormKind::Two) part = nv * nv * rep;
    else if (kind == NormKind::One) part = nv * rep;
    else if (kind == NormKind::P) part = std::pow(nv, p) * rep;
    r = have ? combine(kind, r, part) : part;
    have = true;
  }
  switch (kind) {
    case NormKind::Inf:
    case NormKind::NegInf: return r;
    default: break;
  }
  // torch accumulates float16/bfloat16/float32 norms in float: a sum beyond FLT_MAX is inf there.
  if (out != at::kDouble && r > static_cast<double>(FLT_MAX)) r = std::numeric_limits<double>::infinity();
  if (kind == NormKind::One) return r;
  if (kind == NormKind::Two) return std::sqrt(r);
  return std::pow(r, 1.0 / p);
}

template <typename T>
void scale_flat(T* x, int64_t n, double coef) {
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t i = 0; i < n; ++i) x[i] *= coef;
  } else {
    const float c = static_cast<float>(coef);
#if defined(__x86_64__) && defined(__GNUC__)
    if constexpr (std::is_same_v<T, float>) {
      if (has_avx2_fma()) return scale_f32_avx2(x, n, c);
    }
#endif
    for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>(static_cast<float>(x[i]) * c);
  }
}

void scale_all(const FlatList& fl, double coef) {
  if (coef == 1.0) return;  // torch multiplies by 1; the values are identical without the pass
  const int64_t nchunks = (fl.total + kChunk - 1) / kChunk;
  for_each_chunk(nchunks, [&](int64_t c) {
    for_pieces(fl, c * kChunk, std::min(fl.total, (c + 1) * kChunk),
               [&](auto* x, int64_t b, int64_t e, double rep) {
                 if (rep == 1.0) scale_flat(x + b, e - b, coef);  // repeated views: mul_ below (raises)
               });
  });
  // Non-dense grads were reduced as views: scale the originals with ATen (same arithmetic:
  // mul_ by a double Scalar computes in float for reduced and float32 dtypes, in double for float64).
  for (const at::Tensor& g : fl.strided) g.mul_(coef);
}

at::Tensor make_scalar(double v, at::ScalarType out) {
  return at::scalar_tensor(v, at::TensorOptions().dtype(out).device(at::kCPU));
}

at::Tensor grad_norm_cpu(at::TensorList tensors, double norm_type) {
  const at::ScalarType out = clip::check_grads("grad_norm", tensors);
  clip::check_empty_for_inf("grad_norm", tensors, clip::norm_kind(norm_type));
  const FlatList fl = flatten(tensors, /*for_write=*/false);
  return make_scalar(total_norm_value(fl, norm_type, out), out);
}

void clip_grads_with_norm_cpu(at::TensorList grads, double max_norm, const at::Tensor& total_norm) {
  if (grads.empty()) return;
  clip::check_grads("clip_grads_with_norm_", grads);
  clip::check_total_norm("clip_grads_with_norm_", total_norm, grads[0].device());
  const double coef = clip::clip_coef(total_norm.scalar_type(), total_norm.item<double>(), max_norm);
  scale_all(flatten(grads, /*for_write=*/true), coef);
}

at::Tensor clip_grad_norm_cpu(at::TensorList grads, double max_norm, double norm_type) {
  const at::ScalarType out = clip::check_grads("clip_grad_norm_", grads);
  clip::check_empty_for_inf("clip_grad_norm_", grads, clip::norm_kind(norm_type));
  const FlatList fl = flatten(grads, /*for_write=*/true);
  at::Tensor total = make_scalar(total_norm_value(fl, norm_type, out), out);
  // Round the norm to the result dtype first: torch's coefficient starts from that value.
  scale_all(fl, clip::clip_coef(out, total.item<double>(), max_norm));
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("grad_norm", &grad_norm_cpu);
  m.impl("clip_grads_with_norm_", &clip_grads_with_norm_cpu);
  m.impl("clip_grad_norm_", &clip_grad_norm_cpu);
}

}  // namespace rnnfast
