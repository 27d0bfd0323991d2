// The batch-lane and panel GEMMs' entry points (gemm_avx512.h), compiled for the baseline ISA: each
// call goes to the AVX-512 kernels (gemm_avx512.cpp) where lanes_avx512() says so, else to the AVX2
// ones (gemm_avx2.cpp). Callers enter only after batch_lanes() said the CPU has one of them.
#include "gemm_avx512.h"

#if RNNFAST_BATCH_LANES
namespace rnnfast {
namespace cpu {

void batch_lanes_pack(const float* a, int64_t lda, int64_t M, int64_t K, float* at) {
  lanes_avx512() ? avx512::batch_lanes_pack(a, lda, M, K, at) : avx2::batch_lanes_pack(a, lda, M, K, at);
}

void batch_lanes_gemm(const float* w, int64_t ldw, const float* at, int64_t M, int64_t K, float* c, int64_t ldc,
                      int64_t n0, int64_t n1, bool accumulate) {
  lanes_avx512() ? avx512::batch_lanes_gemm(w, ldw, at, M, K, c, ldc, n0, n1, accumulate)
                 : avx2::batch_lanes_gemm(w, ldw, at, M, K, c, ldc, n0, n1, accumulate);
}

void panels_pack(const float* w, int64_t ldw, int64_t N, int64_t K, bool transpose, float* wp) {
  lanes_avx512() ? avx512::panels_pack(w, ldw, N, K, transpose, wp) : avx2::panels_pack(w, ldw, N, K, transpose, wp);
}

void panels_gemm(const float* a, int64_t lda, const float* wp, int64_t K, float* c, int64_t ldc, int64_t M, int64_t n0,
                 int64_t n1, bool accumulate) {
  lanes_avx512() ? avx512::panels_gemm(a, lda, wp, K, c, ldc, M, n0, n1, accumulate)
                 : avx2::panels_gemm(a, lda, wp, K, c, ldc, M, n0, n1, accumulate);
}

}  // namespace cpu
}  // namespace rnnfast
#endif  // RNNFAST_BATCH_LANES
