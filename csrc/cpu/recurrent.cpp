// CPU registrations of the recurrent ops (schemas in csrc/ops.cpp): the shared entry points
// (csrc/core/recurrent_ops.h) over the CPU backend (backend.h) and the one host loop
// (csrc/core/loop.h). The LSTM projection (lstm_proj) is the loop's projection hook.
#include <torch/library.h>

#include "../core/recurrent_ops.h"
#include "backend.h"

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  using Ops = rnnfast::core::RecurrentOps<rnnfast::cpu::CpuFamily>;
  rnnfast::core::for_each_recurrent_op<Ops>([&](const char* name, auto fn) { m.impl(name, fn); });
}

namespace rnnfast {
namespace cpu {
// CpuFamily::gemm_into for tests (csrc/python.cpp rnnfast._C._gemm_into): whether the blocked GEMM
// took dst = [dst +] a b.
bool gemm_into_for_tests(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  return CpuFamily::gemm_into(dst, a, b, accumulate);
}
}  // namespace cpu
}  // namespace rnnfast
