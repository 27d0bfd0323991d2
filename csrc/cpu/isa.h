// Compiling for a wider x86 ISA than the baseline inside one binary: whether this build can (gcc's
// `target_clones`, blas.h gemm_small_rows and backend.h's row passes; `#pragma GCC target`,
// rows_avx512.cpp and gemm_avx512.cpp: x86-64 with GCC, clang spells these differently), the
// force-inline markers such code needs, and the run-time switches of the AVX-512 paths (defined in
// isa.cpp, compiled for the baseline ISA). No code here, so any file may include it before switching
// its target.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNFAST_GCC_X86 1
#else
#define RNNFAST_GCC_X86 0
#endif

// Everything a loop compiled for a wider ISA calls is force-inlined, so that the loop's clone (or
// the file compiled for AVX-512) inlines it too: gcc does not inline across target options
// otherwise, and the loop would not vectorize. The lambda form goes after a lambda's parameters.
#define RNNFAST_ALWAYS_INLINE inline __attribute__((always_inline))
#define RNNFAST_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

// The code between these two is compiled for AVX-512F (with FMA): the files written for AVX-512
// (rows_avx512.cpp, gemm_avx512.cpp) put them around everything after their standard headers and
// isa.h. gcc 12 reports the undefined vectors inside the masked-load intrinsics as
// maybe-uninitialized, so that warning is off in between. Only where RNNFAST_GCC_X86.
#define RNNFAST_BEGIN_AVX512                                                                  \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,fma\")") _Pragma("GCC diagnostic push") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define RNNFAST_END_AVX512 _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
// The same for AVX2 with FMA (gemm_avx2.cpp).
#define RNNFAST_BEGIN_AVX2                                                                  \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")") _Pragma("GCC diagnostic push") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define RNNFAST_END_AVX2 _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")

namespace rnnfast {
namespace cpu {

// The SIMD paths' switches, read once at load; set_*(on) turns one on or off (tests compare the
// paths), refuses on where the CPU lacks what it needs, and returns the previous setting.
// vector_rows: the forward row passes on AVX-512 vectors (rows_avx512.h); on where the CPU has
// AVX-512F and the environment does not set RNNFAST_DISABLE_AVX512.
bool vector_rows();
bool set_vector_rows(bool on);
// batch_lanes: the batch-lane GEMM and the panel GEMM (gemm_avx512.h); on where one of their
// kernels may run: AVX-512F without RNNFAST_DISABLE_AVX512, or AVX2 with FMA without
// RNNFAST_DISABLE_AVX2. lanes_avx512: which kernels they run, the AVX-512 ones
// (gemm_avx512.cpp; on where the CPU has AVX-512F and RNNFAST_DISABLE_AVX512 is not set) or the
// AVX2 ones (gemm_avx2.cpp): the same numerics, so the same bits.
bool batch_lanes();
bool set_batch_lanes(bool on);
bool lanes_avx512();
bool set_lanes_avx512(bool on);
// What the CPU has (the switches' probes; also blas.h gemm_small's dispatch).
bool cpu_has_avx512f();
bool cpu_has_avx2_fma();

}  // namespace cpu
}  // namespace rnnfast
