// The batch-lane GEMM (gemm_avx512.h): C = [C +] A · Wᵀ with the rows of A in vector lanes; and the
// panel GEMM (below, "The panel GEMM"): a packed weight against the rows of A read in place.
//
// A is packed once per call into blocks of 16 rows, each K x 16 (row i of the block in lane i), by
// 16 x 16 transposes in registers. Then for each block of 8 rows of W (columns n..n+7 of C) and
// each block of 32 (or, for the last 1-16, 16) rows of A: for k = 0..K-1, the 8 elements W[n+r, k]
// are broadcast and multiplied into 8 x 2 (or 8 x 1) accumulators holding C[m.., n+r] for 16 rows
// each. 16 independent FMA chains, two vector loads of A and eight broadcasts per 16 FMAs: the
// FMA units set the pace (measured ~80 GMAC/s on one Sapphire Rapids core, its peak, where the
// lane-summing gemm_small reaches 30-48). Each accumulator block is then transposed (8 x 16 ->
// 16 rows of 8) and stored with masks for the last rows and columns.
//
// Like rows_avx512.cpp: everything after RNNFAST_BEGIN_AVX512 (`#pragma GCC target`, isa.h) is
// compiled for AVX-512F, the standard headers are included before it, and this file is entered
// only after batch_lanes() and lanes_avx512() said the CPU has it (gemm_lanes.cpp). gemm_avx2.cpp is
// the same on AVX2.
#include <cstdint>
#include <type_traits>

#include <immintrin.h>

#include "isa.h"  // RNNFAST_GCC_X86 and the force-inline markers, before the target switch

#if RNNFAST_GCC_X86
RNNFAST_BEGIN_AVX512

#include "gemm_avx512.h"

