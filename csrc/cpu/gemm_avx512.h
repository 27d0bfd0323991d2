// The batch-lane GEMM (gemm_avx512.cpp; gemm_avx2.cpp on CPUs without AVX-512F, 8 lanes, the same
// packed layouts and numerics; gemm_lanes.cpp picks one per call by lanes_avx512()): C (M, N) =
// [C +] A (M, K) · Wᵀ with W (N, K) read in place, the rows of A in the 16 lanes of AVX-512 vectors. For the unpacked GEMMs of 16 rows and
// more (blas.h RecurrentGemm::run_small): one row of W is broadcast one element at a time against
// 16 or 32 rows of A at once, so every FMA is a full vector and no lane ever needs summing, and W
// is never copied (MKL's unpacked GEMM copies all of it on every call). Chosen at run time, where
// the CPU has AVX-512F or AVX2 with FMA; elsewhere gemm_small and MKL run as before.
//
// Numerics: every C[m, n] is one FMA chain over k = 0, 1, ..., K-1 in order, starting from 0 (then
// added to C when accumulating). Its value depends on A's row m, W's row n and K only: not on the
// other rows, on M, on the tiling or on how the columns are split over threads.
#pragma once
#include <cstdint>
#include <type_traits>

#include "isa.h"

#define RNNFAST_BATCH_LANES RNNFAST_GCC_X86

namespace rnnfast {
namespace cpu {

// Whether it runs: isa.h batch_lanes() / set_batch_lanes().

// Floats of the packed A for M rows of K: blocks of 16 rows, each K x 16 (k-major, the 16 rows in
// lanes; rows past M are zeros).
inline int64_t batch_lanes_pack_floats(int64_t M, int64_t K) { return (M + 15) / 16 * 16 * K; }

// Packs A (M, K), row stride lda, into `at` (batch_lanes_pack_floats(M, K) floats, 64-byte aligned).
// Only after batch_lanes() said yes.
void batch_lanes_pack(const float* a, int64_t lda, int64_t M, int64_t K, float* at);

// Columns [n0, n1) of C (row stride ldc) = [C +] A · Wᵀ from the packed A; W (N, K) with row stride
// ldw. Several threads may run disjoint column ranges on the same packed A. Only after
// batch_lanes() said yes.
void batch_lanes_gemm(const float* w, int64_t ldw, const float* at, int64_t M, int64_t K, float* c, int64_t ldc,
                      int64_t n0, int64_t n1, bool accumulate);

// ---- The panel GEMM: W packed once per call, the rows of A broadcast ----------------------------
// C (M, N) = [C +] A (M, K) · op(W) for the per-step GEMMs of a sequence whose weight is packed
// once per call (blas.h RecurrentGemm, where MKL's packed API ran: it still does for K > 128, where
// it is as fast). op(W) is packed into panels of 64 columns, each K x 64 (k-major); then for each
// panel and each block of 6 rows of A, every A[m, k] is broadcast against the panel's 4 vectors of
// row k into 6 x 4 accumulators. A is read in place: no copy per step (MKL's packed compute copies
// A on every call), and no per-call setup. Numerics as the batch-lane GEMM's: each C[m, n] is one
// FMA chain over k in order from 0, so both kernels give the same value for the same row.

// Columns of C per panel (4 vectors).
constexpr int64_t kPanelCols = 64;

// The panel GEMMs' split of M rows (both ISAs): blocks of at most kPanelBlockRows, as equal as they
// can be (the larger last), each run as f(m0, std::integral_constant<int, rows>{}).
constexpr int kPanelBlockRows = 6;
template <class F>
RNNFAST_ALWAYS_INLINE void for_panel_row_blocks(int64_t M, const F& f) {
  const int64_t blocks = (M + kPanelBlockRows - 1) / kPanelBlockRows;
  int64_t m = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t rows = (M - m) / (blocks - b);
    switch (rows) {
      case 1: f(m, std::integral_constant<int, 1>{}); break;
      case 2: f(m, std::integral_constant<int, 2>{}); break;
      case 3: f(m, std::integral_constant<int, 3>{}); break;
      case 4: f(m, std::integral_constant<int, 4>{}); break;
      case 5: f(m, std::integral_constant<int, 5>{}); break;
      default: f(m, std::integral_constant<int, kPanelBlockRows>{}); break;
    }
    m += rows;
  }
}

// Floats of the packed weight: N rounded up to kPanelCols columns, times K.
inline int64_t panels_pack_floats(int64_t N, int64_t K) {
  return (N + kPanelCols - 1) / kPanelCols * kPanelCols * K;
}

// Packs op(W) (K, N) into `wp` (panels_pack_floats(N, K) floats, 64-byte aligned; padding columns
// zero): transpose: W is (N, K) with row stride ldw and op(W) = Wᵀ; else W is (K, N). Only after
// batch_lanes() said yes.
void panels_pack(const float* w, int64_t ldw, int64_t N, int64_t K, bool transpose, float* wp);

// Columns [n0, n1) of C (row stride ldc; n0 a multiple of kPanelCols) = [C +] A (M, K; row stride
// lda) · op(W) from the packed weight. Several threads may run disjoint rows or column ranges. Only
// after batch_lanes() said yes.
void panels_gemm(const float* a, int64_t lda, const float* wp, int64_t K, float* c, int64_t ldc, int64_t M, int64_t n0,
                 int64_t n1, bool accumulate);

// The two implementations behind the four entry points above (gemm_lanes.cpp dispatches): the
// same signatures, the same layouts, the same bits.
#define RNNFAST_LANES_KERNELS                                                                                    \
  void batch_lanes_pack(const float* a, int64_t lda, int64_t M, int64_t K, float* at);                          \
  void batch_lanes_gemm(const float* w, int64_t ldw, const float* at, int64_t M, int64_t K, float* c,            \
                        int64_t ldc, int64_t n0, int64_t n1, bool accumulate);                                    \
  void panels_pack(const float* w, int64_t ldw, int64_t N, int64_t K, bool transpose, float* wp);                \
  void panels_gemm(const float* a, int64_t lda, const float* wp, int64_t K, float* c, int64_t ldc, int64_t M,   \
                   int64_t n0, int64_t n1, bool accumulate);
namespace avx512 {
RNNFAST_LANES_KERNELS
}  // namespace avx512
namespace avx2 {
RNNFAST_LANES_KERNELS
}  // namespace avx2
#undef RNNFAST_LANES_KERNELS

// blas.h's gemm_small_rows on AVX2 with FMA, written with intrinsics (gemm_avx2.cpp): the same sums
// in the same order as its AVX-512 compilation. K a multiple of 16; the tail (K mod 16 = rem > 0
// columns): `a` rows of 16 floats, zeros then the tail, and W's 16 columns from w_col; prefetch:
// the next rows of W (blas.h kPrefetchMaxWeightBytes decides).
struct SmallTailArgs {
  const float* a = nullptr;
  int64_t w_col = 0;
  int rem = 0;
};
namespace avx2 {
// C (m, n) = beta C + op(A) op(B), row-major with leading dimensions lda, ldb, ldc; op(A) = Aᵀ
// (A stored k x m) when trans_a, op(B) = Bᵀ (B stored n x k) when trans_b. One thread; the cache-
// blocked kernel of gemm_blocked_avx2.cpp (blas.h blocked_gemm picks it and splits it over threads).
void gemm_blocked(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm_small_rows(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc, int64_t M,
                     int64_t N, int64_t K, bool accumulate, bool prefetch, SmallTailArgs tail);
}  // namespace avx2

}  // namespace cpu
}  // namespace rnnfast
