// rnnfast CUDA kernels: the launcher declarations, and the only header the glue (csrc/cuda) includes.
// Framework-free: raw pointers, sizes and a cudaStream_t; every launcher returns the launch's
// cudaError_t (cudaGetLastError) so the glue can check it. No torch header may be included here.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace rnnfast {
namespace kernels {

// ---- recurrent pointwise steps (recurrent.cu; math in cells.cuh) ---------------------------------
// (declarations added by the CUDA recurrent work)

// ---- multi-tensor gradient norm and scale (multi_tensor.cu) ---------------------------------------
// (declarations added by the clipping work)

}  // namespace kernels
}  // namespace rnnfast
