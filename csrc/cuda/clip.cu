// CUDA glue of the clipping ops (schemas in csrc/ops.cpp, semantics in csrc/clip.h, kernels in
// csrc/kernels/multi_tensor.cu). Per call: the list is cut into tasks (one per block), the task
// array goes to the device with one asynchronous copy from pinned memory, and at most three kernels
// run on the current stream (partials, finalize, scale). Nothing here waits for the device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "../clip.h"
#include "../kernels/kernels.h"

namespace rnnfast {
namespace {

namespace k = rnnfast::kernels;

k::ElemType elem_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return k::ElemType::Half;
    case at::kBFloat16: return k::ElemType::BFloat16;
    case at::kFloat: return k::ElemType::Float;
    default: return k::ElemType::Double;  // check_grads admitted only these four
  }
}

struct DeviceTasks {
  at::Tensor tasks;                 // MultiTensorTask[num_tasks] in device memory (bytes)
  int num_tasks = 0;
  bool any_double = false;
  std::vector<at::Tensor> copies;   // contiguous copies of strided views, alive until launched
  std::vector<at::Tensor> strided;  // strided grads, scaled with ATen after the kernel

  const k::MultiTensorTask* ptr() const {
    return num_tasks ? reinterpret_cast<const k::MultiTensorTask*>(tasks.data_ptr()) : nullptr;
  }
};

// Cuts the list into tasks of at most kMultiTensorChunk elements and copies them to the device
// asynchronously: pinned staging memory, non_blocking copy on the current stream (the caching host
// allocator keeps the staging block until the copy has run).
DeviceTasks build_tasks(at::TensorList grads, bool for_write) {
  DeviceTasks d;
  std::vector<k::MultiTensorTask> host;
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    d.any_double = d.any_double || g.scalar_type() == at::kDouble;
    if (g.numel() == 0) continue;
    at::Tensor flat = g;
    if (!g.is_non_overlapping_and_dense()) {  // norms and scales ignore element order: dense is enough
      flat = g.contiguous();
      d.copies.push_back(flat);
      if (for_write) d.strided.push_back(g);
    }
    const int64_t n = flat.numel();
    for (int64_t b = 0; b < n; b += k::kMultiTensorChunk)
      host.push_back({flat.data_ptr(), b, std::min(n, b + k::kMultiTensorChunk), elem_type(flat.scalar_type()),
                      static_cast<int32_t>(i)});
  }
  TORCH_CHECK(host.size() < static_cast<size_t>(INT_MAX), "rnnfast: gradient list too large (", host.size(),
              " chunks of ", k::kMultiTensorChunk, " elements)");
  d.num_tasks = static_cast<int>(host.size());
  if (d.num_tasks == 0) return d;
  const int64_t bytes = static_cast<int64_t>(host.size() * sizeof(k::MultiTensorTask));
  at::Tensor staging = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(staging.data_ptr(), host.data(), bytes);
  d.tasks = staging.to(grads[0].device(), /*non_blocking=*/true);
  return d;
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "rnnfast::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor norm_on_device(const char* op, const DeviceTasks& d, double norm_type, at::ScalarType out,
                          const at::Device& device) {
  at::Tensor partials = at::empty({std::max(d.num_tasks, 1)}, at::TensorOptions().dtype(at::kDouble).device(device));
  at::Tensor total = at::empty({}, at::TensorOptions().dtype(out).device(device));
  const k::NormKind kind = clip::norm_kind(norm_type);  // one enum (csrc/core/norm_kind.h)
  check_launch(op, k::launch_multi_tensor_norm(d.ptr(), d.num_tasks, kind, norm_type, d.any_double,
                                               partials.data_ptr<double>(), elem_type(out), total.data_ptr(),
                                               c10::cuda::getCurrentCUDAStream().stream()));
  return total;
}

void scale_on_device(const char* op, const DeviceTasks& d, double max_norm, const at::Tensor& total) {
  check_launch(op, k::launch_multi_tensor_clip_scale(d.ptr(), d.num_tasks, total.data_ptr(),
                                                     elem_type(total.scalar_type()), max_norm,
                                                     c10::cuda::getCurrentCUDAStream().stream()));
  if (d.strided.empty()) return;
  // torch's own expression on the device (no sync), for the few grads that are not dense
  const at::Tensor coef = at::clamp_max(at::reciprocal(total + 1e-6) * max_norm, 1.0);
  for (const at::Tensor& g : d.strided) g.mul_(coef);
}

at::Tensor grad_norm_cuda(at::TensorList tensors, double norm_type) {
  const at::ScalarType out = clip::check_grads("grad_norm", tensors);
  clip::check_empty_for_inf("grad_norm", tensors, clip::norm_kind(norm_type));
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  const DeviceTasks d = build_tasks(tensors, /*for_write=*/false);
  return norm_on_device("grad_norm", d, norm_type, out, tensors[0].device());
}

void clip_grads_with_norm_cuda(at::TensorList grads, double max_norm, const at::Tensor& total_norm) {
  if (grads.empty()) return;
  clip::check_grads("clip_grads_with_norm_", grads);
  clip::check_total_norm("clip_grads_with_norm_", total_norm, grads[0].device());
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const DeviceTasks d = build_tasks(grads, /*for_write=*/true);
  scale_on_device("clip_grads_with_norm_", d, max_norm, total_norm);
}

at::Tensor clip_grad_norm_cuda(at::TensorList grads, double max_norm, double norm_type) {
  const at::ScalarType out = clip::check_grads("clip_grad_norm_", grads);
  clip::check_empty_for_inf("clip_grad_norm_", grads, clip::norm_kind(norm_type));
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const DeviceTasks d = build_tasks(grads, /*for_write=*/true);
  at::Tensor total = norm_on_device("clip_grad_norm_", d, norm_type, out, grads[0].device());
  scale_on_device("clip_grad_norm_", d, max_norm, total);
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, CUDA, m) {
  m.impl("grad_norm", &grad_norm_cuda);
  m.impl("clip_grads_with_norm_", &clip_grads_with_norm_cuda);
  m.impl("clip_grad_norm_", &clip_grad_norm_cuda);
}

}  // namespace rnnfast
