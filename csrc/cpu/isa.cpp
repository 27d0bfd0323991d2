// The AVX-512 paths' run-time switches (isa.h), compiled for the baseline ISA: they are read before
// anything compiled for AVX-512 may run.
#include <atomic>
#include <cstdlib>

#include "isa.h"

namespace rnnfast {
namespace cpu {

namespace {
bool cpu_has_avx512f() {
#if RNNFAST_GCC_X86
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

class Avx512Switch {
 public:
  bool on() const { return on_.load(std::memory_order_relaxed); }
  bool set(bool on) { return on_.exchange(on && cpu_has_avx512f()); }

 private:
  std::atomic<bool> on_{cpu_has_avx512f() && std::getenv("RNNFAST_DISABLE_AVX512") == nullptr};
};

Avx512Switch g_vector_rows, g_batch_lanes;
}  // namespace

bool vector_rows() { return g_vector_rows.on(); }
bool set_vector_rows(bool on) { return g_vector_rows.set(on); }
bool batch_lanes() { return g_batch_lanes.on(); }
bool set_batch_lanes(bool on) { return g_batch_lanes.set(on); }

}  // namespace cpu
}  // namespace rnnfast
