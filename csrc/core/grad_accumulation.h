// Weight gradients accumulated in place across the steps of one backward pass.
//
// Why: a cell stepped in a Python loop (a decoder) makes one graph node per step, and each node's
// backward returned a fresh dW_ih and dW_hh that the autograd engine then added into the gradient
// it was collecting for the weight: per step and weight a (G*H, I) result written, a second
// buffer read and written by the add, and a fresh allocation (at H = 512 a 1 MB block, which glibc
// may hand back to the kernel between steps: ~250 page faults a step, measured). Measured at
// RNNCell H = 512, B = 8: the K = 8 GEMM alone 32 us, into a fresh tensor plus the engine's add 88 us.
//
// What: the autograd node (csrc/autograd.cpp) remembers, per weight edge and graph task, the
// gradient tensor it handed the engine (a weak reference: the engine's input buffer owns it). A
// later node of the same task whose weight edge leads to the same place, finding that tensor still
// alive and the engine's alone, asks its backward op to add its dW into it (GEMMs with beta = 1)
// and returns no gradient for that edge. The engine cannot have consumed the tensor in between:
// the node the edge leads to runs only after every node of the task that feeds it.
//
// How the request reaches the op: this thread-local slot, set by the node just around its call of
// the backward op (AccumulationScope) and taken (cleared) by the op's entry when it builds its
// problem, so at most one op call sees it. The op checks shape, dtype, device and layout and drops
// a target that does not fit (it then returns that gradient as usual).
#pragma once
#include <ATen/ATen.h>

namespace rnnfast {
namespace core {

// Weight gradients deferred along a chain of one-step calls (a cell stepped in a loop): see
// csrc/autograd.cpp's Carry for why and when. The node owns this; an op that takes the request
// (T = 1, a one-phase cell without projection or lengths, `row + B <= capacity`) writes its
// pre-activation grads into rows [row, row + B) of dg (and dgh, the recurrent side, for split_grad
// cells) and its x and h_{t-1} into the same rows of x and h, allocating each at `capacity` rows
// on first use (from the ScratchPool: a fresh block would fault its pages in every time), advances
// `row` and returns no weight or bias gradient; or, asked to `flush`, also returns those of all the
// rows at once, dW_ih = dgᵀ x, dW_hh = dghᵀ h and the column sums, and sets `flushed`. The node
// tells that the op took its rows by `row` having advanced.
struct DeferredRows {
  at::Tensor dg, dgh;  // (capacity, G*H); dgh defined only for split_grad cells (it holds the recurrent side)
  at::Tensor x, h;     // (capacity, I), (capacity, P)
  int64_t row = 0, capacity = 0;
  // Set by the node: after adding its rows the op computes the weight and bias gradients of all
  // of them (as its own, honouring w_ih / w_hh below) and sets `flushed`.
  bool flush = false, flushed = false;
};

struct AccumulationTargets {
  at::Tensor w_ih, w_hh;  // either may be undefined
  // The caller drops what it did not ask for (input_grad=False): the op may return grad_input
  // undefined rather than allocate and zero it. Set by the node under the same conditions.
  bool drops_unrequested = false;
  DeferredRows* defer = nullptr;  // the node's rows to write into instead of computing dW (or null)
  // grad_hy (grad_cy) is the engine's alone, handed over: the op may use it as its running dL/dh
  // (dL/dc) buffer and return it as grad_hx (grad_cx) instead of copying it.
  bool grad_hy_owned = false, grad_cy_owned = false;
};

inline AccumulationTargets& accumulation_slot() {
  thread_local AccumulationTargets slot;
  return slot;
}

// The targets the node set for this call, if any, clearing the slot. like_ih / like_hh are the
// weights: a target is kept only if it is a contiguous tensor of their size, dtype and device.
inline AccumulationTargets take_accumulation_targets(const at::Tensor& like_ih, const at::Tensor& like_hh) {
  AccumulationTargets& slot = accumulation_slot();
  AccumulationTargets t = std::move(slot);
  slot = AccumulationTargets();
  const auto fits = [](const at::Tensor& target, const at::Tensor& like) {
    return target.defined() && target.is_contiguous() && target.sizes() == like.sizes() &&
           target.scalar_type() == like.scalar_type() && target.device() == like.device();
  };
  if (!fits(t.w_ih, like_ih)) t.w_ih = at::Tensor();
  if (!fits(t.w_hh, like_hh)) t.w_hh = at::Tensor();
  return t;
}

// Sets the slot for the duration of one backward-op call; clears it whatever happens.
class AccumulationScope {
 public:
  explicit AccumulationScope(AccumulationTargets targets) { accumulation_slot() = std::move(targets); }
  ~AccumulationScope() { accumulation_slot() = AccumulationTargets(); }
  AccumulationScope(const AccumulationScope&) = delete;
  AccumulationScope& operator=(const AccumulationScope&) = delete;
};

}  // namespace core
}  // namespace rnnfast
