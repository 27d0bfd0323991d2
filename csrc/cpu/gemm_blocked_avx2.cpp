// A cache-blocked SGEMM on AVX2 with FMA for the large GEMMs of a layer on a CPU without AVX-512F
// (blas.h blocked_gemm_takes decides): the backward's weight gradients dGᵀ [X | H | 1] and input
// gradient dG W_ih. MKL, which ATen and blas_gemm call, reaches 27-35 GMAC/s on an AMD Zen 2 core;
// this reaches 40-46 (bench/small_gemm.py --blocked; blas.h has the table).
//
// The classic blocking of a BLAS-like GEMM (as in the GotoBLAS/BLIS papers), written here from
// scratch: C (m, n) = beta C + op(A) (m, k) op(B) (k, n), all row-major with any leading
// dimensions and either operand transposed.
//   for each block of kNc columns of C:
//     for each block of kKc of the k dimension (in order):
//       pack op(B)'s kKc x kNc block into panels of kNr = 16 columns (kKc x 16, row by row)
//       for each block of kMc rows of C:
//         pack op(A)'s kMc x kKc block into slivers of kMr = 6 rows (kKc x 6, column by column)
//         for each panel, for each sliver: the 6 x 16 micro-tile, 12 accumulators, one FMA chain
//           over the block's k; then added to C (or stored with beta for the first k block)
// A panel (16 KB at kKc = 256) stays in L1 while the slivers stream from L2 (kMc x kKc = 120 KB),
// and the B block (at most 2 MB) lives in L3. Packing pads the edges with zeros, so every micro-tile
// is a full 6 x 16 one; the edge tiles go through a small buffer into C.
//
// Numerics: C[i, j] = beta C + ((s_0 + s_1) + s_2) + ..., s_b the block b's FMA chain over its
// kKc k's in order, from 0; the same bits for any split of the rows or columns over threads.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <immintrin.h>

#include <c10/util/Exception.h>

#include "isa.h"

#if RNNFAST_GCC_X86
RNNFAST_BEGIN_AVX2

#include "gemm_avx512.h"

