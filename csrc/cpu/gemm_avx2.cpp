// The batch-lane GEMM and the panel GEMM (gemm_avx512.h) on AVX2 with FMA: the same two kernels as
// gemm_avx512.cpp, the same packed layouts and the same numerics, for the x86 CPUs without AVX-512F
// (AMD Zen 1-3, Intel client cores). Entered only through gemm_lanes.cpp's dispatch, after
// batch_lanes() said yes and lanes_avx512() said no.
//
// AVX2 has 8 float lanes and 16 vector registers (AVX-512: 16 lanes, 32 registers), so the blocks
// are smaller; the packed buffers are not: the batch-lane A is still blocks of 16 rows (K x 16),
// read here as two vectors of 8 rows, and the panels are still 64 columns (K x 64), read here as
// four slices of 16. So the pack sizes (batch_lanes_pack_floats, panels_pack_floats) and
// everything blas.h decides stay the same on both.
//   - batch lanes: for each block of 6 rows of W (columns n..n+5 of C) and each block of 16 packed
//     rows of A: for k = 0..K-1, the 6 elements W[n+r, k] are broadcast against the 2 vectors of A
//     into 6 x 2 accumulators (12 FMAs to 8 loads), then transposed 8 x 8 and stored by rows. At
//     most 8 rows of A (one vector): 12 rows of W at a time, 12 x 1 accumulators.
//   - panels: for each 16-column slice of a panel and each block of up to 6 rows of A: every
//     A[m, k] is broadcast against the slice's 2 vectors of row k into 6 x 2 accumulators.
// Numerics as gemm_avx512.cpp's: every C[m, n] is one FMA chain over k = 0, 1, ..., K-1 in order,
// starting from 0 (then added to C when accumulating), so both ISAs give the same bits
// (tests/test_batch_lanes.py, tests/test_panels.py compare them where the CPU has both).
#include <cstdint>
#include <type_traits>

#include <immintrin.h>

#include "isa.h"  // RNNFAST_GCC_X86 and the force-inline markers, before the target switch

#if RNNFAST_GCC_X86
RNNFAST_BEGIN_AVX2

#include "gemm_avx512.h"

