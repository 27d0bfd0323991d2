// The per-step recurrent GEMM, with its weight packed once per call when that repays.
//
// A recurrent layer multiplies the same W_hh by a new (B, H) state T times. Through at::mm_out,
// MKL re-packs W_hh on every call (and the dispatcher is paid every call); MKL's packed API
// (cblas_sgemm_pack / cblas_sgemm_compute) packs it once and measured ~25% faster per step at
// B=32, H=256, G=4. torch links MKL statically and exports these symbols; we look them up at run
// time (dlsym), so a torch built without MKL, or float64, simply falls back to at::mm_out.
// Packing is not free, though (worth_packing below): a short sequence or a batch of one or two
// rows runs at::mm_out per step instead, with no per-call cost that grows with the weight.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <dlfcn.h>

#include "gemm_avx512.h"
#include "isa.h"  // RNNFAST_GCC_X86, RNNFAST_ALWAYS_INLINE
#include "../core/scratch.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

namespace rnnfast {
namespace cpu {

namespace mkl {
// CBLAS enum values (mkl_cblas.h)
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
using PackGetSize = size_t (*)(int identifier, int m, int n, int k);
using Pack = void (*)(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest);
using Compute = void (*)(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc);
using SetNumThreadsLocal = int (*)(int nt);  // MKL_Set_Num_Threads_Local: previous value, 0 = global

struct Api {
  PackGetSize get_size = nullptr;
  Pack pack = nullptr;
  Compute compute = nullptr;
  SetNumThreadsLocal set_num_threads_local = nullptr;  // optional
  bool ok() const { return get_size && pack && compute; }
};

inline void* find_symbol(const char* name) {
  void* sym = dlsym(RTLD_DEFAULT, name);
  if (!sym) {
    if (void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD)) sym = dlsym(lib, name);
  }
  return sym;
}

inline const Api& api() {
  static const Api a = [] {
    Api r;
    r.get_size = reinterpret_cast<PackGetSize>(find_symbol("cblas_sgemm_pack_get_size"));
    r.pack = reinterpret_cast<Pack>(find_symbol("cblas_sgemm_pack"));
    r.compute = reinterpret_cast<Compute>(find_symbol("cblas_sgemm_compute"));
    r.set_num_threads_local = reinterpret_cast<SetNumThreadsLocal>(find_symbol("MKL_Set_Num_Threads_Local"));
    return r;
  }();
  return a;
}

// While alive, MKL calls from this thread run sequentially (for GEMMs issued from inside our own
// parallel region; MKL would also detect the OpenMP region, this makes it explicit).
class SequentialScope {
 public:
  SequentialScope() {
    if (api().set_num_threads_local) prev_ = api().set_num_threads_local(1);
  }
  ~SequentialScope() {
    if (api().set_num_threads_local) api().set_num_threads_local(prev_);
  }
  SequentialScope(const SequentialScope&) = delete;
  SequentialScope& operator=(const SequentialScope&) = delete;

 private:
  int prev_ = 0;
};
}  // namespace mkl

// ---- Small calls run on one thread --------------------------------------------------------------
// A layer call with a small W_hh (under kSerialMaxWeight elements: gemm_small's column split would
// not start either), steps under kSerialStepMacs multiply-adds (B*G*H*(I+P)) and under
// kSerialCallMacs in all (T steps, twice for a backward) runs on the calling thread alone: every
// parallel region it would open (the batch split, the row passes, MKL's threads) costs more to
// start and join than it saves. Measured at 2 threads, module forward, in one process with the rule
// toggled in alternating blocks (15 rounds, median time ratio with the rule / without [quartiles]):
// RNN-relu H64 B8 T1 0.76 [0.73, 0.77], GRU H64 B8 T8 0.75 [0.73, 0.79], LSTM H64 B8 T1 0.85,
// RNN-tanh H64 B32 T1 0.95, GRU H64 B1 T35 0.91, RNN-relu H64 B8 T1 forward+backward 0.94. The
// bounds are where it stopped paying: LSTM H64 B32 T1 (1M MACs a step) 1.02-1.05 with the rule,
// RNN-tanh H64 B8 T35 (2.3M in all) 1.15, GRU H256 B1 T8 (W_hh 197K elements) 1.31.
constexpr int64_t kSerialCallMacs = int64_t(17) << 17, kSerialStepMacs = int64_t(512) << 10;
constexpr int64_t kSerialMaxWeight = int64_t(1) << 17;

// Whether this thread is inside a SerialScope that took effect.
inline bool& serial_call_flag() {
  thread_local bool flag = false;
  return flag;
}
inline bool serial_call() { return serial_call_flag(); }

// While alive and `on`: this thread's rnnfast loops and MKL calls run sequentially.
class SerialScope {
 public:
  explicit SerialScope(bool on) {
    if (!on) return;
    prev_ = serial_call_flag();
    serial_call_flag() = true;
    mkl_.emplace();
  }
  ~SerialScope() {
    if (mkl_) serial_call_flag() = prev_;
  }
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  bool prev_ = false;
  std::optional<mkl::SequentialScope> mkl_;  // engaged: the scope took effect
};

// ---- The one rule for how a tensor's strides reach a BLAS call ---------------------------------
// Every raw BLAS entry in csrc/cpu (the packed GEMM below; the other GEMMs go through ATen's
// at::mm / addmm, which apply the same rule inside before calling BLAS) sees a row-major operand
// as (rows, cols, ld): unit column stride and a leading dimension ld >= max(1, cols). The stride
// of a size-1 dimension means nothing (expand, as_strided and autograd's gradient of a .sum()
// leave 0 there): it never becomes ld, a single row gets ld = max(1, cols). A tensor that cannot
// be described so is copied (an input operand, blas_operand) or rejected (a result, which the
// host loop always allocates itself). check_gemm_args then checks what BLAS would reject, before
// the call: MKL would print "Parameter N was incorrect" and skip the call, leaving stale results.
inline bool blas_layout_ok(const at::Tensor& t) {
  if (t.dim() != 2) return false;
  const int64_t rows = t.size(0), cols = t.size(1);
  if (cols > 1 && t.stride(1) != 1) return false;
  return rows <= 1 || t.stride(0) >= std::max<int64_t>(1, cols);
}

// The leading dimension BLAS gets for a 2-D tensor that passes blas_layout_ok.
inline int64_t blas_ld(const at::Tensor& t) {
  return t.size(0) > 1 ? t.stride(0) : std::max<int64_t>(1, t.size(1));
}

// An input operand as BLAS may read it: t itself when it passes blas_layout_ok, else a dense copy.
inline at::Tensor blas_operand(const at::Tensor& t) {
  return blas_layout_ok(t) ? t : t.clone(at::MemoryFormat::Contiguous);
}

// Row-major C (m, n) = A (m, k) · B with B packed (only C and A have a leading dimension).
inline void check_gemm_args(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldc) {
  constexpr int64_t kMax = INT32_MAX;
  TORCH_CHECK(m >= 0 && n >= 0 && k >= 0 && m <= kMax && n <= kMax && k <= kMax,
              "rnnfast: BLAS GEMM sizes out of range: m=", m, ", n=", n, ", k=", k);
  TORCH_CHECK(lda >= std::max<int64_t>(1, k) && lda <= kMax, "rnnfast: BLAS GEMM operand A (", m, ", ", k,
              ") has leading dimension ", lda, "; it must lie in [max(1, ", k, "), 2^31)");
  TORCH_CHECK(ldc >= std::max<int64_t>(1, n) && ldc <= kMax, "rnnfast: BLAS GEMM result C (", m, ", ", n,
              ") has leading dimension ", ldc, "; it must lie in [max(1, ", n, "), 2^31)");
}

// ---- A plain GEMM straight into BLAS: C (m, n) = beta C + op(A) op(B) ----------------------------
// The weight gradients of few rows (a cell's step) are a handful of small GEMMs whose operands
// are contiguous buffers or blocks of them. Through at::mm / addmm_ each cost ~1 us of dispatch
// and views (narrow, t, select, resolve_conj, as_strided: ~30 dispatcher calls a step) on top of
// BLAS. The Fortran entries (sgemm_ / dgemm_) are what ATen's cpublas::gemm calls for these
// dtypes; torch exports them (MKL's, or the BLAS it was built with), found at run time like the
// packed API above. Absent (a torch built without BLAS): false, and the caller takes ATen.
namespace fortran {
template <typename T_>
using Gemm = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                      const T_* alpha, const T_* a, const int* lda, const T_* b, const int* ldb, const T_* beta,
                      T_* c, const int* ldc);
template <typename T_>
inline Gemm<T_> gemm() {
  static const Gemm<T_> f =
      reinterpret_cast<Gemm<T_>>(mkl::find_symbol(std::is_same_v<T_, float> ? "sgemm_" : "dgemm_"));
  return f;
}
}  // namespace fortran

// Row-major C (m, n) = beta C + op(A) op(B), op(A) (m, k), op(B) (k, n); op transposes where asked.
// Every operand row-major with unit column stride, its leading dimension at least its stored row
// length (A: k, or m transposed; B: n, or k transposed; C: n). beta = 0 ignores C's old contents
// (NaN or not). False, having done nothing, when there is no BLAS or a size does not fit its int
// arguments (BLAS would print "Parameter N was incorrect" and skip the call): blas_args_ok.
template <typename T_>
bool blas_args_ok(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  constexpr int64_t kMax = INT32_MAX;
  const int64_t row_a = trans_a ? m : k, row_b = trans_b ? k : n;
  return fortran::gemm<T_>() && m >= 1 && n >= 1 && k >= 1 && m <= kMax && n <= kMax && k <= kMax && lda >= row_a &&
         ldb >= row_b && ldc >= n && lda <= kMax && ldb <= kMax && ldc <= kMax;
}
inline bool blocked_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                         const float* b, int64_t ldb, float beta, float* c, int64_t ldc);  // below
template <typename T_>
bool blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T_* a, int64_t lda, const T_* b,
               int64_t ldb, T_ beta, T_* c, int64_t ldc) {
  static_assert(std::is_same_v<T_, float> || std::is_same_v<T_, double>, "blas_gemm: float or double");
  if (!blas_args_ok<T_>(trans_a, trans_b, m, n, k, lda, ldb, ldc)) return false;
  if constexpr (std::is_same_v<T_, float>) {  // on the AVX2 kernels, the large ones: rnnfast's blocked GEMM
    if (blocked_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)) return true;
  }
  const auto f = fortran::gemm<T_>();
  // Column-major, C is Cᵀ (n, m) = op(B)ᵀ op(A)ᵀ, and a row-major operand is its own transpose.
  // The sizes are 64-bit integers below 2^31 passed by address: on a little-endian machine a
  // 32-bit BLAS integer (LP64, torch's MKL) reads the low half, a 64-bit one (ILP64) all of it.
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "blas_gemm: the integer arguments assume little-endian");
  const int64_t M = n, N = m, K = k, la = ldb, lb = lda, lc = ldc;
  const auto i = [](const int64_t& v) { return reinterpret_cast<const int*>(&v); };
  const T_ one = 1;
  f(trans_b ? "T" : "N", trans_a ? "T" : "N", i(M), i(N), i(K), &one, b, i(la), a, i(lb), &beta, c, i(lc));
  return true;
}

