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
  m.impl("rnn_tanh_forward", &Ops::rnn_tanh_forward);
  m.impl("rnn_tanh_backward", &Ops::rnn_tanh_backward);
  m.impl("rnn_relu_forward", &Ops::rnn_relu_forward);
  m.impl("rnn_relu_backward", &Ops::rnn_relu_backward);
  m.impl("gru_forward", &Ops::gru_forward);
  m.impl("gru_backward", &Ops::gru_backward);
  m.impl("lstm_forward", &Ops::lstm_forward);
  m.impl("lstm_backward", &Ops::lstm_backward);
  m.impl("lstm_proj_forward", &Ops::lstm_proj_forward);
  m.impl("lstm_proj_backward", &Ops::lstm_proj_backward);
}
