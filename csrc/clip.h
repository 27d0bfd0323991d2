// Host-side helpers shared by the CPU (csrc/cpu/clip.cpp) and CUDA (csrc/cuda/clip.cu) clipping
// ops: argument checks, the result dtype, and torch's clip coefficient arithmetic.
//
// Semantics follow torch.nn.utils.clip_grad_norm_ (torch 2.13):
//   total = ||concat(grads)||_p in the promoted dtype of all grads,
//   coef  = clamp(max_norm / (total + 1e-6), max=1), evaluated the way torch evaluates it on a 0-dim
//           tensor of the result dtype: t + 1e-6, reciprocal, times max_norm, each rounded to that
//           dtype (half/bfloat16 compute in float, as ATen's opmath does);
//   grad *= coef, in float for float16/bfloat16/float32 grads and in double for float64 grads.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/norm_kind.h"

namespace rnnfast {
namespace clip {

using core::NormKind;

inline NormKind norm_kind(double p) {
  if (p == 2.0) return NormKind::Two;
  if (p == 1.0) return NormKind::One;
  if (p == 0.0) return NormKind::Zero;
  if (std::isinf(p)) return p > 0 ? NormKind::Inf : NormKind::NegInf;
  return NormKind::P;
}

inline bool supported_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// Checks a gradient list for the fused ops; returns the dtype of the total norm (torch.stack's
// promotion of all grad dtypes). Inputs the fused path does not take (mixed devices, sparse or
// complex grads) raise NotImplementedError, which rnnfast/clip.py answers by falling back to
// torch's own implementation; malformed inputs raise ValueError/TypeError.
inline at::ScalarType check_grads(const char* op, at::TensorList grads) {
  TORCH_CHECK_VALUE(!grads.empty(), "rnnfast::", op, ": expected at least one tensor, got an empty list");
  const at::Device device = grads[0].device();
  at::ScalarType out = grads[0].scalar_type();
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK_VALUE(g.defined(), "rnnfast::", op, ": tensor ", i, " is undefined (None)");
    TORCH_CHECK_NOT_IMPLEMENTED(g.layout() == at::kStrided, "rnnfast::", op, ": tensor ", i,
                                " has layout ", g.layout(), "; only strided (dense) tensors are supported");
    TORCH_CHECK_NOT_IMPLEMENTED(g.device() == device, "rnnfast::", op,
                                ": all tensors must be on one device, but tensor 0 is on ", device,
                                " and tensor ", i, " is on ", g.device());
    TORCH_CHECK_NOT_IMPLEMENTED(!at::isComplexType(g.scalar_type()), "rnnfast::", op, ": tensor ", i,
                                " is complex (", g.scalar_type(), "); only real floating dtypes are supported");
    TORCH_CHECK_TYPE(supported_dtype(g.scalar_type()), "rnnfast::", op, ": tensor ", i, " has dtype ",
                     g.scalar_type(), "; expected float16, bfloat16, float32 or float64");
    out = at::promote_types(out, g.scalar_type());
  }
  return out;
}

// torch raises for the +-inf norm of an empty tensor (a max/min has no identity); so do we.
inline void check_empty_for_inf(const char* op, at::TensorList grads, NormKind kind) {
  if (kind != NormKind::Inf && kind != NormKind::NegInf) return;
  for (size_t i = 0; i < grads.size(); ++i) {
    TORCH_CHECK(grads[i].numel() > 0, "rnnfast::", op, ": cannot compute the ",
                kind == NormKind::Inf ? "infinity" : "-infinity", " norm of tensor ", i,
                ", which is empty: the operation has no identity (torch raises here too)");
  }
}

inline void check_total_norm(const char* op, const at::Tensor& total, const at::Device& device) {
  TORCH_CHECK_VALUE(total.dim() == 0, "rnnfast::", op, ": total_norm must be a 0-dim tensor, got shape ",
                    total.sizes());
  TORCH_CHECK_TYPE(supported_dtype(total.scalar_type()), "rnnfast::", op,
                   ": total_norm must be float16, bfloat16, float32 or float64, got ", total.scalar_type());
  TORCH_CHECK_VALUE(total.device() == device, "rnnfast::", op, ": total_norm is on ", total.device(),
                    " but the grads are on ", device);
}

// The clip coefficient as torch computes it on a 0-dim tensor of dtype T (opmath O).
template <typename T, typename O>
inline double coef_as_torch(double total, double max_norm) {
  const T t = static_cast<T>(total);
  const T shifted = static_cast<T>(static_cast<O>(t) + static_cast<O>(1e-6));
  const T recip = static_cast<T>(O(1) / static_cast<O>(shifted));
  const T coef = static_cast<T>(static_cast<O>(recip) * static_cast<O>(max_norm));
  const double c = static_cast<double>(static_cast<O>(coef));
  return c > 1.0 ? 1.0 : c;  // clamp(max=1) keeps NaN
}

inline double clip_coef(at::ScalarType out, double total, double max_norm) {
  switch (out) {
    case at::kHalf: return coef_as_torch<c10::Half, float>(total, max_norm);
    case at::kBFloat16: return coef_as_torch<c10::BFloat16, float>(total, max_norm);
    case at::kFloat: return coef_as_torch<float, float>(total, max_norm);
    default: return coef_as_torch<double, double>(total, max_norm);
  }
}

}  // namespace clip
}  // namespace rnnfast