// C (m, n) = beta C + Aᵀ B, A (k, m), B (k, n): a weight gradient dGᵀ X.
template <typename T_>
bool gemm_tn(int64_t m, int64_t n, int64_t k, const T_* a, int64_t lda, const T_* b, int64_t ldb, T_ beta, T_* c,
             int64_t ldc) {
  return blas_gemm<T_>(true, false, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// Whether packing op(W) once repays over `steps` GEMMs of `m` rows each. Measured on the 2-core
// dev box (Xeon, MKL in torch 2.13, 1 thread; bench/pack_breakeven.py):
// - m <= 2: the packed compute is no faster than at::mm (MKL runs a GEMV-like kernel on the plain
//   weight), and cblas_sgemm_pack itself is 5-15x slower for m = 1 than for m >= 4 (G*H x H
//   weight: H=512 G=3 2.0 ms at m=1 against 0.43 ms at m=8; one at::mm at m=1 is 0.15 ms).
//   Never pack: T=1, B=1 generation paid 2-10 ms per call for one 0.15-0.6 ms GEMV.
// - m >= 4: a pack costs about one to three unpacked GEMMs of the same weight and saves 5-70% per
//   step: break-even at 2-9 steps for H >= 256 (e.g. H=512 G=4 m=8: pack 0.53 ms, step 0.17 vs
//   0.49 ms), up to ~19 steps where the saving is tiny (H <= 256, one gate, m = 8).
// So: pack when m >= 4 and the sequence has at least 2 steps and m * steps >= 64 (T=8 at B=8,
// T=16 at B=4, T=2 at B=32); a single step never packs (nothing to amortize over). That is the
// rule against MKL's unpacked GEMM; where gemm_small takes the rows instead, the packed step saves
// less and worth_packing_over_small (below) decides.
constexpr int64_t kPackMinRows = 4, kPackMinSteps = 2, kPackMinRowSteps = 64;
inline bool worth_packing(int64_t m, int64_t steps) {
  return m >= kPackMinRows && steps >= kPackMinSteps && m * steps >= kPackMinRowSteps;
}

// C (M, N) = [C +] A (M, K) · Wᵀ for a small batch of rows (see takes_small for how many): the
// recurrent GEMM of a small batch (unpacked: short sequences) and the input projection of a short
// one. MKL runs this "dot product" form (W row-major, K contiguous in both operands) below the
// speed of memory and cache: for one row (GEMV; 1 thread, at::mm through MKL against the old
// gemv_rows, us: 768 x 256 24.6 / 13.8-16.7, 1536 x 512 162 / 115-129, 4096 x 1024 811 / 757), and
// for more rows it also copies (packs) all of W on every call.
// Here each block of R rows of W is loaded once for all M rows of A (W outer: read from memory
// once, then reused from L1 by every tile of MT rows of A), with MT x R independent 16-lane
// accumulators in flight. The 16 lanes of each accumulator are summed by a fixed tree (lane_sums:
// all the tile's accumulators at once). Every C[m, n] is summed in an order that depends on K only
// (never on which rows share a tile, how the rows are split over threads, the batch or the step),
// so a row's value is the same whichever call computes it, batch of one or not. Any K (below 16 on
// a padded copy of W, small_k_padded): when K is not a multiple of 16, its last K % 16 columns take
// one more 16-lane step of every accumulator
// (SmallTail): W's last 16 columns read in place, the lanes before the tail cleared bitwise (no
// arithmetic on them: an inf or NaN there must not leak through 0 * inf), against a per-call copy of
// A's last columns zero-padded in front. Before, such K went to MKL, whose one-row GEMV ran at half
// the speed (LSTM I = H = 200, B = 1, T = 100, 1 thread, forward: 1247 -> 854 us).
using Vec16 = float __attribute__((vector_size(64)));

// The lane sums of N <= 16 accumulators: lane j of out is the sum of the 16 lanes of v[j],
// always by the same tree: a8 = v[0:8] + v[8:16], a4 = a8[0:4] + a8[4:8], (a4[0] + a4[2]) +
// (a4[1] + a4[3]). Done for all accumulators together, transposed: each stage adds two vectors
// whose lanes hold the pairs it sums for two accumulators (groups) at once, halving the vectors;
// 2 shuffles and 1 add per pair, where one accumulator at a time cost ~5 shuffles and ~5 adds.
template <int N>
RNNFAST_ALWAYS_INLINE void lane_sums(const Vec16* v, Vec16& out) {
  static_assert(N >= 1 && N <= 16, "lane_sums: 1..16 accumulators");
  const Vec16 z{};
  constexpr int N1 = (N + 1) / 2, N2 = (N1 + 1) / 2, N3 = (N2 + 1) / 2;
  Vec16 s[N1], u[N2], r[N3];
  for (int i = 0; i < N1; ++i) {  // s[i]: lanes 8g..8g+7 hold a8 of v[2i + g]
    const Vec16 x = v[2 * i], y = 2 * i + 1 < N ? v[2 * i + 1] : z;
    s[i] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(x, y, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int i = 0; i < N2; ++i) {  // u[i]: lanes 4g..4g+3 hold a4 of v[4i + g]
    const Vec16 x = s[2 * i], y = 2 * i + 1 < N1 ? s[2 * i + 1] : z;
    u[i] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(x, y, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
  for (int i = 0; i < N3; ++i) {  // r[i]: lanes 2g, 2g+1 hold a4[0] + a4[2], a4[1] + a4[3] of v[8i + g]
    const Vec16 x = u[2 * i], y = 2 * i + 1 < N2 ? u[2 * i + 1] : z;
    r[i] = __builtin_shufflevector(x, y, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(x, y, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  }
  const Vec16 x = r[0], y = N3 > 1 ? r[1] : z;
  out = __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(x, y, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// C[m, r] (m < M, r < R) = [C +] A[m] · W[r] over K: M x R <= 16 accumulators. Prefetch: touch the
// same columns of the next R rows of W (the next block) while this one is multiplied.
// The most rows gemm_small takes (RecurrentGemm::takes_small): A's tail lives on the stack.
constexpr int64_t kSmallMaxRows = 64;

// How many rows gemm_small takes when K is not a multiple of 16 (RecurrentGemm::takes_small): its
// tail step and A's copy weigh most where K is short. Measured standalone against MKL's unpacked
// at::mm (`python3 bench/small_gemm.py --shapes ...`, 1 thread, us, gemm_small / MKL):
//   W 300 x 10   M=1 0.2 / 1.0   M=2 0.5 / 0.9   M=4 1.0 / 1.0   M=8 1.8 / 1.1
//   W 1024 x 28  M=1 1.4 / 4.4   M=2 2.3 / 3.8   M=4 4.5 / 4.1   M=8 8.8 / 5.3
//   W 512 x 50   M=2 1.9 / 2.7   M=4 3.0 / 3.8   M=8 5.5 / 4.6
//   W 400 x 100  M=4 3.8 / 5.4   M=8 6.3 / 7.2   M=15 13.6 / 10.8
//   W 800 x 200  M=1 5.7 / 10.1  M=4 12.8 / 16.0 M=8 24.8 / 29.5  M=15 48.5 / 47.7
//   W 1200 x 300 M=4 24.2 / 34.3 M=8 46.3 / 59.3 M=15 93.8 / 92.3
//   W 4000 x 1000 M=4 568 / 1116  M=8 744 / 1673 M=15 1287 / 2795
inline int64_t small_tail_max_rows(int64_t K) { return K >= 256 ? 16 : K >= 96 ? 8 : K >= 48 ? 4 : 2; }

using Vec16i = int32_t __attribute__((vector_size(64)));

// The last K % 16 columns of a gemm_small call whose K is not a multiple of 16 (gemm_block's K is
// then the multiple of 16 below it): W's are read in place as the 16 columns ending at K, lanes
// masked bitwise to the tail's; A's come from `a`, rows of 16 floats, zeros then the tail columns.
// a: (rows of A, 16), null where K is a multiple of 16 (no tail); w_col = K - 16, the first of the 16
// columns of W read; rem = K % 16 (gemm_avx512.h SmallTailArgs, what the AVX2 kernel takes).
struct SmallTail : SmallTailArgs {
  Vec16i keep{};  // all ones in the tail's lanes (the last rem), zero before
};

template <int M, int R, bool Prefetch = false>
RNNFAST_ALWAYS_INLINE void gemm_block(const float* __restrict w, int64_t ldw, const float* __restrict a, int64_t lda,
                                      float* __restrict c, int64_t ldc, int64_t K, bool accumulate,
                                      SmallTail tail = {}) {
  static_assert(M * R <= 16, "gemm_block: at most 16 accumulators");
  Vec16 acc[M * R];
  for (int i = 0; i < M * R; ++i) acc[i] = Vec16{};
  if (tail.a) {  // the last columns first: the order of the sums is fixed by K alone either way
    Vec16 wv[R];
    for (int r = 0; r < R; ++r) {
      Vec16i bits;
      std::memcpy(&bits, w + r * ldw + tail.w_col, sizeof(Vec16i));
      bits &= tail.keep;
      std::memcpy(&wv[r], &bits, sizeof(Vec16));
    }
    for (int m = 0; m < M; ++m) {
      Vec16 av;
      std::memcpy(&av, tail.a + m * 16, sizeof(Vec16));
      for (int r = 0; r < R; ++r) acc[m * R + r] = wv[r] * av;
    }
  }
  for (int64_t k = 0; k < K; k += 16) {
    Vec16 wv[R];
    for (int r = 0; r < R; ++r) std::memcpy(&wv[r], w + r * ldw + k, sizeof(Vec16));
    if constexpr (Prefetch) {
      for (int r = 0; r < R; ++r) __builtin_prefetch(w + (r + R) * ldw + k);  // never faults, even past W's end
    }
    for (int m = 0; m < M; ++m) {
      Vec16 av;
      std::memcpy(&av, a + m * lda + k, sizeof(Vec16));
      for (int r = 0; r < R; ++r) acc[m * R + r] += wv[r] * av;
    }
  }
  Vec16 sum;
  lane_sums<M * R>(acc, sum);
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) {
      float& y = c[m * ldc + r];
      y = accumulate ? y + sum[m * R + r] : sum[m * R + r];
    }
  }
}

// R rows of W against all M rows of A: tiles of kTileRows rows, then the remaining 1..3 rows.
constexpr int kTileRows = 4, kTileCols = 4;  // measured best of 8x2, 6x2, 4x3, 4x4, 2x8 (4x4 by 1.2-2x)
template <int R, bool Prefetch>
RNNFAST_ALWAYS_INLINE void gemm_rows(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                                     int64_t M, int64_t K, bool accumulate, SmallTail tail) {
  int64_t m = 0;
  for (; m + kTileRows <= M; m += kTileRows) {
    SmallTail t = tail;
    if (t.a) t.a += m * 16;  // null stays null: no tail
    gemm_block<kTileRows, R, Prefetch>(w, ldw, a + m * lda, lda, c + m * ldc, ldc, K, accumulate, t);
  }
  a += m * lda;
  c += m * ldc;
  if (tail.a) tail.a += m * 16;
  switch (M - m) {
    case 1: gemm_block<1, R, Prefetch>(w, ldw, a, lda, c, ldc, K, accumulate, tail); break;
    case 2: gemm_block<2, R, Prefetch>(w, ldw, a, lda, c, ldc, K, accumulate, tail); break;
    case 3: gemm_block<3, R, Prefetch>(w, ldw, a, lda, c, ldc, K, accumulate, tail); break;
    default: break;
  }
}

// Two or more rows: blocks of kTileCols rows of W, then single rows.
template <bool Prefetch>
RNNFAST_ALWAYS_INLINE void gemm_tiles(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                                      int64_t M, int64_t N, int64_t K, bool accumulate, SmallTail tail) {
  int64_t n = 0;
  for (; n + kTileCols <= N; n += kTileCols) {
    gemm_rows<kTileCols, Prefetch>(w + n * ldw, ldw, a, lda, c + n, ldc, M, K, accumulate, tail);
  }
  for (; n < N; ++n) gemm_rows<1, false>(w + n * ldw, ldw, a, lda, c + n, ldc, M, K, accumulate, tail);
}

// From 2 rows of A, the next block of W is prefetched while a block is multiplied, for a W of at
// most kPrefetchMaxWeightBytes. Measured in the layer (module forward at T = 1, inference, 1
// thread, alternating processes against the commit before, 7 rounds): LSTM H = 256 B = 8 1.21-1.30x,
// B = 16 1.17x, B = 32 1.05x; GRU H = 256 B = 8 1.26x, H = 512 B = 8 1.08x; LSTM H = 512 B = 8
// 1.13x, B = 32 1.01x. Above it (W streamed from memory, the hardware prefetcher's case), it cost:
// GRU H = 1024 B = 8 (12 MB) 0.93-0.95x. One row (GEMV): no change measured either way (LSTM
// H = 256, GRU H = 512), so it does not prefetch.
constexpr int64_t kPrefetchMaxWeightBytes = int64_t(8) << 20;

// The generic-vector gemm_small, compiled for AVX-512F and for the baseline ISA below.
RNNFAST_ALWAYS_INLINE void gemm_small_rows_impl(const float* w, int64_t ldw, const float* a, int64_t lda, float* c,
                                                int64_t ldc, int64_t M, int64_t N, int64_t K, bool accumulate,
                                                SmallTail tail) {
  if (M <= 0) return;
  if (M >= 2) {
    if (N * K * int64_t(sizeof(float)) <= kPrefetchMaxWeightBytes) {
      gemm_tiles<true>(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail);
    } else {
      gemm_tiles<false>(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail);
    }
    return;
  }
  int64_t n = 0;  // one row (GEMV): 8 rows of W per block, as many loads in flight as accumulators
  for (; n + 8 <= N; n += 8) gemm_block<1, 8>(w + n * ldw, ldw, a, lda, c + n, ldc, K, accumulate, tail);
  for (; n < N; ++n) gemm_rows<1, false>(w + n * ldw, ldw, a, lda, c + n, ldc, M, K, accumulate, tail);
}

// Picked at run time: for AVX-512F (4 x 4 tiles, 8 rows of W a GEMV block, a target attribute on the
// generic vectors above), for AVX2 with FMA (gemm_avx2.cpp avx2::gemm_small_rows: the same sums in
// the same order, written with intrinsics; the generic 16-lane vectors compiled for AVX2, as a
// target_clones "avx2" clone of this function was before, kept their accumulators on the stack and
// had no FMA: 3-10x slower than MKL on an AMD Zen 2 core) and for the baseline ISA.
#if RNNFAST_GCC_X86
__attribute__((target("avx512f"))) inline void gemm_small_rows_avx512(const float* w, int64_t ldw, const float* a,
                                                                      int64_t lda, float* c, int64_t ldc, int64_t M,
                                                                      int64_t N, int64_t K, bool accumulate,
                                                                      SmallTail tail) {
  gemm_small_rows_impl(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail);
}
#endif
inline void gemm_small_rows_baseline(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                                     int64_t M, int64_t N, int64_t K, bool accumulate, SmallTail tail) {
  gemm_small_rows_impl(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail);
}
inline void gemm_small_rows(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                            int64_t M, int64_t N, int64_t K, bool accumulate, SmallTail tail) {
#if RNNFAST_GCC_X86
  static const bool avx512 = cpu_has_avx512f(), avx2 = cpu_has_avx2_fma();  // isa.cpp's probes
  if (avx512) return gemm_small_rows_avx512(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail);
  if (avx2) {
    return avx2::gemm_small_rows(w, ldw, a, lda, c, ldc, M, N, K, accumulate,
                                 N * K * int64_t(sizeof(float)) <= kPrefetchMaxWeightBytes, tail);
  }
#endif
  gemm_small_rows_baseline(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail);
}

// When it runs (RecurrentGemm::takes_small): up to kSmallRows rows always; up to kSmallRowsNarrow
// for a W of at most kSmallNarrowN rows (below); up to kSmallRowsLongK
// when K >= kSmallLongK (the lane sums, a fixed cost per output, are then spread over >= 16 FMAs
// an output); up to kSmallRowsLarge when W is larger than a core's L2 (kSmallMinWeightBytes), where
// MKL copies all of W on every call. Measured in a standalone C++ loop against at::mm (MKL), 1
// thread, us per call, this kernel / MKL (medians of 3 runs of 10+ calls; bench/small_gemm.py):
//   W 256 x 64      M=4 2.6 / 5.6    M=16 6.2 / 6.4     M=32 12.1 / 9.5
//   W 512 x 128     M=4 4.9 / 8.2    M=16 18.7 / 21.3   M=32 37.3 / 33.5
//   W 768 x 256     M=4 17.2 / 25.4  M=16 48.6 / 81.3   M=32 133 / 102     M=64 289 / 209
//   W 2048 x 512    M=4 173 / 339    M=16 351 / 556     M=32 669 / 781     M=64 1032 / 1221
//   W 4096 x 1024   M=4 682 / 1262   M=16 1412 / 2370   M=32 2252 / 3188   M=64 4011 / 4833
// (the previous kernel, one accumulator's lanes summed at a time and A outer: 4 MB M=16 549, M=32
// 1149; 768 x 256 M=16 102). In the layer, where W_ih and W_hh take turns in the cache (module
// forward at T = 1, inference, alternating processes, gemm_small / MKL up to 64 rows): LSTM H=256
// B=32 1.12x, B=64 0.93x; GRU H=256 B=32 1.05x; LSTM H=64 B=32 0.96x, B=64 0.81x; H=128 B=32 0.96x.
// Up to kSmallRowsNarrow rows also when W has at most kSmallNarrowN rows (RNN H <= 128, LSTM H <= 32),
// where MKL's per-call copy of W and its setup are most of a GEMM this small: module forward at
// T = 1, inference, in one process with the rule toggled in alternating blocks (11 rounds, time
// MKL / gemm_small): RNN H=64 B=20 1.31x, B=24 1.29x, B=32 1.22x (2 threads 1.12x); RNN H=32 B=32
// 1.29x; RNN H=96 B=32 1.06x; RNN H=128 B=32 1.11x (2 threads 1.14x); LSTM H=32 B=32 1.04x. A wider
// W does not gain (GRU H=64, N = 192, B=32: 0.94x).
constexpr int64_t kSmallRows = 16, kSmallRowsLongK = 32, kSmallLongK = 256, kSmallRowsLarge = 64;
static_assert(kSmallRowsLarge <= kSmallMaxRows && kSmallRowsLongK <= kSmallMaxRows, "gemm_small: A's tail buffer");
constexpr int64_t kSmallRowsNarrow = 32, kSmallNarrowN = 128;
constexpr int64_t kSmallMinWeightBytes = int64_t(3) << 20;

// Whether packing repays against gemm_small (when the unpacked GEMM of m rows would run it).
// Measured like worth_packing (standalone C++ loop, 1 thread, us: pack / packed step / gemm_small
// step, break-even steps): gemm_small at m = 4 is as fast as the packed step (G=4 H=512 182 / 179,
// H=1024 721 / 869), so packing hardly ever repays there (22 to never, 103 at G=4 H=64); at m = 8
// with W in L2 it breaks even in 3.5-12.6 steps (G=4 H=64: 3.3 / 2.3 / 3.2; H=256: 71 / 25 / 31),
// at m >= 16 in 1.3-8; above 3 MB the pack costs 1-3 steps and saves 3-20% a step: 8.7-140 steps
// at m = 8, 7-24 at m = 16, 4-9 at m = 32, 2-5.5 at m = 64 (G=4 H=512 m=32: 509 / 478 / 600).
// So: at least 2 steps and m >= 4; then m * steps >= 256 above 3 MB (and more than 8 rows, below),
// else m * steps >= 64 from 8
// rows and >= 128 below (bench/small_gemm.py times both sides; bench/pack_breakeven.py MKL's).
// Since gemm_small prefetches W (kPrefetchMaxWeightBytes), 8-15 rows with K >= kSmallLongK also
// wait for 128: module forward, inference, 1 thread, in one process with packing toggled in
// alternating blocks (11 rounds, time packed / unpacked): B = 8, T = 8, H = 256 LSTM 1.06-1.12x,
// GRU 1.10-1.11x, RNN-tanh 1.06x in favour of not packing; at T = 16 equal (0.99x, 0.99x); with
// K = 128 (LSTM H = 128) packing still won at T = 8 (0.94x), so shorter K keeps 64.
//
// Where the batch-lane kernel takes the rows instead (`lanes`), a step on it is about as fast as the
// packed one, so the pack rarely repays: measured in the layer, module forward, inference, in one
// process with packing toggled in alternating blocks (9 rounds, time packed / lanes): W_hh from 3 MB
// never (LSTM H=512 B=32 T=8 1.11x, H=1024 1.13x, GRU H=512 B=32 T=35 1.06x), below it packing still
// wins a little on long sequences (LSTM H=64 B=32 T=200 0.96x, B=128 T=35 0.95x, H=128 T=35 0.98x,
// H=256 B=128 T=35 0.97x, B=32 1.00x), so the rule above stays there. From 3 MB the batch-lane kernel
// also takes 65-128 rows (kLanesMaxRowsLarge); there the packed step is faster again on a sequence
// (alternating processes against the rule without this bound, 3 rounds, time lanes / packed: LSTM
// H=512 B=128 T=200 1.09x, T=35 1.01x (2 threads 1.05x), T=8 1.03x; GRU H=512 B=128 T=35 1.04x,
// H=1024 1.06x; LSTM H=1024 B=128 T=8 1.00x), so from kLanesNoPackMaxRows + 1 rows the 3 MB rule
// (m * steps >= 256) decides.
constexpr int64_t kLanesNoPackMaxRows = 64;
//
// From 3 MB, up to kSmallNoPackMaxRowsLarge rows never pack: in the layer (module forward,
// inference, in one process with packing toggled in alternating blocks, 5-7 rounds, median time
// packed / unpacked) the per-call pack of a weight that streams from L3 anyway cost more than its
// steps saved: 1 thread, 8 rows, LSTM H=1024 T=35 1.05x, T=100 1.03x, T=200 0.99x; LSTM H=512
// T=35 1.11x, T=100 1.09x, T=200 1.11x; GRU H=1024 T=35 1.06x, GRU H=512 T=35 1.13x, T=200 1.12x;
// RNN-tanh H=1024 T=35 0.99x; 4 rows LSTM H=1024 T=100 1.10x; 2 threads, 8 rows, LSTM H=1024 T=35
// 1.07x, H=512 1.11x, GRU H=1024 T=200 0.97x. From 12 rows the 256 rule stands (LSTM H=1024 B=12
// T=35 1.00x, H=512 B=15 0.98x, B=16 0.99x). (The standalone table above, bench/small_gemm.py,
// has W hot in cache; in the layer the pack's own traffic weighs more.)
constexpr int64_t kSmallNoPackMaxRowsLarge = 8;
//
// Where the panel GEMM takes the weight (`panels`, RecurrentGemm::panels_ok) and it is at most
// kPanelsQuickMaxBytes, its pack costs a third of MKL's at 3, 5, 6 or 7 rows and its step beats
// gemm_small by more, so packing repays from m * steps >= kPanelsQuickRowSteps and 3 rows
// (bench/small_gemm.py, panel columns: break-even 4-8 steps at 3-7 rows for W 1024 x 256,
// 768 x 256, 256 x 256; 8-16 for 512 x 512; 2 rows 7-20, 1 row never). Above it (LSTM H = 384,
// 2.25 MB) gemm_small is as fast as the panels at up to 4 rows, and the rules above stand.
constexpr int64_t kPanelsQuickMaxBytes = int64_t(1) << 20, kPanelsQuickMinRows = 3, kPanelsQuickRowSteps = 64;
//
// On the AVX2 kernels (!lanes_avx512(): the panels take every packed weight) the same holds for 3
// to 8 rows of a W with K >= kPanelsQuickMinKAvx2 up to kPanelsQuickMaxBytesAvx2, which stays in
// L3: there the batch-lane kernel's 12 rows of W a block stream poorly and the panel step is 25-60%
// faster, its pack costing about 1.3 steps (AMD Zen 2, bench/small_gemm.py, 1 thread, us, two runs,
// panel step / gemm_small / batch lanes, pack: W 1024 x 1024 M=4 114-116 / 156 / -, M=8 225-239 /
// 313-320 / 537-546, pack 245-280). In the layer (module forward, inference, alternating processes,
// 2 rounds, torch.nn / rnnfast without -> with): RNN-tanh H=1024 B=8 T=35 1.15-1.19 -> 1.79x. At
// K = 512 the unpacked kernels are closer (W 2048 x 512 M=8 231-242 / 310 / 273-283) and the layer
// did not gain (LSTM H=512 B=8 T=200 1.48-1.55 / 1.50-1.59x; GRU H=512 B=8 T=35 1.52-1.59 /
// 1.46-1.47x), nor does a W that streams from memory (3072 x 1024, 12 MB: M=8 1898-2047 /
// 1700-1901 / 1810-1832), so not above 8 MB.
constexpr int64_t kPanelsQuickMaxBytesAvx2 = int64_t(8) << 20, kPanelsQuickMinKAvx2 = 1024;
inline bool worth_packing_over_small(int64_t m, int64_t steps, int64_t weight_bytes, int64_t k, bool lanes = false,
                                     bool panels = false) {
  const bool avx2 = panels && !lanes_avx512() && k >= kPanelsQuickMinKAvx2;
  const int64_t quick_bytes = avx2 ? kPanelsQuickMaxBytesAvx2 : kPanelsQuickMaxBytes;
  const int64_t quick_max_rows = avx2 ? kPackMinRows * 2 : kPackMinRows * 2 - 1;
  if (panels && weight_bytes <= quick_bytes && m >= kPanelsQuickMinRows && m <= quick_max_rows) {
    return steps >= kPackMinSteps && m * steps >= kPanelsQuickRowSteps;
  }
  if (m < kPackMinRows || steps < kPackMinSteps) return false;
  if (lanes && weight_bytes >= kSmallMinWeightBytes && m <= kLanesNoPackMaxRows) return false;
  if (weight_bytes >= kSmallMinWeightBytes) return m > kSmallNoPackMaxRowsLarge && m * steps >= 256;
  const bool quick_small = m < 8 || (m < 16 && k >= kSmallLongK);
  return m * steps >= (quick_small ? 128 : 64);
}

// Whether a GEMM may open a parallel region of its own here: more than one intra-op thread, not
// inside one already (a batch split's block) and not in a call that runs serially (SerialScope).
inline bool may_parallelize() { return at::get_num_threads() > 1 && !at::in_parallel_region() && !serial_call(); }

// A step GEMM below kSequentialStepMacs multiply-adds (B x size of W_hh) runs on one thread when the
// loop is not batch-split: MKL's own threads cost more than such a GEMM (2 threads, LSTM H64 B8
// T35 with MKL threading 330 us, single-threaded 241 us); from ~1M multiply-adds they pay (LSTM
// H256 B4 T35 868 us threaded, 1106 us not). The panel GEMM follows the same bound.
constexpr int64_t kSequentialStepMacs = int64_t(1) << 18;

// From this many multiply-adds (M x N x K, ~13 us on one core) a GEMM with a W under the
// 2 x kElemsPerThread bound below is split too, in one block per thread: a cell's step at 2 threads,
// module forward under no_grad, 7 blocks of 1,000 calls, 3 rounds in alternating processes, us a call
// before / after: RNNCell H256 B16 36.6-43.8 / 31.7-35.7, B32 56.6-63.9 / 49.0-65.8; RNNCell H128
// B64 38.0-39.8 / 37.0-43.3; GRUCell H128 B32 49.8-53.9 / 41.4-53.4; LSTMCell H128 B16 40.0-44.1 /
// 33.9-46.6 (the third round of each was on a busy machine).
constexpr int64_t kParallelGemmMacs = int64_t(1) << 20;

// f(n0, n1) over the N columns of a small-batch GEMM with an (N, K) weight: all at once, or split
// over the intra-op threads in blocks of 8 columns when W is large enough to repay a parallel
// region (about 64K elements of W a thread: with 2 threads each core streams half) or the product
// has kParallelGemmMacs multiply-adds; never in chunks smaller than a thread's share.
template <class F>
void for_column_blocks(int64_t M, int64_t N, int64_t K, const F& f) {
  constexpr int64_t kElemsPerThread = int64_t(1) << 16;
  if ((N * K < 2 * kElemsPerThread && M * N * K < kParallelGemmMacs) || N < 16 || !may_parallelize()) {
    f(int64_t(0), N);
    return;
  }
  const int64_t blocks = (N + 7) / 8, nt = at::get_num_threads();
  const int64_t grain = std::max<int64_t>(1, std::min(kElemsPerThread / (8 * K), (blocks + nt - 1) / nt));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) { f(b0 * 8, std::min(N, b1 * 8)); });
}

// f(i0, i1) for each of `chunks` contiguous blocks of n items (a batch split's rows, a GEMM's column
// units), the blocks spread over the intra-op threads, MKL single-threaded inside each.
template <class F>
void for_row_blocks(int64_t chunks, int64_t n, const F& f) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const mkl::SequentialScope sequential;
    for (int64_t ch = c0; ch < c1; ++ch) f(n * ch / chunks, n * (ch + 1) / chunks);
  });
}

// ---- The blocked GEMM (AVX2) ------------------------------------------------------------------
// blas_gemm's float GEMMs of at least kBlockedMinMacs multiply-adds and kBlockedMinRows rows run on
// rnnfast's cache-blocked kernel (gemm_blocked_avx2.cpp) where the batch-lane and panel GEMMs run
// their AVX2 kernels (batch_lanes() && !lanes_avx512(): a CPU without AVX-512F); elsewhere MKL.
// Split over the intra-op threads (outside a parallel region) by rows of C, or by columns when C is
// wider than tall, in whole micro-tiles: the same bits at any thread count. MKL's sgemm reaches
// 30-35 GMAC/s on an AMD Zen 2 core, the blocked kernel 35-40 (`python3 bench/large_gemm.py`, the
// layer's GEMMs for an LSTM with I = H, 1 thread, ms MKL / blocked): weight gradients dGᵀ [X | H | 1]
// H=256 T*B=6400 108 / 88, H=512 T*B=1120 75 / 60, T*B=6400 428 / 357, H=1024 T*B=6400 1561 / 1360;
// dL/dx = dG W_ih H=256 T*B=6400 54.6 / 48.1, H=512 193 / 193, H=1024 765 / 722; at 2 threads
// H=256 T*B=1120 weight gradients 9.8 / 9.2, dL/dx 4.6 / 4.2. Below 256 rows it loses (a step's 16
// to 128 rows against W_hhᵀ: 0.65-0.96x MKL, every call packing all of W), so those stay with MKL
// (and a step with the panel GEMM or gemm_small anyway). In the layer (alternating processes, 2
// rounds, torch.nn / rnnfast, forward+backward, before -> after): LSTM H=512 B=32 T=200 1 thread
// 0.86-0.92 -> 0.94-0.99x, H=1024 B=8 T=35 2 threads 0.77-0.79 -> 0.82-0.86x, H=256 B=128 T=35
// 2 threads 0.94-1.00 -> 1.05-1.06x; GRU H=1024 B=32 T=35 1.37-1.42 -> 1.49-1.54x.
constexpr int64_t kBlockedMinMacs = int64_t(1) << 22, kBlockedMinRows = 256;
inline bool blocked_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                         const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#if RNNFAST_BATCH_LANES
  if (!batch_lanes() || lanes_avx512() || m < kBlockedMinRows || m * n * k < kBlockedMinMacs) return false;
  RECORD_FUNCTION("rnnfast::blocked_gemm", std::vector<c10::IValue>());  // tests/test_blocked_gemm.py
  const int64_t nt = may_parallelize() ? at::get_num_threads() : 1;
  if (nt <= 1) {
    avx2::gemm_blocked(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
    return true;
  }
  const bool by_rows = m >= n;
  const int64_t unit = by_rows ? 6 : 16, units = ((by_rows ? m : n) + unit - 1) / unit;
  const int64_t chunks = std::min(nt, units);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t u0 = units * ch / chunks * unit, u1 = std::min(units * (ch + 1) / chunks * unit, by_rows ? m : n);
      if (u1 <= u0) continue;
      if (by_rows) {
        avx2::gemm_blocked(trans_a, trans_b, u1 - u0, n, k, trans_a ? a + u0 : a + u0 * lda, lda, b, ldb, beta,
                           c + u0 * ldc, ldc);
      } else {
        avx2::gemm_blocked(trans_a, trans_b, m, u1 - u0, k, a, lda, trans_b ? b + u0 * ldb : b + u0, ldb, beta,
                           c + u0, ldc);
      }
    }
  });
  return true;
