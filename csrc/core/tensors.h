// ATen helpers shared by every backend's host loop (CPU, CUDA, the CUDA emulation).
#pragma once
#include <ATen/ATen.h>

namespace rnnfast {
namespace core {

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
inline at::Tensor dense_copy(const at::Tensor& t) { return at::empty(t.sizes(), t.options()).copy_(t); }

}  // namespace core
}  // namespace rnnfast