namespace rnnfast {
namespace cpu {
namespace avx2 {

namespace {

constexpr int64_t kPrefetchAhead = 64;  // elements ahead along a row of W, as gemm_avx512.cpp

// Lanes [0, n) set (n <= 0: none, n >= 8: all), as a maskload/maskstore mask.
RNNFAST_ALWAYS_INLINE __m256i tail_mask(int64_t n) {
  const int k = n <= 0 ? 0 : n >= 8 ? 8 : int(n);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// r[i] lane j -> r[j] lane i (an 8 x 8 block of floats)
RNNFAST_ALWAYS_INLINE void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
  }
}

// A block of `rows` (<= 8) rows of src (row stride ld) by kc (<= 8) columns, transposed: column j
// becomes the 8 floats at dst + j * dst_ld (32-byte aligned), rows past `rows` zero.
RNNFAST_ALWAYS_INLINE void transpose_block(const float* src, int64_t ld, int rows, int kc, float* dst, int64_t dst_ld) {
  const __m256i mask = tail_mask(kc);
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_maskload_ps(src + i * ld, mask) : _mm256_setzero_ps();
  transpose8(r);
  for (int j = 0; j < kc; ++j) _mm256_store_ps(dst + j * dst_ld, r[j]);
}

// Stores the NS (<= 8) accumulators s[r] (lane i: C[i, n + r]) as rows i < rows of C, columns
// r < cols.
template <int NS>
RNNFAST_ALWAYS_INLINE void store_block(const __m256* s, float* c, int64_t ldc, int rows, int cols, bool accumulate) {
  static_assert(NS <= 8, "one 8 x 8 transpose");
  if (cols <= 0) return;
  __m256 r[8];
  for (int j = 0; j < 8; ++j) r[j] = j < NS ? s[j] : _mm256_setzero_ps();
  transpose8(r);  // r[i]: row i, columns 0..7 (from NS on zeros)
  const __m256i mask = tail_mask(cols);
  for (int i = 0; i < rows && i < 8; ++i) {
    float* y = c + i * ldc;
    __m256 v = r[i];
    if (accumulate) v = _mm256_add_ps(v, _mm256_maskload_ps(y, mask));
    _mm256_maskstore_ps(y, mask, v);
  }
}

// One block: columns n..n+cols-1 (rows wr[r] of W, r < NC) against MV vectors of 8 packed rows of A
// (a block of 16 packed rows holds two): MV x NC accumulators. MV = 2, NC = 6 where A has more
// than 8 rows (12 FMAs to 8 loads); MV = 1, NC = 12 where it has at most 8 (12 FMAs to 13 loads,
// but 12 chains in flight, where 1 x 6 would wait on the FMA latency).
template <int MV, int NC>
RNNFAST_ALWAYS_INLINE void block(const float* const* wr, const float* at, int64_t K, float* c, int64_t ldc, int rows,
                                 int cols, bool accumulate) {
  __m256 s[MV][NC];
  for (int v = 0; v < MV; ++v) {
    for (int r = 0; r < NC; ++r) s[v][r] = _mm256_setzero_ps();
  }
  auto step = [&](int64_t k) RNNFAST_ALWAYS_INLINE_LAMBDA {
    __m256 a[MV];
    for (int v = 0; v < MV; ++v) a[v] = _mm256_load_ps(at + k * 16 + 8 * v);
#pragma GCC unroll 12
    for (int r = 0; r < NC; ++r) {
      const __m256 b = _mm256_broadcast_ss(wr[r] + k);
      for (int v = 0; v < MV; ++v) s[v][r] = _mm256_fmadd_ps(a[v], b, s[v][r]);
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {  // each 16 steps, touch the line 64 elements ahead in each row of W
    for (int r = 0; r < NC; ++r) __builtin_prefetch(wr[r] + k + kPrefetchAhead);  // never faults
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) step(k + j);
  }
  for (; k < K; ++k) step(k);
  for (int v = 0; v < MV; ++v) {
    float* cv = c + 8 * v * ldc;
    const int rv = rows - 8 * v;
    if (rv <= 0) break;
    if constexpr (NC <= 8) {
      store_block<NC>(s[v], cv, ldc, rv, cols, accumulate);
    } else {
      store_block<8>(s[v], cv, ldc, rv, cols < 8 ? cols : 8, accumulate);
      store_block<NC - 8>(s[v] + 8, cv + 8, ldc, rv, cols - 8, accumulate);
    }
  }
}

// Columns [n0, n1) in blocks of NC rows of W, each against every block of 16 packed rows of A.
template <int MV, int NC>
RNNFAST_ALWAYS_INLINE void lanes_columns(const float* w, int64_t ldw, const float* at, int64_t M, int64_t K, float* c,
                                         int64_t ldc, int64_t n0, int64_t n1, bool accumulate) {
  for (int64_t n = n0; n < n1; n += NC) {
    const int cols = int(n1 - n < NC ? n1 - n : NC);
    const float* wr[NC];
    for (int r = 0; r < NC; ++r) wr[r] = w + (n + (r < cols ? r : 0)) * ldw;  // past the last: row n again
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
      const int rows = int(M - m0 < 16 ? M - m0 : 16);
      block<MV, NC>(wr, at + m0 * K, K, c + m0 * ldc + n, ldc, rows, cols, accumulate);
    }
  }
}

// ---- The panel GEMM ----
constexpr int kPanel = int(kPanelCols);

// Rows [0, MR) of C against NV vectors (NV * 8 columns) of one panel's slice, A[m, k] broadcast
// from A's rows in place. masks[v]: the columns of vector v that exist.
template <int MR, int NV>
RNNFAST_ALWAYS_INLINE void panel_block(const float* a, int64_t lda, const float* slice, int64_t K, float* c,
                                       int64_t ldc, const __m256i* masks, bool accumulate) {
  __m256 s[MR][NV];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) s[i][v] = _mm256_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm256_load_ps(slice + k * kPanel + 8 * v);
    for (int i = 0; i < MR; ++i) {
      const __m256 x = _mm256_broadcast_ss(a + i * lda + k);
      for (int v = 0; v < NV; ++v) s[i][v] = _mm256_fmadd_ps(x, b[v], s[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) {
      float* y = c + i * ldc + 8 * v;
      __m256 r = s[i][v];
      if (accumulate) r = _mm256_add_ps(r, _mm256_maskload_ps(y, masks[v]));
      _mm256_maskstore_ps(y, masks[v], r);
    }
  }
}

// All M rows against one slice of NV vectors: blocks of at most 6 rows, as equal as they can be.
template <int NV>
RNNFAST_ALWAYS_INLINE void panel_rows(const float* a, int64_t lda, const float* slice, int64_t K, float* c,
                                      int64_t ldc, int64_t M, const __m256i* masks, bool accumulate) {
  for_panel_row_blocks(M, [&](int64_t m, auto rows) RNNFAST_ALWAYS_INLINE_LAMBDA {
    panel_block<decltype(rows)::value, NV>(a + m * lda, lda, slice, K, c + m * ldc, ldc, masks, accumulate);
  });
}

}  // namespace

void panels_pack(const float* w, int64_t ldw, int64_t N, int64_t K, bool transpose, float* wp) {
  const int64_t padded = (N + kPanel - 1) / kPanel * kPanel;
  if (!transpose) {  // op(W) = W (K, N): each row k of W is row k of every panel, padded with zeros
    for (int64_t n0 = 0; n0 < padded; n0 += kPanel) {
      float* panel = wp + n0 * K;
      const int64_t cols = N - n0 < kPanel ? N - n0 : kPanel;
      for (int64_t k = 0; k < K; ++k) {
        for (int v = 0; v < kPanel / 8; ++v) {
          const __m256 x = _mm256_maskload_ps(w + k * ldw + n0 + 8 * v, tail_mask(cols - 8 * v));
          _mm256_store_ps(panel + k * kPanel + 8 * v, x);
        }
      }
    }
    return;
  }
  // op(W) = Wᵀ, W (N, K): 8 rows of W by 8 k at a time, transposed in registers into 8 rows k of
  // the panel's 8 columns
  for (int64_t n0 = 0; n0 < N; n0 += 8) {
    const int rows = int(N - n0 < 8 ? N - n0 : 8);
    float* dst = wp + (n0 / kPanel) * kPanel * K + n0 % kPanel;
    for (int64_t k0 = 0; k0 < K; k0 += 8) {
      transpose_block(w + n0 * ldw + k0, ldw, rows, int(K - k0 < 8 ? K - k0 : 8), dst + k0 * kPanel, kPanel);
    }
  }
  for (int64_t n0 = (N + 7) / 8 * 8; n0 < padded; n0 += 8) {  // the last panel's padding vectors
    float* dst = wp + (n0 / kPanel) * kPanel * K + n0 % kPanel;
    for (int64_t k = 0; k < K; ++k) _mm256_store_ps(dst + k * kPanel, _mm256_setzero_ps());
  }
}

void panels_gemm(const float* a, int64_t lda, const float* wp, int64_t K, float* c, int64_t ldc, int64_t M, int64_t n0,
                 int64_t n1, bool accumulate) {
  for (int64_t n = n0; n < n1; n += kPanel) {
    const float* panel = wp + n * K;
    for (int64_t j = 0; j < kPanel && n + j < n1; j += 16) {  // 16-column slices of the panel
      const int64_t cols = n1 - n - j < 16 ? n1 - n - j : 16;
      const __m256i masks[2] = {tail_mask(cols), tail_mask(cols - 8)};
      if (cols > 8) {
        panel_rows<2>(a, lda, panel + j, K, c + n + j, ldc, M, masks, accumulate);
      } else {
        panel_rows<1>(a, lda, panel + j, K, c + n + j, ldc, M, masks, accumulate);
      }
    }
  }
}

void batch_lanes_pack(const float* a, int64_t lda, int64_t M, int64_t K, float* at) {
  for (int64_t m0 = 0; m0 < M; m0 += 16) {
    float* blk = at + m0 * K;  // block m0 / 16: K x 16, rows m0..m0+7 in floats 0-7, m0+8.. in 8-15
    for (int h = 0; h < 2; ++h) {
      const int64_t first = m0 + 8 * h;
      const int rows = int(M - first < 0 ? 0 : M - first < 8 ? M - first : 8);
      for (int64_t k0 = 0; k0 < K; k0 += 8) {
        transpose_block(a + first * lda + k0, lda, rows, int(K - k0 < 8 ? K - k0 : 8), blk + k0 * 16 + 8 * h, 16);
      }
    }
  }
}

void batch_lanes_gemm(const float* w, int64_t ldw, const float* at, int64_t M, int64_t K, float* c, int64_t ldc,
                      int64_t n0, int64_t n1, bool accumulate) {
  if (M <= 8) {
    lanes_columns<1, 12>(w, ldw, at, M, K, c, ldc, n0, n1, accumulate);
  } else {
    lanes_columns<2, 6>(w, ldw, at, M, K, c, ldc, n0, n1, accumulate);
  }
}

// ---- gemm_small on AVX2 (blas.h gemm_small_rows; its numerics exactly) ----
// Each C[m, n] is 16 lanes of FMAs over k (lane j takes k = j mod 16), each lane a chain in k order,
// after the tail's product when K is not a multiple of 16; then the 16 lanes summed by blas.h's
// lane_sums tree: a8 = v[0:8] + v[8:16], a4 = a8[0:4] + a8[4:8], (a4[0] + a4[2]) + (a4[1] + a4[3]).
// Here a 16-lane accumulator is two registers (lanes 0-7, 8-15), written with intrinsics: the
// generic 16-lane vectors of blas.h, compiled for AVX2, kept their accumulators on the stack.
namespace {

RNNFAST_ALWAYS_INLINE float lane_sum(__m256 lo, __m256 hi) {
  const __m256 a8 = _mm256_add_ps(lo, hi);
  const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
  const __m128 b = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));  // b0 = a4[0] + a4[2], b1 = a4[1] + a4[3]
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

// C[m, r] (m < MR, r < R) = [C +] A[m] · W[r] over K (a multiple of 16) and the tail.
template <int MR, int R, bool Prefetch>
RNNFAST_ALWAYS_INLINE void small_block(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                                       int64_t K, bool accumulate, const SmallTailArgs& tail) {
  __m256 lo[MR][R], hi[MR][R];
  if (tail.a) {  // the last columns first, as blas.h: W's 16 columns ending at K, lanes before the tail cleared
    const __m256i idx_lo = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i first = _mm256_set1_epi32(15 - tail.rem);  // keep lanes j > 15 - rem, i.e. j >= 16 - rem
    const __m256 keep_lo = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx_lo, first));
    const __m256 keep_hi =
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_add_epi32(idx_lo, _mm256_set1_epi32(8)), first));
    for (int r = 0; r < R; ++r) {
      const __m256 wl = _mm256_and_ps(_mm256_loadu_ps(w + r * ldw + tail.w_col), keep_lo);
      const __m256 wh = _mm256_and_ps(_mm256_loadu_ps(w + r * ldw + tail.w_col + 8), keep_hi);
      for (int m = 0; m < MR; ++m) {
        lo[m][r] = _mm256_mul_ps(wl, _mm256_loadu_ps(tail.a + m * 16));
        hi[m][r] = _mm256_mul_ps(wh, _mm256_loadu_ps(tail.a + m * 16 + 8));
      }
    }
  } else {
    for (int m = 0; m < MR; ++m) {
      for (int r = 0; r < R; ++r) lo[m][r] = hi[m][r] = _mm256_setzero_ps();
    }
  }
  for (int64_t k = 0; k < K; k += 16) {
    __m256 wl[R], wh[R];
    for (int r = 0; r < R; ++r) {
      wl[r] = _mm256_loadu_ps(w + r * ldw + k);
      wh[r] = _mm256_loadu_ps(w + r * ldw + k + 8);
    }
    if constexpr (Prefetch) {
      for (int r = 0; r < R; ++r) __builtin_prefetch(w + (r + R) * ldw + k);  // never faults, even past W's end
    }
    for (int m = 0; m < MR; ++m) {
      const __m256 al = _mm256_loadu_ps(a + m * lda + k), ah = _mm256_loadu_ps(a + m * lda + k + 8);
      for (int r = 0; r < R; ++r) {
        lo[m][r] = _mm256_fmadd_ps(wl[r], al, lo[m][r]);
        hi[m][r] = _mm256_fmadd_ps(wh[r], ah, hi[m][r]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < R; ++r) {
      float& y = c[m * ldc + r];
      const float sum = lane_sum(lo[m][r], hi[m][r]);
      y = accumulate ? y + sum : sum;
    }
  }
}

constexpr int kSmallTileRows = 2, kSmallTileCols = 2, kSmallGemvCols = 4;

template <int R, bool Prefetch>
RNNFAST_ALWAYS_INLINE void small_rows(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                                      int64_t M, int64_t K, bool accumulate, SmallTailArgs tail) {
  int64_t m = 0;
  for (; m + kSmallTileRows <= M; m += kSmallTileRows) {
    SmallTailArgs t = tail;
    if (t.a) t.a += m * 16;
    small_block<kSmallTileRows, R, Prefetch>(w, ldw, a + m * lda, lda, c + m * ldc, ldc, K, accumulate, t);
  }
  if (m < M) {
    if (tail.a) tail.a += m * 16;
    small_block<1, R, Prefetch>(w, ldw, a + m * lda, lda, c + m * ldc, ldc, K, accumulate, tail);
  }
}

template <bool Prefetch>
RNNFAST_ALWAYS_INLINE void small_tiles(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc,
                                       int64_t M, int64_t N, int64_t K, bool accumulate, SmallTailArgs tail) {
  int64_t n = 0;
  for (; n + kSmallTileCols <= N; n += kSmallTileCols) {
    small_rows<kSmallTileCols, Prefetch>(w + n * ldw, ldw, a, lda, c + n, ldc, M, K, accumulate, tail);
  }
  for (; n < N; ++n) small_rows<1, false>(w + n * ldw, ldw, a, lda, c + n, ldc, M, K, accumulate, tail);
}

}  // namespace

void gemm_small_rows(const float* w, int64_t ldw, const float* a, int64_t lda, float* c, int64_t ldc, int64_t M,
                     int64_t N, int64_t K, bool accumulate, bool prefetch, SmallTailArgs tail) {
  if (M <= 0) return;
  if (M >= 2) {
    prefetch ? small_tiles<true>(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail)
             : small_tiles<false>(w, ldw, a, lda, c, ldc, M, N, K, accumulate, tail);
    return;
  }
  int64_t n = 0;  // one row (GEMV)
  for (; n + kSmallGemvCols <= N; n += kSmallGemvCols) {
    small_block<1, kSmallGemvCols, false>(w + n * ldw, ldw, a, lda, c + n, ldc, K, accumulate, tail);
  }
  for (; n < N; ++n) small_block<1, 1, false>(w + n * ldw, ldw, a, lda, c + n, ldc, K, accumulate, tail);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace rnnfast

RNNFAST_END_AVX2
#endif  // RNNFAST_GCC_X86
