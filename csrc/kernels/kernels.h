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
// A gradient list is an array of tasks in device memory, one per block of the norm and scale
// launches: the range [begin, end) of one tensor's flat (non-overlapping, dense) memory. The glue
// cuts each tensor into tasks of at most kMultiTensorChunk elements; `tensor` is the tensor's index
// in the list (tasks of a tensor are adjacent).
enum class ElemType : int32_t { Half = 0, BFloat16 = 1, Float = 2, Double = 3 };
// Same values as rnnfast::clip::NormKind (csrc/clip.h).
enum class NormKind : int32_t { Zero = 0, One = 1, Two = 2, Inf = 3, NegInf = 4, P = 5 };

constexpr int64_t kMultiTensorChunk = 1 << 15;

struct MultiTensorTask {
  void* data;
  int64_t begin;
  int64_t end;
  ElemType dtype;
  int32_t tensor;
};

// The p-norm of the list viewed as one vector, written to out_total (a 0-dim value of out_type).
// Two launches: per-task partials into `partials` (num_tasks doubles), then a one-block finalize.
// Accumulates in float, or in double when double_acc (any float64 in the list). num_tasks may be 0
// (the norm is then 0). p is used by NormKind::P only.
cudaError_t launch_multi_tensor_norm(const MultiTensorTask* tasks, int num_tasks, NormKind kind, double p,
                                     bool double_acc, double* partials, ElemType out_type, void* out_total,
                                     cudaStream_t stream);

// grads *= clamp(max_norm / (total + 1e-6), max=1), computed on the device from `total` (0-dim, of
// total_type) as torch computes it; nothing is written when the coefficient is 1. One launch.
cudaError_t launch_multi_tensor_clip_scale(const MultiTensorTask* tasks, int num_tasks, const void* total,
                                           ElemType total_type, double max_norm, cudaStream_t stream);

}  // namespace kernels
}  // namespace rnnfast