#else
  return false;
#endif
}

// ---- Unpacked A · W over threads by columns ---------------------------------------------------
// C (M, N) = beta C + A (M, K) · W (K, N), W row-major and not transposed: a step's dL/dh_{t-1} =
// dG_t W_hh where W_hh is not packed (a cell's step, a short sequence) and dL/dx = dG W_ih. For
// a few to 128 rows MKL's own threading of this product often scales poorly on 2 threads; each
// thread's block of columns as one sequential BLAS call is faster there. Measured on the 2-core
// box, 2 threads, in one C++ loop (median of 9 blocks), time MKL threaded / column blocks, rows M:
//   N = 256:  K 256 M=24 1.37 M=32 1.39 M=128 1.10 (M=16, 1.0M MACs: 0.96); K 768 M=8 2.13
//             M=32 1.43; K 1024 M=8 1.98 M=32 1.29 M=128 1.06
//   N = 128:  K 512 M=24 1.57 M=64 1.31 (K 384 M=24, 1.2M MACs: 0.92)
//   N = 512:  K 512 M=8 0.98 M=16 0.98 M=24 1.42 M=32 1.42 M=128 1.11; K 2048 M=8 0.97 M=32 1.17
//   N = 384:  K 1152 M=8-32 0.99-1.01, M=64 1.16; K 384 M=32 0.98
//   N = 768:  K 768 M=4 2.50 M=8 1.78 M=32 1.26 M=128 1.07; K 3072 M=8 1.54 M=32 1.18
//   N = 1024: K 1024 M=8 1.27 M=16 1.00 M=32 0.96 M=128 0.83; K 4096 M=8 1.59 M=32 1.05 M=64 0.89
// and M = 1 (512 x 2048: 0.53, MKL's threaded GEMV) never. So: 4 to 128 rows and at least
// kColumnSplitMinMacs multiply-adds; N up to 256 always, N up to 512 from 24 rows, N up to 768
// always, wider only up to 16 rows (MKL's own blocking wins past that).
constexpr int64_t kColumnSplitMinRows = 4, kColumnSplitMaxRows = 128, kColumnSplitMinMacs = int64_t(3) << 19;
inline bool splits_columns(int64_t M, int64_t N, int64_t K) {
  if (M < kColumnSplitMinRows || M > kColumnSplitMaxRows || N < 64 || M * N * K < kColumnSplitMinMacs ||
      !may_parallelize()) {
    return false;
  }
  if (N > 768) return M <= 16;
  if (N > 512) return true;
  return N <= 256 || M >= 24;
}

