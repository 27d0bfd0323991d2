// Whether this build can compile code for a wider x86 ISA than its baseline inside one binary:
// gcc's `target_clones` (blas.h gemm_small_rows, backend.h's row passes) and `#pragma GCC target`
// (rows_avx512.cpp, gemm_avx512.cpp); and the run-time switch of those AVX-512 paths. x86-64 with
// GCC; clang spells these differently. The files compiled for AVX-512 include this before they
// switch their target, so the code here is always compiled for the baseline ISA (it runs before
// anyone knows what the CPU has).
#pragma once

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNFAST_GCC_X86 1
#else
#define RNNFAST_GCC_X86 0
#endif

namespace rnnfast {
namespace cpu {

inline bool cpu_has_avx512f() {
#if RNNFAST_GCC_X86
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

// An AVX-512 path's on/off switch: on where the CPU has AVX-512F and the environment does not set
// RNNFAST_DISABLE_AVX512 (read when the switch is made); set(on) refuses on where the CPU lacks it
// and returns the previous setting.
class Avx512Switch {
 public:
  bool on() const { return on_.load(std::memory_order_relaxed); }
  bool set(bool on) { return on_.exchange(on && cpu_has_avx512f()); }

 private:
  std::atomic<bool> on_{cpu_has_avx512f() && std::getenv("RNNFAST_DISABLE_AVX512") == nullptr};
};

}  // namespace cpu
}  // namespace rnnfast
