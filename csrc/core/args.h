// Argument checks and layout constants shared by every backend's recurrent ops (CPU, CUDA, the CUDA
// emulation): one clear message per mistake, naming the op and the argument (the Python layer adds
// friendlier type errors; these guard direct op calls). ATen for the tensors; no cell math here.
#pragma once
#include <ATen/ATen.h>

#include "cells.h"

#include <algorithm>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace rnnfast {
namespace core {

inline std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << "(";
  for (size_t k = 0; k < s.size(); ++k) os << (k ? ", " : "") << s[k];
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// What an op was given, after the shape of its recurrent problem was read off input and hx.
struct RecurrentArgs {
  const char* op;  // "rnnfast.lstm"
  int64_t gates;   // G
  int64_t T, B, I, H;
  int64_t P;       // width of h: H, or the projection's P (LSTM with w_hr)
};

// LSTM with a projection (lstm_proj ops): the workspace is LstmCell's slots and m = o tanh(c), the
// projection's input: (T, B, kLstmProjSlots*H) = [i, f, g, o, c, m].
constexpr int64_t kLstmProjSlotM = LstmCell::kNumSlots;
constexpr int64_t kLstmProjSlots = kLstmProjSlotM + 1;

inline void check_same_kind(const char* op, const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but input has dtype ", ref.scalar_type(), " (all tensors must share one dtype)");
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but input is on ",
              ref.device(), " (all tensors must be on one device)");
}

// A symbolic shape for a message: a string, or a callable that builds one. Messages are built only
// when a check fails (a small call checks a dozen shapes: building their strings up front cost
// about a microsecond per call).
inline const char* text(const char* s) { return s; }
template <class F, class = decltype(std::declval<const F&>()())>
std::string text(const F& build) {
  return build();
}

template <class Sym>
void check_shape(const char* op, const at::Tensor& t, const char* name, at::IntArrayRef want, const Sym& symbolic) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", text(symbolic), " = ", shape_str(want),
              ", got ", shape_str(t.sizes()));
}

template <class Sym>
void check_rank(const char* op, const at::Tensor& t, const char* name, int64_t rank, const Sym& symbolic) {
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must be ", rank, "-D ", text(symbolic), ", got ", t.dim(),
              "-D with shape ", shape_str(t.sizes()));
}

inline std::string gates_times(int64_t G) { return G == 1 ? std::string("H") : std::to_string(G) + "*H"; }

// Checks the forward arguments and returns the problem sizes. cx is checked when given. With w_hr
// (P, H) (LSTM projection; cx required) hx and the columns of w_hh are P wide and H is read off cx.
inline RecurrentArgs check_forward(const char* op, int64_t G, const at::Tensor& input, const at::Tensor& hx,
                                   const at::Tensor* cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                   const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                   const at::Tensor* w_hr = nullptr) {
  TORCH_INTERNAL_ASSERT(!w_hr || cx, "a projection needs cx");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": supports float32 and float64 on CPU, got input of dtype ", input.scalar_type());
  const std::string hs = w_hr ? "P" : "H";  // the width of h (short: no allocation)
  check_rank(op, input, "input", 3, "(T, B, I)");
  check_rank(op, hx, "hx", 2, [&] { return "(B, " + hs + ")"; });
  check_rank(op, w_ih, "w_ih", 2, "(G*H, I)");
  check_rank(op, w_hh, "w_hh", 2, [&] { return "(G*H, " + hs + ")"; });
  check_same_kind(op, input, hx, "hx");
  check_same_kind(op, input, w_ih, "w_ih");
  check_same_kind(op, input, w_hh, "w_hh");
  if (w_hr) {
    check_rank(op, *cx, "cx", 2, "(B, H)");
    check_rank(op, *w_hr, "w_hr", 2, "(P, H)");
    check_same_kind(op, input, *w_hr, "w_hr");
  }
  const int64_t P = hx.size(1);
  RecurrentArgs a{op, G, input.size(0), input.size(1), input.size(2), w_hr ? cx->size(1) : P, P};
  TORCH_CHECK(a.T > 0, op, ": expected sequence length > 0 (as torch.nn), got input of shape ",
              shape_str(input.sizes()));
  check_shape(op, hx, "hx", {a.B, a.P}, [&] { return "(B, " + hs + ")"; });
  check_shape(op, w_hh, "w_hh", {G * a.H, a.P}, [&] { return "(" + gates_times(G) + ", " + hs + ")"; });
  check_shape(op, w_ih, "w_ih", {G * a.H, a.I}, [&] { return "(" + gates_times(G) + ", I)"; });
  if (cx) {
    check_rank(op, *cx, "cx", 2, "(B, H)");
    check_same_kind(op, input, *cx, "cx");
    check_shape(op, *cx, "cx", {a.B, a.H}, "(B, H)");
  }
  if (w_hr) check_shape(op, *w_hr, "w_hr", {a.P, a.H}, "(P, H)");
  const char* names[2] = {"b_ih", "b_hh"};
  const c10::optional<at::Tensor>* biases[2] = {&b_ih, &b_hh};
  for (int k = 0; k < 2; ++k) {
    if (biases[k]->has_value() && (*biases[k])->defined()) {
      const at::Tensor& b = **biases[k];
      check_same_kind(op, input, b, names[k]);
      check_shape(op, b, names[k], {G * a.H}, [&] { return "(" + gates_times(G) + ",)"; });
    }
  }
  return a;
}