// blas_gemm(false, false, ...) with the columns split over the intra-op threads where
// splits_columns says so (blocks of a multiple of 16 columns, MKL sequential inside each);
// otherwise one call. float only (measured); double keeps MKL's threading.
template <typename T_>
bool blas_gemm_nn(int64_t m, int64_t n, int64_t k, const T_* a, int64_t lda, const T_* w, int64_t ldw, T_ beta, T_* c,
                  int64_t ldc) {
  if (!std::is_same_v<T_, float> || !splits_columns(m, n, k)) {
    return blas_gemm<T_>(false, false, m, n, k, a, lda, w, ldw, beta, c, ldc);
  }
  if (!blas_args_ok<T_>(false, false, m, n, k, lda, ldw, ldc)) return false;  // then no block is refused either
  const int64_t units = (n + 15) / 16;  // blocks of whole 16-column units, the last one short
  for_row_blocks(std::min<int64_t>(at::get_num_threads(), n / 64), units, [&](int64_t u0, int64_t u1) {
    const int64_t n0 = u0 * 16, n1 = std::min(n, u1 * 16);
    TORCH_INTERNAL_ASSERT(blas_gemm<T_>(false, false, m, n1 - n0, k, a, lda, w + n0, ldw, beta, c + n0, ldc));
  });
  return true;
}