namespace rnnfast {
namespace cpu {
namespace avx2 {

namespace {

constexpr int64_t kMr = 6, kNr = 16, kKc = 256, kMc = 120, kNc = 2048;
static_assert(kMc % kMr == 0 && kNc % kNr == 0, "whole slivers and panels in a block");

// This thread's packing buffer number `which` (0: A, 1: B), 64-byte aligned, grown as needed, kept.
float* pack_buffer(int which, int64_t floats) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> buf[2];
  thread_local int64_t capacity[2] = {0, 0};
  if (floats > capacity[which]) {
    const size_t bytes = (size_t(floats) * sizeof(float) + 63) / 64 * 64;
    buf[which].reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(buf[which], "rnnfast: out of memory for a ", bytes, "-byte GEMM buffer");
    capacity[which] = floats;
  }
  return buf[which].get();
}

// op(A) rows [0, mc) x k's [0, kc) (a at the block's first element) into slivers of kMr rows:
// sliver s holds, for each k, its kMr rows' values (zeros past mc).
void pack_a(const float* a, int64_t lda, bool trans, int64_t mc, int64_t kc, float* dst) {
  for (int64_t i0 = 0; i0 < mc; i0 += kMr) {
    const int rows = int(mc - i0 < kMr ? mc - i0 : kMr);
    float* d = dst + i0 * kc;
    if (trans) {  // op(A)[i, p] = a[p * lda + i]: each k's rows are contiguous
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = a + p * lda + i0;
        for (int r = 0; r < kMr; ++r) d[p * kMr + r] = r < rows ? src[r] : 0.f;
      }
    } else {  // op(A)[i, p] = a[i * lda + p]: kMr rows read side by side
      const float* src[kMr];
      for (int r = 0; r < kMr; ++r) src[r] = a + (i0 + (r < rows ? r : 0)) * lda;
      for (int64_t p = 0; p < kc; ++p) {
        for (int r = 0; r < kMr; ++r) d[p * kMr + r] = r < rows ? src[r][p] : 0.f;
      }
    }
  }
}

RNNFAST_ALWAYS_INLINE __m256i lanes_below(int64_t n) {
  const int v = n <= 0 ? 0 : n >= 8 ? 8 : int(n);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// op(B) k's [0, kc) x columns [0, nc) into panels of kNr columns: panel q holds, for each k, its
// kNr columns (zeros past nc).
void pack_b(const float* b, int64_t ldb, bool trans, int64_t kc, int64_t nc, float* dst) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    const int64_t cols = nc - j0 < kNr ? nc - j0 : kNr;
    float* d = dst + j0 * kc;
    if (!trans) {  // op(B)[p, j] = b[p * ldb + j]: a row of the panel is contiguous
      if (cols == kNr) {
        for (int64_t p = 0; p < kc; ++p) {
          _mm256_store_ps(d + p * kNr, _mm256_loadu_ps(b + p * ldb + j0));
          _mm256_store_ps(d + p * kNr + 8, _mm256_loadu_ps(b + p * ldb + j0 + 8));
        }
      } else {
        const __m256i m0 = lanes_below(cols), m1 = lanes_below(cols - 8);
        for (int64_t p = 0; p < kc; ++p) {
          _mm256_store_ps(d + p * kNr, _mm256_maskload_ps(b + p * ldb + j0, m0));
          _mm256_store_ps(d + p * kNr + 8, _mm256_maskload_ps(b + p * ldb + j0 + 8, m1));
        }
      }
    } else {  // op(B)[p, j] = b[j * ldb + p]: column j of the panel is row j0 + j of b
      if (cols < kNr) std::memset(d, 0, sizeof(float) * kc * kNr);
      for (int64_t j = 0; j < cols; ++j) {
        const float* src = b + (j0 + j) * ldb;
        for (int64_t p = 0; p < kc; ++p) d[p * kNr + j] = src[p];
      }
    }
  }
}

// The 6 x 16 micro-tile: C[i, 0:16] (i < rows, columns < cols) = (first ? beta C : C) + the sliver's
// rows against the panel over kc.
RNNFAST_ALWAYS_INLINE void micro_tile(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int rows,
                                      int cols, bool first, float beta) {
  __m256 s[kMr][2];
  for (int i = 0; i < kMr; ++i) s[i][0] = s[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(bp + p * kNr), b1 = _mm256_load_ps(bp + p * kNr + 8);
    for (int i = 0; i < kMr; ++i) {
      const __m256 x = _mm256_broadcast_ss(ap + p * kMr + i);
      s[i][0] = _mm256_fmadd_ps(x, b0, s[i][0]);
      s[i][1] = _mm256_fmadd_ps(x, b1, s[i][1]);
    }
  }
  const bool scale = first && beta != 1.f;  // beta C (C not read at all when beta = 0)
  const __m256 vbeta = _mm256_set1_ps(beta);
  if (rows == kMr && cols == kNr) {
    for (int i = 0; i < kMr; ++i) {
      for (int v = 0; v < 2; ++v) {
        float* y = c + i * ldc + 8 * v;
        __m256 r = s[i][v];
        if (!scale) {
          r = _mm256_add_ps(_mm256_loadu_ps(y), r);
        } else if (beta != 0.f) {
          r = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(y), r);
        }
        _mm256_storeu_ps(y, r);
      }
    }
    return;
  }
  alignas(32) float t[kMr][kNr];
  for (int i = 0; i < kMr; ++i) {
    _mm256_store_ps(t[i], s[i][0]);
    _mm256_store_ps(t[i] + 8, s[i][1]);
  }
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      float& y = c[i * ldc + j];
      y = !scale ? y + t[i][j] : beta != 0.f ? beta * y + t[i][j] : t[i][j];
    }
  }
}

}  // namespace

void gemm_blocked(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta C
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    }
    return;
  }
  const int64_t nc_max = n < kNc ? (n + kNr - 1) / kNr * kNr : kNc;
  const int64_t kc_max = k < kKc ? k : kKc;
  const int64_t mc_max = m < kMc ? (m + kMr - 1) / kMr * kMr : kMc;
  float* bp = pack_buffer(1, kc_max * nc_max);
  float* ap = pack_buffer(0, mc_max * kc_max);
  for (int64_t jc = 0; jc < n; jc += kNc) {
    const int64_t nc = n - jc < kNc ? n - jc : kNc;
    for (int64_t pc = 0; pc < k; pc += kKc) {
      const int64_t kc = k - pc < kKc ? k - pc : kKc;
      const bool first = pc == 0;
      pack_b(trans_b ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, trans_b, kc, nc, bp);
      for (int64_t ic = 0; ic < m; ic += kMc) {
        const int64_t mc = m - ic < kMc ? m - ic : kMc;
        pack_a(trans_a ? a + pc * lda + ic : a + ic * lda + pc, lda, trans_a, mc, kc, ap);
        for (int64_t jr = 0; jr < nc; jr += kNr) {
          const int cols = int(nc - jr < kNr ? nc - jr : kNr);
          for (int64_t ir = 0; ir < mc; ir += kMr) {
            const int rows = int(mc - ir < kMr ? mc - ir : kMr);
            micro_tile(kc, ap + ir * kc, bp + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc, rows, cols, first, beta);
          }
        }
      }
    }
  }
}

}  // namespace avx2
}  // namespace cpu
}  // namespace rnnfast

RNNFAST_END_AVX2
#endif  // RNNFAST_GCC_X86
