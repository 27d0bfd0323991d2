// Fused per-time-step pointwise kernels of the recurrent layers (contract: csrc/ops.cpp), forward and
// backward: one kernel shape templated over the cell (math: csrc/core/cells.h; accessors and dispatch:
// step.cuh; argument layouts: kernels.h).
//
// One thread per (batch row b, hidden unit j), all gates of that unit: consecutive threads take
// consecutive j, so every gate's row block is read and written coalesced. A thread reads and
// writes only its own (b, j) elements of dh/dc, which is why those carries are updated in place.
#include "kernels.h"
#include "step.cuh"

namespace rnnfast {
namespace kernels {
namespace {

constexpr int kThreads = 256;

// Grid-stride over the B*H units; grid_for sizes the grid to cover them in one pass when it can.
template <class Cell, int kPhase>
__global__ void __launch_bounds__(kThreads) forward_step_kernel(const ForwardStepArgs a) {
  const int64_t units = a.batch * a.hidden;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units; u += int64_t(gridDim.x) * blockDim.x) {
    step::forward_unit<Cell, kPhase>(a, u);
  }
}

template <class Cell, int kPhase>
__global__ void __launch_bounds__(kThreads) backward_step_kernel(const BackwardStepArgs a) {
  const int64_t units = a.batch * a.hidden;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units; u += int64_t(gridDim.x) * blockDim.x) {
    step::backward_unit<Cell, kPhase>(a, u);
  }
}

unsigned grid_for(int64_t units) {
  const int64_t blocks = (units + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
}

struct LaunchForward {
  const ForwardStepArgs& a;
  cudaStream_t stream;
  template <class Cell, int kPhase>
  cudaError_t run() const {
    forward_step_kernel<Cell, kPhase><<<grid_for(a.batch * a.hidden), kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
};

struct LaunchBackward {
  const BackwardStepArgs& a;
  cudaStream_t stream;
  template <class Cell, int kPhase>
  cudaError_t run() const {
    backward_step_kernel<Cell, kPhase><<<grid_for(a.batch * a.hidden), kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t recurrent_forward_step(CellKind cell, int phase, const ForwardStepArgs& args, cudaStream_t stream) {
  if (args.batch <= 0 || args.hidden <= 0) {
    return phase >= 0 && phase < core::traits_of(cell).phases ? cudaSuccess : cudaErrorInvalidValue;
  }
  return step::dispatch(cell, phase, LaunchForward{args, stream});
}

cudaError_t recurrent_backward_step(CellKind cell, int phase, const BackwardStepArgs& args, cudaStream_t stream) {
  if (args.batch <= 0 || args.hidden <= 0) {
    return phase >= 0 && phase < core::traits_of(cell).phases ? cudaSuccess : cudaErrorInvalidValue;
  }
  return step::dispatch(cell, phase, LaunchBackward{args, stream});
}

}  // namespace kernels
}  // namespace rnnfast