// gemm_small_rows over all N columns of C (for_column_blocks). When K is not a multiple of 16: M <=
// kSmallMaxRows (A's tail is copied to the stack), and the 16 floats ending at column K of every
// row of W must be readable: K >= 16, or W a row of small_k_padded's copy (see there).
inline void gemm_small(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc, int64_t M,
                       int64_t N, int64_t K, bool accumulate) {
  const int64_t K16 = K / 16 * 16, rem = K - K16;
  alignas(64) float a_tail[kSmallMaxRows * 16];
  SmallTail tail;
  if (rem) {
    TORCH_CHECK(M <= kSmallMaxRows, "rnnfast: internal error: gemm_small with K = ", K, " takes at most ",
                kSmallMaxRows, " rows (got ", M, ")");
    for (int64_t m = 0; m < M; ++m) {
      float* row = a_tail + m * 16;
      std::memset(row, 0, size_t(16 - rem) * sizeof(float));
      std::memcpy(row + 16 - rem, a + m * lda + K16, size_t(rem) * sizeof(float));
    }
    tail.a = a_tail;
    tail.w_col = K - 16;
    tail.rem = int(rem);
    for (int j = 0; j < 16; ++j) tail.keep[j] = j >= 16 - rem ? -1 : 0;
  }
  for_column_blocks(M, N, K, [&](int64_t n0, int64_t n1) {
    gemm_small_rows(w + n0 * ldw, ldw, a, lda, c + n0, ldc, M, n1 - n0, K16, accumulate, tail);
  });
}

