// Multi-tensor gradient norm and scale (declared in kernels.h). Framework-free: no torch header.
//
// A gradient list is described by an array of MultiTensorTask in device memory, one per block:
// a [begin, end) range of one tensor's flat memory and its element type. The glue cuts every tensor
// into ranges of at most kMultiTensorChunk elements, so one launch covers any number of tensors of
// any mix of float16/bfloat16/float32/float64, with no host synchronization:
//
//   1. norm_partials_kernel   one partial per task (sum |x|^p, sum |x|, sum x^2, max/min |x|, or a
//                              nonzero count), block-reduced in Acc and stored as double;
//   2. norm_finalize_kernel   one block: combines the partials in a fixed order (deterministic),
//                              takes the root, rounds to the result dtype, writes the 0-dim total;
//   3. clip_scale_kernel      every block recomputes torch's coefficient from the total
//                              (max_norm / (total + 1e-6), clamped at 1, in the total's dtype) and
//                              scales its range in place; a coefficient of exactly 1 writes nothing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "kernels.h"

namespace rnnfast {
namespace kernels {
namespace {

constexpr int kNormThreads = 256;
constexpr int kScaleThreads = 256;
constexpr int kFinalizeThreads = 512;
constexpr int kUnroll = 4;

// ---- element loads/stores: every dtype goes through float (or double for float64) ------------------
template <typename Acc>
__device__ __forceinline__ Acc load_as(const void* data, ElemType t, int64_t i) {
  switch (t) {
    case ElemType::Half: return static_cast<Acc>(__half2float(static_cast<const __half*>(data)[i]));
    case ElemType::BFloat16: return static_cast<Acc>(__bfloat162float(static_cast<const __nv_bfloat16*>(data)[i]));
    case ElemType::Float: return static_cast<Acc>(static_cast<const float*>(data)[i]);
    default: return static_cast<Acc>(static_cast<const double*>(data)[i]);
  }
}

// x^p for x >= 0 (or NaN). double pow() spills registers on sm_90 (its accurate internal path), so
// the double version goes through exp2/log2: relative error ~|p log2 x| * 2^-53, far below what a
// norm needs; 0, inf and NaN behave as pow's (0^p = 0 or inf by the sign of p, inf^p likewise).
__device__ __forceinline__ float pow_nonneg(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double pow_nonneg(double x, double p) { return exp2(p * log2(x)); }

// ---- the reductions: step folds one element in, combine merges accumulators ------------------------
// Max and min propagate NaN (fmax/fmin would drop it; torch's inf norms return NaN).
template <NormKind K, typename Acc>
struct Reduce {
  __device__ static Acc identity() {
    return K == NormKind::NegInf ? static_cast<Acc>(INFINITY) : static_cast<Acc>(0);
  }
  __device__ static Acc step(Acc a, Acc v, Acc p) {
    const Acc x = v < 0 ? -v : v;  // |v|, NaN stays NaN
    switch (K) {
      case NormKind::Zero: return a + (v != static_cast<Acc>(0) ? static_cast<Acc>(1) : static_cast<Acc>(0));
      case NormKind::One: return a + x;
      case NormKind::Two: return a + v * v;
      case NormKind::Inf: return (x > a || x != x) ? x : a;
      case NormKind::NegInf: return (x < a || x != x) ? x : a;
      default: return a + pow_nonneg(x, p);
    }
  }
  __device__ static Acc combine(Acc a, Acc b) {
    switch (K) {
      case NormKind::Inf: return (b > a || b != b) ? b : a;
      case NormKind::NegInf: return (b < a || b != b) ? b : a;
      default: return a + b;
    }
  }
};

template <NormKind K, typename Acc>
__device__ Acc block_reduce(Acc v) {
  __shared__ Acc warp_results[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (int offset = 16; offset > 0; offset >>= 1)
    v = Reduce<K, Acc>::combine(v, __shfl_down_sync(0xffffffffu, v, offset));
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = lane < nwarps ? warp_results[lane] : Reduce<K, Acc>::identity();
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1)
      v = Reduce<K, Acc>::combine(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  return v;  // valid in thread 0
}

template <NormKind K, typename Acc>
__global__ void __launch_bounds__(kNormThreads) norm_partials_kernel(const MultiTensorTask* __restrict__ tasks, double p,
                                                                    double* __restrict__ partials) {
  const MultiTensorTask task = tasks[blockIdx.x];
  const Acc pa = static_cast<Acc>(p);
  Acc acc = Reduce<K, Acc>::identity();
  // kUnroll independent loads in flight per thread, consecutive threads on consecutive elements.
  for (int64_t i = task.begin + threadIdx.x; i < task.end; i += static_cast<int64_t>(blockDim.x) * kUnroll) {
    Acc v[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t j = i + static_cast<int64_t>(k) * blockDim.x;
      ok[k] = j < task.end;
      v[k] = ok[k] ? load_as<Acc>(task.data, task.dtype, j) : static_cast<Acc>(0);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (ok[k]) acc = Reduce<K, Acc>::step(acc, v[k], pa);
  }
  acc = block_reduce<K, Acc>(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = static_cast<double>(acc);
}

__device__ double round_to(ElemType t, double v) {
  switch (t) {
    case ElemType::Half: return static_cast<double>(__half2float(__float2half_rn(static_cast<float>(v))));
    case ElemType::BFloat16: return static_cast<double>(__bfloat162float(__float2bfloat16_rn(static_cast<float>(v))));
    case ElemType::Float: return static_cast<double>(static_cast<float>(v));
    default: return v;
  }
}

__device__ void store_as(void* out, ElemType t, double v) {
  switch (t) {
    case ElemType::Half: *static_cast<__half*>(out) = __float2half_rn(static_cast<float>(v)); break;
    case ElemType::BFloat16: *static_cast<__nv_bfloat16*>(out) = __float2bfloat16_rn(static_cast<float>(v)); break;
    case ElemType::Float: *static_cast<float*>(out) = static_cast<float>(v); break;
    default: *static_cast<double*>(out) = v; break;
  }
}

// One block: partials combined in a fixed order (strided per thread, then the fixed tree), so the
// norm is reproducible run to run.
template <NormKind K>
__global__ void __launch_bounds__(kFinalizeThreads) norm_finalize_kernel(const double* __restrict__ partials,
                                                                        const MultiTensorTask* __restrict__ tasks,
                                                                        int num_tasks, double p, ElemType out_type,
                                                                        void* __restrict__ out_total) {
  double acc = Reduce<K, double>::identity();
  if (K == NormKind::Zero) {
    // torch's 0-"norm" of a list counts the tensors holding a nonzero; tasks of a tensor are adjacent
    if (threadIdx.x == 0) {
      int last = -1;
      for (int i = 0; i < num_tasks; ++i) {
        if (partials[i] > 0.0 && tasks[i].tensor != last) {
          acc += 1.0;
          last = tasks[i].tensor;
        }
      }
    }
  } else {
    for (int i = threadIdx.x; i < num_tasks; i += blockDim.x) acc = Reduce<K, double>::combine(acc, partials[i]);
    acc = block_reduce<K, double>(acc);
  }
  if (threadIdx.x != 0) return;
  if (num_tasks == 0) acc = 0.0;
  double norm = acc;
  if (K == NormKind::One || K == NormKind::Two || K == NormKind::P) {
    // torch accumulates half/bfloat16/float32 norms in float: beyond FLT_MAX the sum is inf there.
    if (out_type != ElemType::Double && acc > static_cast<double>(FLT_MAX)) acc = INFINITY;
    norm = K == NormKind::One ? acc : K == NormKind::Two ? sqrt(acc) : pow_nonneg(acc, 1.0 / p);
  }
  store_as(out_total, out_type, norm);
}

// torch's clip coefficient on a 0-dim tensor of dtype t: (t + 1e-6), reciprocal, times max_norm, each
// rounded to t (float opmath for half/bfloat16/float32, double for float64), clamped at 1 (NaN kept).
__device__ double clip_coef(const void* total, ElemType t, double max_norm) {
  if (t == ElemType::Double) {
    const double c = (1.0 / (*static_cast<const double*>(total) + 1e-6)) * max_norm;
    return c > 1.0 ? 1.0 : c;
  }
  const double v = static_cast<double>(load_as<float>(total, t, 0));
  const double shifted = round_to(t, static_cast<float>(v) + 1e-6f);
  const double recip = round_to(t, 1.0f / static_cast<float>(shifted));
  const double c = round_to(t, static_cast<float>(recip) * static_cast<float>(max_norm));
  return c > 1.0 ? 1.0 : c;
}

__global__ void __launch_bounds__(kScaleThreads) clip_scale_kernel(const MultiTensorTask* __restrict__ tasks,
                                                                  const void* __restrict__ total, ElemType total_type,
                                                                  double max_norm) {
  const double coef = clip_coef(total, total_type, max_norm);
  if (coef == 1.0) return;  // x * 1 == x: torch's multiply would change nothing
  const MultiTensorTask task = tasks[blockIdx.x];
  const float cf = static_cast<float>(coef);
  const int64_t stride = static_cast<int64_t>(blockDim.x);
  switch (task.dtype) {
    case ElemType::Half: {
      __half* x = static_cast<__half*>(task.data);
      for (int64_t i = task.begin + threadIdx.x; i < task.end; i += stride) x[i] = __float2half_rn(__half2float(x[i]) * cf);
      break;
    }
    case ElemType::BFloat16: {
      __nv_bfloat16* x = static_cast<__nv_bfloat16*>(task.data);
      for (int64_t i = task.begin + threadIdx.x; i < task.end; i += stride)
        x[i] = __float2bfloat16_rn(__bfloat162float(x[i]) * cf);
      break;
    }
    case ElemType::Float: {
      float* x = static_cast<float*>(task.data);
      for (int64_t i = task.begin + threadIdx.x; i < task.end; i += stride) x[i] *= cf;
      break;
    }
    default: {
      double* x = static_cast<double*>(task.data);
      for (int64_t i = task.begin + threadIdx.x; i < task.end; i += stride) x[i] *= coef;
      break;
    }
  }
}

template <NormKind K>
cudaError_t launch_norm(const MultiTensorTask* tasks, int num_tasks, double p, bool double_acc, double* partials,
                        ElemType out_type, void* out_total, cudaStream_t stream) {
  if (num_tasks > 0) {
    if (double_acc)
      norm_partials_kernel<K, double><<<num_tasks, kNormThreads, 0, stream>>>(tasks, p, partials);
    else
      norm_partials_kernel<K, float><<<num_tasks, kNormThreads, 0, stream>>>(tasks, p, partials);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  norm_finalize_kernel<K><<<1, kFinalizeThreads, 0, stream>>>(partials, tasks, num_tasks, p, out_type, out_total);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_multi_tensor_norm(const MultiTensorTask* tasks, int num_tasks, NormKind kind, double p,
                                     bool double_acc, double* partials, ElemType out_type, void* out_total,
                                     cudaStream_t stream) {
  switch (kind) {
    case NormKind::Zero: return launch_norm<NormKind::Zero>(tasks, num_tasks, p, double_acc, partials, out_type, out_total, stream);
    case NormKind::One: return launch_norm<NormKind::One>(tasks, num_tasks, p, double_acc, partials, out_type, out_total, stream);
    case NormKind::Two: return launch_norm<NormKind::Two>(tasks, num_tasks, p, double_acc, partials, out_type, out_total, stream);
    case NormKind::Inf: return launch_norm<NormKind::Inf>(tasks, num_tasks, p, double_acc, partials, out_type, out_total, stream);
    case NormKind::NegInf: return launch_norm<NormKind::NegInf>(tasks, num_tasks, p, double_acc, partials, out_type, out_total, stream);
    default: return launch_norm<NormKind::P>(tasks, num_tasks, p, double_acc, partials, out_type, out_total, stream);
  }
}

cudaError_t launch_multi_tensor_clip_scale(const MultiTensorTask* tasks, int num_tasks, const void* total,
                                           ElemType total_type, double max_norm, cudaStream_t stream) {
  if (num_tasks == 0) return cudaSuccess;
  clip_scale_kernel<<<num_tasks, kScaleThreads, 0, stream>>>(tasks, total, total_type, max_norm);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace rnnfast
