// ATen helpers shared by every backend's host loop (CPU, CUDA, the CUDA emulation).
#pragma once
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include <cstring>

namespace rnnfast {
namespace core {

// at::empty for the tensors a kernel returns: on the CPU at::detail::empty_cpu, which at::empty's
// CPU kernel runs after two dispatcher hops (~0.05 us of a small call's few), except under
// torch.use_deterministic_algorithms, whose fill of uninitialized memory only at::empty does.
inline at::Tensor new_tensor(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return opts.device().is_cpu() && !at::globalContext().deterministicAlgorithms() ? at::detail::empty_cpu(sizes, opts)
                                                                                  : at::empty(sizes, opts);
}

// h_{t-1} for every time index t, in time order, into dst (T*B, width), any row stride (one copy, no
// per-step copies): walking forward that is [hx, output[0 .. T-2]], walking in reverse
// [output[1 .. T-1], hx]. output (T, B, width), hx (B, width).
inline void fill_prev_states(const at::Tensor& dst, const at::Tensor& hx, const at::Tensor& output, bool reverse) {
  const int64_t T = output.size(0), B = output.size(1), rest = (T - 1) * B;
  dst.narrow(0, reverse ? rest : 0, B).copy_(hx);
  if (T > 1) {
    dst.narrow(0, reverse ? 0 : B, rest).copy_(output.narrow(0, reverse ? 1 : 0, T - 1).reshape({rest, dst.size(1)}));
  }
}

// A dense (contiguous, unit-strided) copy of t: the buffer a loop then writes through raw pointers
// (a clone would keep a stride-0 broadcast layout).
// On the CPU a contiguous t is one memcpy (a cell's step: no empty and copy_ dispatch).
inline at::Tensor dense_copy(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous() && !t.is_conj() && !t.is_neg()) {
    at::Tensor out = new_tensor(t.sizes(), t.options());
    if (t.numel() > 0) std::memcpy(out.data_ptr(), t.const_data_ptr(), t.nbytes());
    return out;
  }
  return at::empty(t.sizes(), t.options()).copy_(t);
}

// A fresh dense (B, cols) copy of src[t, :, col0 : col0 + cols], src (T, B, W): the final states a
// forward returns (hy from the output, cy from the workspace). On the CPU, with src contiguous,
// plain row copies: at a small size the select, narrow and clone ops cost more than the copy.
inline at::Tensor state_copy(const at::Tensor& src, int64_t t, int64_t col0, int64_t cols) {
  if (src.device().is_cpu() && src.is_contiguous()) {
    const int64_t B = src.size(1), W = src.size(2);
    const size_t esz = src.element_size(), row = static_cast<size_t>(cols) * esz;
    at::Tensor out = new_tensor({B, cols}, src.options());
    const char* s = static_cast<const char*>(src.const_data_ptr()) + (t * B * W + col0) * esz;
    char* d = static_cast<char*>(out.data_ptr());
    for (int64_t b = 0; b < B; ++b) std::memcpy(d + b * row, s + b * W * esz, row);
    return out;
  }
  return src.select(0, t).narrow(1, col0, cols).clone(at::MemoryFormat::Contiguous);
}

}  // namespace core
}  // namespace rnnfast