// ---- The batch-lane GEMM (gemm_avx512.h) ------------------------------------------------------
// From kLanesMinRows to kLanesMaxRows rows of A (kLanesMaxRowsLarge for a W of 3 MB or more), where
// the CPU has AVX-512F, the unpacked GEMM runs the batch-lane kernel instead of gemm_small or MKL: the rows of A in vector lanes, W read in
// place, no lane sums. Measured in a standalone loop (1 thread, us per call, batch lanes / gemm_small
// / MKL's unpacked at::mm from the table above):
//   W 256 x 64    M=12 4.5 / 7.2     M=16 4.6 / 8.9 / 6.4     M=32 8.0 / 16.3 / 9.5
//   W 1024 x 256  M=12 61 / 82       M=16 64 / 87             M=32 110 / 192         M=64 216 / 383
//   W 768 x 256   M=16 47 / 67 / 81  M=32 83 / 137 / 102      M=64 160 / 291 / 209
//   W 2048 x 512  M=16 302 / 470 / 556  M=32 505 / 838 / 781  M=64 934 / 1556 / 1221
//   W 4096 x 1024 M=16 1273 / 1841 / 2370  M=32 1774 / 3136 / 3188  M=64 3705 / 5777 / 4833
// (~75 GMAC/s from 32 rows, the core's FMA peak; gemm_small 30-48). Below 16 rows the lanes are
// partly padding (M=8: 28-34 GMAC/s). In the layer (module forward at T = 1, inference, 1 thread,
// in one process with the kernel toggled in alternating blocks, 11 rounds, time without / with):
// LSTM H=64 B=16 1.19x, B=32 1.19x; H=256 B=16 1.07x, B=32 1.19x, B=64 1.18x; H=512 B=32 1.24x,
// B=128 1.09x; GRU H=1024 B=32 1.27x, B=128 1.12x; RNN-tanh H=256 B=16 1.08x; at T = 8, B = 8 (the
// 64-row input projection) LSTM H=64 1.07x, H=256 1.10x. Not taken: 12 rows (LSTM H=64 0.82x,
// H=256 0.94x) and 128 rows of a W under 3 MB (LSTM H=256 B=128 0.95x, where MKL's copy of W is
// spread over enough rows).
constexpr int64_t kLanesMinRows = 16, kLanesMaxRows = 64, kLanesMaxRowsLarge = 128;
// On AVX2 (gemm_avx2.cpp) a vector holds 8 rows, so 8 rows fill one and the kernel takes them, with
// 12 rows of W a block: standalone on an AMD Zen 2 core (bench/small_gemm.py, 1 thread, us, batch
// lanes / gemm_small / MKL): W 1024 x 256 M=8 75 / 87 / 138, M=15 115 / 171 / 224; W 1536 x 512
// M=8 203 / 254 / 354; W 400 x 100 M=8 13.8 / 16.9 / 14.5; W 256 x 64 M=8 6.5 / 6.4 / 6.7.
constexpr int64_t kLanesMinRowsAvx2 = 8;

// ---- The panel GEMM (gemm_avx512.h) ---------------------------------------------------------
// Where a weight repays packing (worth_packing, worth_packing_over_small), on a CPU with AVX-512F,
// W is packed into rnnfast's own panels and every step runs the panel GEMM instead of MKL's
// cblas_sgemm_compute, where that measures faster (RecurrentGemm::panels_ok): K <= kPanelsMaxK;
// a narrow W (N <= kPanelsNarrowMaxN columns of C, at most kPanelsNarrowMaxBytes); at most
// kPanelsMaxRows rows a step; or 9-15 rows for K <= kPanelsOddRowsMaxK. Measured in a standalone
// loop (1 thread, us per call, MKL packed compute / panel GEMM; the packs themselves cost about the
// same, 1.6-2.2 / 1.7-1.8 us at 256 x 64; `python3 bench/small_gemm.py` prints both, its packed
// and panel step columns):
//   W 256 x 64   M=4 1.11 / 0.67   M=8 1.72 / 1.30   M=32 5.73 / 5.03   M=128 20.8 / 19.9
//   W 192 x 64   M=8 1.39 / 0.99   M=32 4.43 / 3.78
//   W 512 x 128  M=8 4.95 / 4.76   M=20 12.6 / 11.8  M=32 20.3 / 19.6   M=128 78.2 / 76.7
// MKL's compute copies A and sets up on every call, which weighs most where K is short. For longer
// K (a K x 64 panel no longer fits in L1) it depends on the rows and the width of W, us per step
// (per pack), MKL / panels (N x K as op(W)ᵀ; 256 x 1024 is an LSTM H=256 backward's dG W_hh):
//   W 1024 x 256 M=3 11.8 (151) / 7.9 (45)   M=7 18.3 (152) / 18.2 (44)   M=8 18.3 / 19.8  M=32 78.5 / 81.7
//   W 768 x 256  M=3 8.7 (105) / 6.3 (24)    M=7 13.6 (105) / 12.1 (24)   M=8 14.9 / 13.6  M=32 61.4 / 61.7
//   W 1536 x 384 M=3 63.0 (538) / 46.2 (185) M=7 76.8 (532) / 71.5 (185)  M=8 59.7 / 73.3  M=16 109 / 122
//   W 2048 x 512 M=3 163 (4237) / 139 (336)  M=6 213 (3787) / 150 (349)   M=8 143 / 181    M=32 374 / 403
//   W 512 x 512  M=3 10.0 (142) / 7.8 (50)   M=7 18.7 (143) / 16.1 (50)   M=8 18.7 / 17.5  M=32 83.2 / 80.6
//   W 256 x 1024 M=3 13.3 (179) / 7.8 (53)   M=7 19.9 (170) / 16.3 (59)   M=8 19.7 / 17.7  M=32 78.6 / 71.1
//   W 256 x 768  M=3 8.0 (139) / 5.8 (28)    M=8 14.6 / 13.1  M=32 58.0 / 52.3
//   W 256 x 256  M=3 2.7 (31) / 2.0 (7)      M=8 5.3 / 4.4    M=32 21.9 / 19.7
//   W 128 x 512  M=3 2.9 (27) / 2.1 (7)      M=8 5.9 / 4.9    M=32 23.7 / 20.7
// MKL packs 3-4x slower (10x from 4 MB) for 1, 3, 5, 6 or 7 rows than for 2, 4 or 8 and more, and
// up to 7 rows its step is slower too, at every W measured (1024 x 1024 and 2048 x 512 to 6 rows).
// From 8 rows its blocking of a wide W wins (N >= 1024; weights from 3 MB never pack at up to 8
// rows, worth_packing_over_small), except between its multiples of 8 while K <= 256 (W 1024 x 256
// M=9 24.6-26.1 / 20.0-22.5, M=12 27.9-31.2 / 26.3-28.2, M=13 37.1-37.9 / 32.6-33.9; in the layer,
// module forward, alternating processes, time panels / MKL, LSTM H=256 T=35 1 thread B=10 0.95x,
// B=12 0.95x, B=13 0.95x, forward+backward B=10 0.97x; 2 threads B=10 0.87x, B=13 0.87x; at
// K = 384 1.02x (LSTM H=384 B=12), so not there). For K <= 384 both kernels give the same bits
// (each C[m, n] one FMA chain over k in order): only K > 384 moves results, by rounding.
constexpr int64_t kPanelsMaxK = 128, kPanelsMaxRows = 7, kPanelsOddRowsMaxK = 256;
constexpr int64_t kPanelsNarrowMaxN = 512, kPanelsNarrowMaxBytes = int64_t(1) << 20;
// On AVX2 (gemm_avx2.cpp: 6 rows against 16 columns at a time) the panels take every weight that
// repays packing, at any row count: on an AMD Zen 2 core MKL's packed step reaches 20-33 GMAC/s
// and the panel step 33-46 (bench/small_gemm.py, 1 thread, us, panel / MKL packed step, noisy
// machine, best of 2-3 runs): W 1024 x 256 M=32 199 / 281, M=64 425 / 569, M=128 773 / 1022;
// W 2048 x 512 M=32 727 / 1205, M=64 1564 / 2206, M=128 3064 / 4011; W 1024 x 1024 M=64 1647 / 2334,
// M=128 3280 / 4218; W 4096 x 1024 M=64 9349 / 17164, M=128 16438 / 27567; its pack is 5-7x
// cheaper too (4096 x 1024: 3.0 / 20.0 ms). In the layer (module forward, inference, alternating
// processes, 2 rounds, torch.nn / rnnfast before -> after): LSTM H=1024 B=128 T=8 1 thread
// 0.89-1.01 -> 0.98-0.99x, 2 threads 0.79-0.97 -> 1.04-1.06x; H=512 B=128 T=35 0.86-0.91 ->
// 0.91-1.00x; H=256 B=128 T=35 2 threads 0.87 -> 0.91-1.05x; GRU H=512 B=128 T=35 forward+backward
// 2 threads 1.09-1.10 -> 1.20x. (Session 36 had bounded it to 32 rows of at most 3 MB from single
// runs that this noisy box did not reproduce; the pack decision itself, worth_packing_over_small,
// already keeps 8 rows of a 16 MB W unpacked.) So panels_ok is always true on the AVX2 kernels.

// The packed A of this thread's batch-lane GEMM: 64-byte aligned, grown as needed, kept.
inline float* lanes_buffer(int64_t floats) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> buf;
  thread_local int64_t capacity = 0;
  if (floats > capacity) {
    const size_t bytes = (size_t(floats) * sizeof(float) + 63) / 64 * 64;
    buf.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(buf, "rnnfast: out of memory for a ", bytes, "-byte GEMM buffer");
    capacity = floats;
  }
  return buf.get();
}

// C (M, N) = [C +] A (M, K) · Wᵀ on the batch-lane kernel (only where batch_lanes()): A packed
// once by this thread, the columns split over the intra-op threads (for_column_blocks).
inline void gemm_lanes(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc, int64_t M,
                       int64_t N, int64_t K, bool accumulate) {
#if RNNFAST_BATCH_LANES
  float* at = lanes_buffer(batch_lanes_pack_floats(M, K));
  batch_lanes_pack(a, lda, M, K, at);
  for_column_blocks(M, N, K, [&](int64_t n0, int64_t n1) {
    batch_lanes_gemm(w, ldw, at, M, K, c, ldc, n0, n1, accumulate);
  });
#else
  TORCH_CHECK(false, "rnnfast: internal error: the batch-lane GEMM is not in this build");
#endif
}

