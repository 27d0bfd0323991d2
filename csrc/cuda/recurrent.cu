// CUDA registrations of the recurrent ops: the shared entry points (csrc/core/recurrent_ops.h) over
// the CUDA backend (backend.h) on the current CUDA device and stream. Only c10/cuda headers (not
// ATen/cuda/CUDAContext.h, which pulls in the cuBLAS/cuSPARSE headers) so that CI can compile this
// file against a CPU torch wheel plus nvcc.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../core/recurrent_ops.h"
#include "backend.h"

namespace rnnfast {
namespace cuda {
namespace {

struct DeviceContext {
  using Guard = c10::cuda::CUDAGuard;  // the inputs' device for the op's duration
  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
};

}  // namespace
}  // namespace cuda
}  // namespace rnnfast

TORCH_LIBRARY_IMPL(rnnfast, CUDA, m) {
  using Ops = rnnfast::core::RecurrentOps<rnnfast::cuda::CudaFamily<rnnfast::cuda::DeviceContext>>;
  rnnfast::core::for_each_recurrent_op<Ops>([&](const char* name, auto fn) { m.impl(name, fn); });
}
