// Test harness, not part of the package: the one host loop (csrc/core/loop.h) with the CUDA backend
// (csrc/cuda/backend.h) and the kernels' per-unit code (csrc/kernels/step.cuh over csrc/core/cells.h)
// compiled for the CPU, the launchers replaced by plain loops over the units. It lets tests/test_cuda_emulated.py check the CUDA path's
// GEMM wiring, pointer arithmetic, workspace layout and cell math on a machine without a GPU.
// (What it cannot check: the launch configuration, the device, streams, races.)
#define RNNFAST_HD  // host-only compile of the accessors
#include <torch/extension.h>

#include "csrc/core/recurrent_ops.h"
#include "csrc/cuda/backend.h"
#include "csrc/kernels/step.cuh"

// The CUDA runtime is not linked here; the glue only names these in error messages.
const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
const char* cudaGetErrorString(cudaError_t) { return "emulated launch failure"; }

namespace rnnfast {
namespace kernels {
namespace {

struct RunForward {
  const ForwardStepArgs& a;
  template <class Cell, int kPhase>
  cudaError_t run() const {
    for (int64_t u = 0; u < a.batch * a.hidden; ++u) step::forward_unit<Cell, kPhase>(a, u);
    return cudaSuccess;
  }
};

struct RunBackward {
  const BackwardStepArgs& a;
  template <class Cell, int kPhase>
  cudaError_t run() const {
    for (int64_t u = 0; u < a.batch * a.hidden; ++u) step::backward_unit<Cell, kPhase>(a, u);
    return cudaSuccess;
  }
};

}  // namespace

cudaError_t recurrent_forward_step(CellKind cell, int phase, const ForwardStepArgs& args, cudaStream_t) {
  return step::dispatch(cell, phase, RunForward{args});
}

cudaError_t recurrent_backward_step(CellKind cell, int phase, const BackwardStepArgs& args, cudaStream_t) {
  return step::dispatch(cell, phase, RunBackward{args});
}

}  // namespace kernels
}  // namespace rnnfast

namespace {
struct HostContext {
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static cudaStream_t stream() { return nullptr; }
};
using Ops = rnnfast::core::RecurrentOps<rnnfast::cuda::CudaFamily<HostContext>>;
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  rnnfast::core::for_each_recurrent_op<Ops>([&](const char* name, auto fn) { m.def(name, fn); });
}