// C (M, N) = [C +] A (M, K) · Wᵀ for more rows than a step has (the input projection of a sequence)
// on the batch-lane kernel, where it runs its AVX2 kernels (RecurrentGemm::run, unpacked, K >=
// kLanesBlockedMinK): blocks of kLanesBlockRows rows, each packed by the thread that multiplies it
// against all of W (read in place, 6 rows at a time), the blocks split over the intra-op threads.
// MKL's GEMMs on an AMD Zen 2 core reach ~27 GMAC/s (LSTM I = H = 400 B = 48 T = 35: the projection
// was 38-41 ms of the layer's 87-92 ms). Module forward, inference / no_grad, alternating processes
// (2 rounds), torch.nn / rnnfast without -> with: LSTM I = H = 400 B = 48 T = 35 0.75-0.79x ->
// 0.86-0.88x; LSTM H = 256 B = 32 T = 35 0.89-0.96x -> 1.00-1.02x; GRU H = 512 B = 32 T = 35 2 threads
// 1.45-1.49x -> 1.49-1.61x; RNN H = 1024 B = 128 T = 35 1.04-1.05x -> 1.11-1.15x. At K = 28 (d2l's
// one-hot) it lost (LSTM d2l-256 forward+backward 0.97x -> 0.92-0.94x), so K >= 64. On AVX-512 MKL's
// GEMMs run at the core's peak and keep it. Each C[m, n] is one FMA chain over k, as everywhere on
// this kernel.
constexpr int64_t kLanesBlockRows = 64, kLanesBlockedMinK = 64;
inline void gemm_lanes_blocked(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                               int64_t M, int64_t N, int64_t K, bool accumulate) {
#if RNNFAST_BATCH_LANES
  const int64_t blocks = (M + kLanesBlockRows - 1) / kLanesBlockRows;
  auto run = [&](int64_t b0, int64_t b1) {
    float* at = lanes_buffer(batch_lanes_pack_floats(kLanesBlockRows, K));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t m0 = b * kLanesBlockRows, m = std::min(kLanesBlockRows, M - m0);
      batch_lanes_pack(a + m0 * lda, lda, m, K, at);
      batch_lanes_gemm(w, ldw, at, m, K, c + m0 * ldc, ldc, 0, N, accumulate);
    }
  };
  if (blocks < 2 || !may_parallelize()) {
    run(0, blocks);
  } else {
    at::parallel_for(0, blocks, 1, run);
  }
#else
  TORCH_CHECK(false, "rnnfast: internal error: the batch-lane GEMM is not in this build");
#endif
}

// Whether C (M, N) = [C +] A (M, K) · Wᵀ can run on gemm_small: float32 throughout, W contiguous
// (N, K) with K >= 16 (small_weight_ok: fixed for a call; K not a multiple of 16 takes fewer rows,
// small_tail_max_rows), A and C with unit column
// stride (small_rows_ok; their row strides are passed as they are). How many rows it takes is
// RecurrentGemm::takes_small's.
inline bool small_weight_ok(const at::Tensor& w, bool transpose) {
  return transpose && w.scalar_type() == at::kFloat && w.is_contiguous() && w.size(1) >= 16;
}
// K below 16 (hidden sizes 1..15): gemm_small runs on a copy of W with 16 floats a row, W's K
// columns last (small_k_padded), made once per RecurrentGemm for a W of at most kSmallPadMaxRows
// rows and only where a step takes at most small_tail_max_rows(K) = 2 rows (then MKL's per-step
// call, ~1 us through the tensor path, was most of the step: LSTM H = 1..8, B = 1, T = 100 forward
// 0.90-0.93x torch.nn).
constexpr int64_t kSmallPadMaxRows = 1024;
inline bool small_pad_ok(const at::Tensor& w, bool transpose, int64_t max_m) {
  return transpose && w.scalar_type() == at::kFloat && w.is_contiguous() && w.size(1) >= 1 && w.size(1) < 16 &&
         w.size(0) <= kSmallPadMaxRows && max_m >= 1 && max_m <= small_tail_max_rows(w.size(1));
}
// (N, 16): row n holds 16 - K zeros, then W[n, 0..K).
inline at::Tensor small_k_padded(const at::Tensor& w) {
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor t = at::empty({N, 16}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = t.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < 16 - K; ++j) dst[n * 16 + j] = 0.f;
    for (int64_t j = 0; j < K; ++j) dst[n * 16 + 16 - K + j] = src[n * K + j];
  }
  return t;
}
// The weight side of the batch-lane kernel's conditions: any K >= 1.
inline bool lanes_weight_ok(const at::Tensor& w, bool transpose) {
  return RNNFAST_BATCH_LANES && transpose && w.scalar_type() == at::kFloat && w.is_contiguous() && w.size(1) > 0;
}
inline bool small_rows_ok(const at::Tensor& a, const at::Tensor& c) {
  return a.scalar_type() == at::kFloat && c.scalar_type() == at::kFloat &&
         (a.size(1) <= 1 || a.stride(1) == 1) && (c.size(1) <= 1 || c.stride(1) == 1);
}

// C (M, N) = [C +] A (M, K) · op(W), op(W) = Wᵀ (transpose) or W. A and C follow the rule above
// (any strides; A is copied if BLAS cannot read it); M = A.size(0) may differ per call, N and K are
// fixed by W. `steps`: how many GEMMs this object will run with up to max_m rows (the sequence
// length); W is packed only when that repays: worth_packing(max_m, steps) against MKL's unpacked
// GEMM, worth_packing_over_small where gemm_small would take max_m rows. The default keeps the old rule
// (pack whenever the packed API can), for callers that do not know their step count.
class RecurrentGemm {
 public:
  static constexpr int64_t kUnknownSteps = INT32_MAX;

  // block_rows: the rows a step's GEMM runs at a time where the caller splits the batch over threads
  // (backend.h batch_split_rows; 0: max_m), by which the packed kernel is picked (panels_ok).
  RecurrentGemm(const at::Tensor& w, bool transpose, int64_t max_m, int64_t steps = kUnknownSteps,
                int64_t block_rows = 0)
      : w_(w),
        transpose_(transpose),
        small_(small_weight_ok(w, transpose)),
        lanes_(lanes_weight_ok(w, transpose) && batch_lanes()) {
    n_ = transpose ? w.size(0) : w.size(1);
    k_ = transpose ? w.size(1) : w.size(0);
    const mkl::Api& a = mkl::api();
    if (small_pad_ok(w, transpose, max_m)) {  // K < 16: gemm_small on a padded copy (max_m <= 2 never packs)
      padded_ = small_k_padded(w);
      small_ = true;
    }
    const bool fits = max_m > 0 && n_ > 0 && k_ > 0 && max_m < INT32_MAX && n_ < INT32_MAX && k_ < INT32_MAX;
    // the kernel a pack would be for, by the rows a step runs at once
    const bool panels = panels_ok(block_rows > 0 ? std::min(block_rows, max_m) : max_m);
    const bool repays =
        steps == kUnknownSteps ||
        (takes_small(max_m) ? worth_packing_over_small(max_m, steps, weight_bytes(), k_, takes_lanes(max_m), panels)
                            : worth_packing(max_m, steps));
    if (w.scalar_type() == at::kFloat && w.is_contiguous() && fits && repays && (panels || a.ok())) {
      // a profiler scope of its own: tests/test_small_sizes.py checks which calls pack
      RECORD_FUNCTION("rnnfast::pack_recurrent_weight", std::vector<c10::IValue>());
      if (panels) {
        pack_panels(w, transpose);
      } else {
        // W (rows, cols) contiguous: row-major with ld = cols, as the rule asks
        TORCH_CHECK(w.size(1) >= 1 && w.size(1) <= INT32_MAX, "rnnfast: BLAS pack of W ", w.sizes(),
                    ": leading dimension ", w.size(1), " out of range");
        const size_t bytes = a.get_size(mkl::kBMatrix, int(max_m), int(n_), int(k_));
        packed_ = core::scratch_empty({int64_t(bytes / sizeof(float)) + 16}, w.options());  // reused: scratch.h
        a.pack(mkl::kRowMajor, mkl::kBMatrix, transpose ? mkl::kTrans : mkl::kNoTrans, int(max_m), int(n_),
               int(k_), 1.f, w.const_data_ptr<float>(), int(w.size(1)), packed_.data_ptr<float>());
      }
    }
  }

  bool packed() const { return packed_.defined(); }
  // Size in bytes of op(W) (what every call streams through the cache).
  int64_t weight_bytes() const { return n_ * k_ * int64_t(w_.element_size()); }
  // Multiply-adds per row of A.
  int64_t row_macs() const { return n_ * k_; }

  // Packed path only (packed() is true): C rows [0, m) (row stride ldc) = [C +] A rows · op(W).
  // Safe to call from several threads at once on disjoint rows of C.
  void run_rows(const float* a, int64_t lda, float* c, int64_t ldc, int64_t m, bool accumulate) const {
    if (m <= 0) return;
    if (panels_) {
      run_panels(a, lda, c, ldc, m, accumulate);
      return;
    }
    // a single row's stride is never read: the rule's ld for it (see blas_ld)
    if (m == 1) lda = std::max<int64_t>(1, k_), ldc = std::max<int64_t>(1, n_);
    check_gemm_args(m, n_, k_, lda, ldc);
    mkl::api().compute(mkl::kRowMajor, mkl::kNoTrans, mkl::kPacked, int(m), int(n_), int(k_), a, int(lda),
                       packed_.const_data_ptr<float>(), int(n_), accumulate ? 1.f : 0.f, c, int(ldc));
  }

  // The per-step form of run on raw pointers (m rows, row strides lda and ldc, unit column
  // strides): the packed GEMM, or gemm_small when it takes m rows; false when neither does (then
  // use run). A step's operands are rows of the loop's own buffers, so no tensor views: through
  // run, a step paid a select() and run's layout checks, ~1-2 us (LSTM H64 B32 T200: 201 select()
  // a call, next to ~7 us of GEMM a step).
  bool run_ptr(const float* a, int64_t lda, float* c, int64_t ldc, int64_t m, bool accumulate) const {
    if (packed()) {
      run_rows(a, lda, c, ldc, m, accumulate);
      return true;
    }
    if (run_small(a, lda, c, ldc, m, accumulate)) return true;
    // otherwise BLAS on W as it is (what run's at::mm_out would call, without its views)
    if (w_.stride(1) != 1) return false;
    const int64_t ldw = std::max<int64_t>(1, w_.stride(0));
    const float beta = accumulate ? 1.f : 0.f;
    return transpose_ ? blas_gemm<float>(false, true, m, n_, k_, a, lda, w_.const_data_ptr<float>(), ldw, beta, c, ldc)
                      : blas_gemm_nn<float>(m, n_, k_, a, lda, w_.const_data_ptr<float>(), ldw, beta, c, ldc);
  }