// Checks what backward gets beyond the forward's arguments: incoming grads, output, workspace
// (w_hr: as in check_forward; grad_output, grad_hy and output are then P wide).
inline RecurrentArgs check_backward(const char* op, int64_t G, int64_t ws_width, const at::Tensor& grad_output,
                                    const at::Tensor& grad_hy, const at::Tensor* grad_cy, const at::Tensor& input,
                                    const at::Tensor& hx, const at::Tensor* cx, const at::Tensor& w_ih,
                                    const at::Tensor& w_hh, const at::Tensor& output, const at::Tensor& workspace,
                                    const at::Tensor* w_hr = nullptr) {
  RecurrentArgs a = check_forward(op, G, input, hx, cx, w_ih, w_hh, c10::nullopt, c10::nullopt, w_hr);
  const std::string hs = w_hr ? "P" : "H";
  check_same_kind(op, input, grad_output, "grad_output");
  check_same_kind(op, input, grad_hy, "grad_hy");
  check_same_kind(op, input, output, "output");
  check_same_kind(op, input, workspace, "workspace");
  check_shape(op, grad_output, "grad_output", {a.T, a.B, a.P}, [&] { return "(T, B, " + hs + ")"; });
  check_shape(op, grad_hy, "grad_hy", {a.B, a.P}, [&] { return "(B, " + hs + ")"; });
  check_shape(op, output, "output", {a.T, a.B, a.P}, [&] { return "(T, B, " + hs + ")"; });
  if (grad_cy) {
    check_same_kind(op, input, *grad_cy, "grad_cy");
    check_shape(op, *grad_cy, "grad_cy", {a.B, a.H}, "(B, H)");
  }
  if (ws_width == 0) {
    check_shape(op, workspace, "workspace", {0}, "(0,)");
  } else {
    check_shape(op, workspace, "workspace", {a.T, a.B, ws_width * a.H},
                [&] { return "(T, B, " + std::to_string(ws_width) + "*H)"; });
  }
  return a;
}

// Optional per-sequence lengths (variable-length batches, see csrc/ops.cpp): int64 (B,) on the CPU
// with values in [0, T]. Returns them contiguous, or an undefined tensor when not given.
inline at::Tensor check_lengths(const char* op, const c10::optional<at::Tensor>& lengths, int64_t T, int64_t B) {
  if (!lengths.has_value() || !lengths->defined()) return at::Tensor();
  const at::Tensor& l = *lengths;
  TORCH_CHECK(l.device().is_cpu(), op, ": lengths must be a CPU tensor (as PackedSequence.batch_sizes), got one on ",
              l.device());
  TORCH_CHECK(l.scalar_type() == at::kLong, op, ": lengths must have dtype int64, got ", l.scalar_type());
  check_rank(op, l, "lengths", 1, "(B,)");
  check_shape(op, l, "lengths", {B}, "(B,)");
  at::Tensor c = l.contiguous();
  if (B == 0) return c;
  const int64_t* v = c.const_data_ptr<int64_t>();
  const auto [lo, hi] = std::minmax_element(v, v + B);
  TORCH_CHECK(*lo >= 0 && *hi <= T, op, ": lengths must lie in [0, T] = [0, ", T, "], got values in [", *lo, ", ", *hi,
              "]");
  // Lengths that freeze no row (all T: a PackedSequence of equal lengths) are no lengths: the ops then
  // take the plain path (the same numbers, none of the per-row freezing checks or zeroed padding).
  return *lo == T ? at::Tensor() : c;
}

}  // namespace core
}  // namespace rnnfast
