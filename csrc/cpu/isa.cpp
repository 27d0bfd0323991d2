// The SIMD paths' run-time switches (isa.h), compiled for the baseline ISA: they are read before
// anything compiled for AVX-512 or AVX2 may run.
#include <atomic>
#include <cstdlib>

#include "isa.h"

namespace rnnfast {
namespace cpu {

bool cpu_has_avx512f() {
#if RNNFAST_GCC_X86
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool cpu_has_avx2_fma() {
#if RNNFAST_GCC_X86
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

namespace {
bool avx512_allowed() { return std::getenv("RNNFAST_DISABLE_AVX512") == nullptr; }

// A switch that can be on only where `Has` says the CPU can run its path.
template <bool (*Has)()>
class Switch {
 public:
  explicit Switch(bool on) : on_(on && Has()) {}
  bool on() const { return on_.load(std::memory_order_relaxed); }
  bool set(bool on) { return on_.exchange(on && Has()); }

 private:
  std::atomic<bool> on_;
};

// The GEMMs run where one of their kernels may: AVX-512 (RNNFAST_DISABLE_AVX512 not set) or AVX2
// with FMA (RNNFAST_DISABLE_AVX2 not set, as for clip.cpp's loops).
bool has_lanes() {
  return (cpu_has_avx512f() && avx512_allowed()) ||
         (cpu_has_avx2_fma() && std::getenv("RNNFAST_DISABLE_AVX2") == nullptr);
}

Switch<cpu_has_avx512f> g_vector_rows{avx512_allowed()}, g_lanes_avx512{avx512_allowed()};
Switch<has_lanes> g_batch_lanes{true};
}  // namespace

bool vector_rows() { return g_vector_rows.on(); }
bool set_vector_rows(bool on) { return g_vector_rows.set(on); }
bool batch_lanes() { return g_batch_lanes.on(); }
bool set_batch_lanes(bool on) { return g_batch_lanes.set(on); }
bool lanes_avx512() { return g_lanes_avx512.on(); }
bool set_lanes_avx512(bool on) { return g_lanes_avx512.set(on); }

}  // namespace cpu
}  // namespace rnnfast