  // m rows (row strides lda, ldc; unit column strides): C = [C +] A · op(W) by gemm_small when it
  // takes m rows (returns false otherwise: use run). No tensors, so no view ops: the per-step path
  // of a small batch, and run's own small case.
  bool run_small(const float* a, int64_t lda, float* c, int64_t ldc, int64_t m, bool accumulate = false) const {
    if (!takes_small(m)) return false;
    if (takes_lanes(m)) {
      gemm_lanes(w_.const_data_ptr<float>(), w_.size(1), a, lda, c, ldc, m, n_, k_, accumulate);
    } else if (padded_.defined()) {  // row n's K columns end at 16: W's "columns" start 16 - K in
      gemm_small(padded_.const_data_ptr<float>() + (16 - k_), 16, a, lda, c, ldc, m, n_, k_, accumulate);
    } else {
      gemm_small(w_.const_data_ptr<float>(), w_.size(1), a, lda, c, ldc, m, n_, k_, accumulate);
    }
    return true;
  }

  void run(const at::Tensor& a_, at::Tensor& c, bool accumulate) const {
    if (packed_.defined() && a_.size(0) > 0) {
      TORCH_CHECK(blas_layout_ok(c), "rnnfast: internal error: a GEMM result of shape ", c.sizes(), " and strides ",
                  c.strides(), " is not a BLAS matrix");
      const at::Tensor a = blas_operand(a_);
      run_rows(a.const_data_ptr<float>(), blas_ld(a), c.data_ptr<float>(), blas_ld(c), a.size(0), accumulate);
      return;
    }
    const int64_t m = a_.size(0);
    if (small_rows_ok(a_, c) && run_small(a_.const_data_ptr<float>(), m > 1 ? a_.stride(0) : k_, c.data_ptr<float>(),
                                          m > 1 ? c.stride(0) : n_, m, accumulate)) {
      return;
    }
    // On AVX2, a W under kSmallMinWeightBytes (the forward input projection of I <= ~400): the
    // blocked GEMM where it takes the product (blocked_gemm). Layer, module forward, alternating
    // processes, 2 rounds, torch.nn / rnnfast, the batch-lane blocks below -> this: LSTM H=256 B=32
    // T=35 1.05 -> 1.09-1.13x, I=H=400 B=48 no_grad 0.96-0.99 -> 0.99-1.03x, H=256 B=128 T=200 2
    // threads 1.01 -> 1.04-1.08x, RNN-tanh H=512 B=128 1.30-1.33 -> 1.36-1.37x (GRU H=256 B=32
    // forward+backward 2 threads 1.75-1.85 / 1.74x). A larger W stays on those blocks: LSTM H=1024
    // B=128 T=35 2 threads was 1.01 -> 0.95-0.96x with it (each thread packing all 16 MB of W).
    if (lanes_ && !lanes_avx512() && weight_bytes() < kSmallMinWeightBytes && transpose_ && small_rows_ok(a_, c) &&
        blocked_gemm(false, true, m, n_, k_, a_.const_data_ptr<float>(), m > 1 ? a_.stride(0) : k_,
                     w_.const_data_ptr<float>(), w_.stride(0), accumulate ? 1.f : 0.f, c.data_ptr<float>(),
                     m > 1 ? c.stride(0) : n_)) {
      return;
    }
    if (lanes_ && m > kLanesMaxRows && k_ >= kLanesBlockedMinK && !lanes_avx512() && small_rows_ok(a_, c)) {
      gemm_lanes_blocked(w_.const_data_ptr<float>(), w_.size(1), a_.const_data_ptr<float>(), a_.stride(0),
                         c.data_ptr<float>(), c.stride(0), m, n_, k_, accumulate);
      return;
    }
    const at::Tensor op_w = transpose_ ? w_.t() : w_;
    if (accumulate) {
      c.addmm_(a_, op_w);
    } else {
      at::mm_out(c, a_, op_w);
    }
  }

  // Whether m rows run on run_small's kernels: the batch-lane GEMM (takes_lanes) or gemm_small (see
  // kSmallRows; small_weight_ok), W unpacked. (run_small with such m always runs; the batch split
  // relies on it.)
  bool takes_small(int64_t m) const {
    if (packed_.defined() || m < 1) return false;
    if (takes_lanes(m)) return true;
    if (!small_ || m > kSmallMaxRows) return false;
    if (k_ % 16 != 0) return m <= small_tail_max_rows(k_);
    return m <= kSmallRows || (m <= kSmallRowsLongK && k_ >= kSmallLongK) || (m <= kSmallRowsNarrow && n_ <= kSmallNarrowN) ||
           (m <= kSmallRowsLarge && weight_bytes() >= kSmallMinWeightBytes);
  }

 private:
  at::Tensor w_, packed_;
  at::Tensor padded_;  // small_k_padded(w_) where K < 16 and gemm_small takes the steps (small_pad_ok)
  bool transpose_;
  // m rows run on the batch-lane kernel (run_small's choice; packed_ is checked by the callers)
  bool takes_lanes(int64_t m) const {
    return lanes_ && m >= (lanes_avx512() ? kLanesMinRows : kLanesMinRowsAvx2) &&
           m <= (weight_bytes() >= kSmallMinWeightBytes ? kLanesMaxRowsLarge : kLanesMaxRows);
  }

  // Whether a weight that repays packing for max_m rows goes to the panel GEMM: AVX-512F (the
  // batch_lanes() switch, shared by rnnfast's AVX-512 GEMMs) and one of kPanelsMaxK, a narrow W
  // (kPanelsNarrowMaxN, kPanelsNarrowMaxBytes), kPanelsMaxRows, kPanelsOddRowsMaxK (see there); on
  // the AVX2 kernels (!lanes_avx512()) every weight.
  bool panels_ok(int64_t max_m) const {
    const bool narrow = n_ <= kPanelsNarrowMaxN && weight_bytes() <= kPanelsNarrowMaxBytes;
    const bool odd_rows = max_m <= kPanelsMaxRows || (max_m < 16 && max_m != 8 && k_ <= kPanelsOddRowsMaxK);
    return RNNFAST_BATCH_LANES && (k_ <= kPanelsMaxK || narrow || odd_rows || !lanes_avx512()) && batch_lanes();
  }
  // op(W) into the panel GEMM's panels (gemm_avx512.h), 64-byte aligned inside packed_ (panels_);
  // split over the intra-op threads from kParallelPackElements (may_parallelize).
  // From ~13 us of packing (128K elements) a pack split over 2 threads repays its fork and join,
  // and more: each thread packs the panels that at::parallel_for's same split gives it in every
  // step (run_panels), so they are in its own core's L2. Module forward, inference, 2 threads,
  // alternating processes, 6 rounds, time against MKL's pack and steps, serial / split pack: LSTM
  // H=256 B=7 T=20 1.06x / 0.84x, B=3 T=35 1.04x / 0.87x, B=5 T=35 1.00x / 0.87x.
  static constexpr int64_t kParallelPackElements = int64_t(1) << 17;
  void pack_panels(const at::Tensor& w, bool transpose) {
#if RNNFAST_BATCH_LANES
    RECORD_FUNCTION("rnnfast::pack_panels", std::vector<c10::IValue>());  // tests/test_panels.py
    packed_ = core::scratch_empty({panels_pack_floats(n_, k_) + 16}, w.options());
    const auto p = reinterpret_cast<std::uintptr_t>(packed_.data_ptr<float>());
    panels_ = reinterpret_cast<float*>((p + 63) / 64 * 64);
    const float* src = w.const_data_ptr<float>();
    const int64_t ldw = w.size(1), panels = (n_ + kPanelCols - 1) / kPanelCols;
    if (panels < 2 || n_ * k_ < kParallelPackElements || !may_parallelize()) {
      panels_pack(src, ldw, n_, k_, transpose, panels_);
      return;
    }
    // a range of whole panels is packed as a weight of its own: its columns of op(W) (rows of W
    // when transposed) into its panels
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      const int64_t n0 = p0 * kPanelCols, cols = std::min(n_, p1 * kPanelCols) - n0;
      panels_pack(transpose ? src + n0 * ldw : src + n0, ldw, cols, k_, transpose, panels_ + n0 * k_);
    });
#else
    (void)w, (void)transpose;
#endif
  }
  // m rows on the panel GEMM, its panels split over the intra-op threads from kSequentialStepMacs
  // multiply-adds (may_parallelize: never inside a batch split's block or a serial call).
  void run_panels(const float* a, int64_t lda, float* c, int64_t ldc, int64_t m, bool accumulate) const {
#if RNNFAST_BATCH_LANES
    const int64_t panels = (n_ + kPanelCols - 1) / kPanelCols;
    if (panels < 2 || m * n_ * k_ < kSequentialStepMacs || !may_parallelize()) {
      panels_gemm(a, lda, panels_, k_, c, ldc, m, 0, n_, accumulate);
      return;
    }
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      panels_gemm(a, lda, panels_, k_, c, ldc, m, p0 * kPanelCols, std::min(n_, p1 * kPanelCols), accumulate);
    });
#else
    (void)a, (void)lda, (void)c, (void)ldc, (void)m, (void)accumulate;
    TORCH_CHECK(false, "rnnfast: internal error: the panel GEMM is not in this build");
#endif
  }

  float* panels_ = nullptr;  // the panel GEMM's packed weight (packed_ holds it), else null
  bool small_;  // the weight side of gemm_small's conditions (small_weight_ok), decided once per call
  bool lanes_;  // the batch-lane kernel's: lanes_weight_ok and batch_lanes(), decided once per call
  int64_t n_ = 0, k_ = 0;
};

}  // namespace cpu
}  // namespace rnnfast