namespace rnnfast {
namespace cpu {
namespace avx512 {

namespace {

constexpr int kCols = 8;  // rows of W (columns of C) per block
// Software prefetch distance along a row of W, in elements. Measured in a standalone loop of two
// GEMMs on two weights (as a layer's W_ih and W_hh take turns in L2), interleaved, 1 thread,
// GMAC/s without / with 64: W 1024 x 256 M=16 54 / 64, M=32 68 / 73; W 2048 x 512 M=16 50 / 58,
// M=64 68 / 71; W 4096 x 1024 M=16 51 / 58; W 256 x 64 55 / 56 (32 to 256 ahead all within ~5%).
constexpr int64_t kPrefetchAhead = 64;

// r[i] lane j -> r[j] lane i (a 16 x 16 block of floats)
RNNFAST_ALWAYS_INLINE void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // r[4g + j], 128-bit lane q: row 4q + j of the block, columns 4g..4g+3
  for (int j = 0; j < 4; ++j) {
    for (int h = 0; h < 2; ++h) {  // groups g = 2h, 2h + 1 -> lanes q (0,1) and (2,3)
      t[8 * h + j] = _mm512_shuffle_f32x4(r[8 * h + j], r[8 * h + 4 + j], 0x88);
      t[8 * h + 4 + j] = _mm512_shuffle_f32x4(r[8 * h + j], r[8 * h + 4 + j], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

// Lanes [0, n) of a vector (n <= 0: none, n >= 16: all).
RNNFAST_ALWAYS_INLINE __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// A block of `rows` (<= 16) rows of src (row stride ld) by kc (<= 16) columns, transposed: column j
// becomes the 16 floats at dst + j * dst_ld (64-byte aligned), rows past `rows` zero. Both packs
// use it: the batch-lane A (16 rows into lanes) and the panels of Wᵀ (16 rows of W into 16 columns).
RNNFAST_ALWAYS_INLINE void transpose_block(const float* src, int64_t ld, int rows, int kc, float* dst, int64_t dst_ld) {
  const __mmask16 mask = tail_mask(kc);
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(mask, src + i * ld) : _mm512_setzero_ps();
  transpose16(r);
  for (int j = 0; j < kc; ++j) _mm512_store_ps(dst + j * dst_ld, r[j]);
}

// Stores the 8 accumulators s[r] (lane i: C[i, n + r]) as rows i < rows of C, columns r < cols.
RNNFAST_ALWAYS_INLINE void store_block(const __m512 s[kCols], float* c, int64_t ldc, int rows, int cols,
                                       bool accumulate) {
  __m512 t[8], u[8];
  for (int p = 0; p < 4; ++p) {  // t[2p] lane q: s[2p][4q], s[2p+1][4q], s[2p][4q+1], s[2p+1][4q+1]
    t[2 * p] = _mm512_unpacklo_ps(s[2 * p], s[2 * p + 1]);
    t[2 * p + 1] = _mm512_unpackhi_ps(s[2 * p], s[2 * p + 1]);
  }
  for (int g = 0; g < 2; ++g) {  // u[4g + j] lane q: row 4q + j, columns 4g..4g+3
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c2 = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c2));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c2));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  const __mmask16 mask = __mmask16((1u << cols) - 1);
  auto put = [&](int row, __m512 v) {  // columns 0..7 of `row` in v's low 8 lanes
    if (row >= rows) return;
    float* y = c + row * ldc;
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y));
    _mm512_mask_storeu_ps(y, mask, v);
  };
  for (int j = 0; j < 4; ++j) {
    for (int h = 0; h < 2; ++h) {  // h = 0: lanes q = 0, 1 (rows j, 4 + j); h = 1: q = 2, 3 (8 + j, 12 + j)
      const __m512 x = _mm512_shuffle_f32x4(u[j], u[4 + j], h ? 0xee : 0x44);  // [u_j.qa, u_j.qb, u_4+j.qa, u_4+j.qb]
      const __m512 lo = _mm512_shuffle_f32x4(x, x, 0x08);                      // [x.q0, x.q2, ...]: row 8h + j
      const __m512 hi = _mm512_shuffle_f32x4(x, x, 0x0d);                      // [x.q1, x.q3, ...]: row 8h + 4 + j
      put(8 * h + j, lo);
      put(8 * h + 4 + j, hi);
    }
  }
}

// One block: columns n..n+cols-1 (rows w[r] of W) against MV blocks of 16 packed rows of A.
template <int MV>
RNNFAST_ALWAYS_INLINE void block(const float* const wr[kCols], const float* at, int64_t K, float* c, int64_t ldc,
                                 int rows, int cols, bool accumulate) {
  __m512 s[MV][kCols];
  for (int v = 0; v < MV; ++v) {
    for (int r = 0; r < kCols; ++r) s[v][r] = _mm512_setzero_ps();
  }
  auto step = [&](int64_t k) RNNFAST_ALWAYS_INLINE_LAMBDA {
    __m512 a[MV];
    for (int v = 0; v < MV; ++v) a[v] = _mm512_load_ps(at + (v * K + k) * 16);
#pragma GCC unroll 8
    for (int r = 0; r < kCols; ++r) {
      const __m512 b = _mm512_set1_ps(wr[r][k]);
      for (int v = 0; v < MV; ++v) s[v][r] = _mm512_fmadd_ps(a[v], b, s[v][r]);
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {  // each 16 steps, touch the line 64 elements ahead in each row of W
    for (int r = 0; r < kCols; ++r) __builtin_prefetch(wr[r] + k + kPrefetchAhead);  // never faults
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) step(k + j);
  }
  for (; k < K; ++k) step(k);
  for (int v = 0; v < MV; ++v) store_block(s[v], c + v * 16 * ldc, ldc, rows - 16 * v, cols, accumulate);
}

// ---- The panel GEMM ----
constexpr int kPanel = int(kPanelCols);

// Rows [0, MR) of C, the NV vectors of one panel: MR x NV accumulators, A[m, k] broadcast from A's
// rows in place. masks[v]: the columns of vector v that exist (the last panel may be partial).
template <int MR, int NV>
RNNFAST_ALWAYS_INLINE void panel_block(const float* a, int64_t lda, const float* panel, int64_t K, float* c,
                                       int64_t ldc, const __mmask16* masks, bool accumulate) {
  __m512 s[MR][NV];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) s[i][v] = _mm512_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_load_ps(panel + k * kPanel + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512 x = _mm512_set1_ps(a[i * lda + k]);
      for (int v = 0; v < NV; ++v) s[i][v] = _mm512_fmadd_ps(x, b[v], s[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) {
      float* y = c + i * ldc + 16 * v;
      __m512 r = s[i][v];
      if (accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(masks[v], y));
      _mm512_mask_storeu_ps(y, masks[v], r);
    }
  }
}

// All M rows against one panel of NV vectors. Up to 6 rows in one block against all NV vectors
// (up to 24 accumulators; 4 loads of the panel and 6 broadcasts per 24 FMAs). 7 or 8 rows in one
// block too, against half of the panel at a time (14-16 accumulators): every block reads the
// panel once, where 4 + 3 rows read it twice (and 6 + 1 left one row's 4 FMA chains waiting on
// their latency). More rows: blocks of at most 6, as equal as they can be.
template <int NV>
RNNFAST_ALWAYS_INLINE void panel_rows(const float* a, int64_t lda, const float* panel, int64_t K, float* c,
                                      int64_t ldc, int64_t M, const __mmask16* masks, bool accumulate) {
  if (NV > 2 && (M == 7 || M == 8)) {
    for (int h = 0; h < NV; h += 2) {
      if (M == 7) {
        panel_block<7, 2>(a, lda, panel + 16 * h, K, c + 16 * h, ldc, masks + h, accumulate);
      } else {
        panel_block<8, 2>(a, lda, panel + 16 * h, K, c + 16 * h, ldc, masks + h, accumulate);
      }
    }
    return;
  }
  for_panel_row_blocks(M, [&](int64_t m, auto rows) RNNFAST_ALWAYS_INLINE_LAMBDA {
    panel_block<decltype(rows)::value, NV>(a + m * lda, lda, panel, K, c + m * ldc, ldc, masks, accumulate);
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
        for (int v = 0; v < kPanel / 16; ++v) {
          const __m512 x = _mm512_maskz_loadu_ps(tail_mask(cols - 16 * v), w + k * ldw + n0 + 16 * v);
          _mm512_store_ps(panel + k * kPanel + 16 * v, x);
        }
      }
    }
    return;
  }
  // op(W) = Wᵀ, W (N, K): 16 rows of W by 16 k at a time, transposed in registers into 16 rows k of
  // the panel's 16 columns
  for (int64_t n0 = 0; n0 < N; n0 += 16) {
    const int rows = int(N - n0 < 16 ? N - n0 : 16);
    float* dst = wp + (n0 / kPanel) * kPanel * K + n0 % kPanel;
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
      transpose_block(w + n0 * ldw + k0, ldw, rows, int(K - k0 < 16 ? K - k0 : 16), dst + k0 * kPanel, kPanel);
    }
  }
  for (int64_t n0 = (N + 15) / 16 * 16; n0 < padded; n0 += 16) {  // the last panel's padding vectors
    float* dst = wp + (n0 / kPanel) * kPanel * K + n0 % kPanel;
    for (int64_t k = 0; k < K; ++k) _mm512_store_ps(dst + k * kPanel, _mm512_setzero_ps());
  }
}

void panels_gemm(const float* a, int64_t lda, const float* wp, int64_t K, float* c, int64_t ldc, int64_t M, int64_t n0,
                 int64_t n1, bool accumulate) {
  for (int64_t n = n0; n < n1; n += kPanel) {
    const int64_t cols = n1 - n < kPanel ? n1 - n : kPanel;
    __mmask16 masks[kPanel / 16];
    for (int v = 0; v < kPanel / 16; ++v) masks[v] = tail_mask(cols - 16 * v);
    const float* panel = wp + n * K;
    float* cn = c + n;
    if (cols > 48) {
      panel_rows<4>(a, lda, panel, K, cn, ldc, M, masks, accumulate);
    } else if (cols > 32) {
      panel_rows<3>(a, lda, panel, K, cn, ldc, M, masks, accumulate);
    } else if (cols > 16) {
      panel_rows<2>(a, lda, panel, K, cn, ldc, M, masks, accumulate);
    } else {
      panel_rows<1>(a, lda, panel, K, cn, ldc, M, masks, accumulate);
    }
  }
}

void batch_lanes_pack(const float* a, int64_t lda, int64_t M, int64_t K, float* at) {
  for (int64_t m0 = 0; m0 < M; m0 += 16) {
    const int rows = int(M - m0 < 16 ? M - m0 : 16);
    float* blk = at + m0 * K;  // block m0 / 16: K x 16
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
      transpose_block(a + m0 * lda + k0, lda, rows, int(K - k0 < 16 ? K - k0 : 16), blk + k0 * 16, 16);
    }
  }
}

void batch_lanes_gemm(const float* w, int64_t ldw, const float* at, int64_t M, int64_t K, float* c, int64_t ldc,
                      int64_t n0, int64_t n1, bool accumulate) {
  for (int64_t n = n0; n < n1; n += kCols) {
    const int cols = int(n1 - n < kCols ? n1 - n : kCols);
    const float* wr[kCols];
    for (int r = 0; r < kCols; ++r) wr[r] = w + (n + (r < cols ? r : 0)) * ldw;  // past the last: row n again
    for (int64_t m0 = 0; m0 < M; m0 += 32) {
      const int rows = int(M - m0 < 32 ? M - m0 : 32);
      if (rows > 16) {
        block<2>(wr, at + m0 * K, K, c + m0 * ldc + n, ldc, rows, cols, accumulate);
      } else {
        block<1>(wr, at + m0 * K, K, c + m0 * ldc + n, ldc, rows, cols, accumulate);
      }
    }
  }
}

}  // namespace avx512
}  // namespace cpu
}  // namespace rnnfast

RNNFAST_END_AVX512
#endif  // RNNFAST_GCC_X86
