// The recurrent ops' entry points (schemas: csrc/ops.cpp), one set for every backend: the shared
// argument checks (args.h) plus the Family's own (CUDA: dtype, device-side lengths), the Family's
// device guard, then the one host loop (loop.h). csrc/cpu/recurrent.cpp registers
// RecurrentOps<CpuFamily> for CPU, csrc/cuda/recurrent.cu RecurrentOps<CudaFamily<...>> for CUDA,
// tests/cuda_emulation.cpp the CUDA family on the CPU.
//
// A Family adds to loop.h's concept: Guard (constructible from a c10::Device), context(),
// check_dtype(op, input), check_lengths(op, lengths, T, B, input).
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <type_traits>

#include "args.h"
#include "cells.h"
#include "grad_accumulation.h"
#include "loop.h"

namespace rnnfast {
namespace core {

// A cell's names: "rnnfast.<name>" (the op as errors name it) and its registered op names
// "<name>_forward" / "<name>_backward". Static storage: registrations may keep the pointer.
template <class Cell>
const char* qualified_name() {
  static const std::string s = std::string("rnnfast.") + Cell::name;
  return s.c_str();
}

template <class Cell>
const char* forward_op_name() {
  static const std::string s = std::string(Cell::name) + "_forward";
  return s.c_str();
}

template <class Cell>
const char* backward_op_name() {
  static const std::string s = std::string(Cell::name) + "_backward";
  return s.c_str();
}

template <class Family>
struct RecurrentOps {
  using Tensor = at::Tensor;
  using Opt = c10::optional<at::Tensor>;
  // The ops' results, by schema: forward (output, hy[, cy], workspace); backward (grad_input,
  // grad_hx[, grad_cx], grad_w_ih, grad_w_hh[, grad_w_hr], grad_b_ih, grad_b_hh).
  using StatelessForward = std::tuple<Tensor, Tensor, Tensor>;
  using StatelessBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  using CellStateForward = std::tuple<Tensor, Tensor, Tensor, Tensor>;
  using CellStateBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  using ProjectionBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

  static Tensor optional(const Opt& t) { return t.has_value() && t->defined() ? t->contiguous() : Tensor(); }

  // The problem of a checked call (tensors contiguous). cx, w_hr: nullptr when the op has none.
  static ForwardProblem make_problem(const char* op, const RecurrentArgs& a, const Tensor& lengths, const Tensor& input,
                                     const Tensor& hx, const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh,
                                     const Tensor* w_hr, const Opt& b_ih, const Opt& b_hh, bool reverse) {
    ForwardProblem p;
    p.op = op;
    p.lengths = lengths;
    p.input = input.contiguous();
    p.hx = hx.contiguous();
    if (cx) p.cx = cx->contiguous();
    p.w_ih = w_ih.contiguous();
    p.w_hh = w_hh.contiguous();
    if (w_hr) p.w_hr = w_hr->contiguous();
    p.b_ih = optional(b_ih);
    p.b_hh = optional(b_hh);
    p.T = a.T, p.B = a.B, p.I = a.I, p.H = a.H, p.P = a.P;
    p.reverse = reverse;
    return p;
  }

  template <class Cell>
  static ForwardProblem forward_problem(const char* op, const Tensor& input, const Tensor& hx, const Tensor* cx,
                                        const Tensor& w_ih, const Tensor& w_hh, const Tensor* w_hr, const Opt& b_ih,
                                        const Opt& b_hh, bool reverse, const Opt& lengths, bool workspace) {
    Family::check_dtype(op, input);
    const RecurrentArgs a = check_forward(op, Cell::traits.gates, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
    const Tensor len = Family::check_lengths(op, lengths, a.T, a.B, input);
    ForwardProblem p = make_problem(op, a, len, input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh, reverse);
    p.keep_workspace = workspace;
    return p;
  }

  template <class Cell>
  static BackwardProblem backward_problem(const char* op, const Tensor& grad_output, const Tensor& grad_hy,
                                          const Tensor* grad_cy, const Tensor& input, const Tensor& hx,
                                          const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor* w_hr,
                                          const Tensor& output, const Tensor& workspace, bool reverse, bool input_grad,
                                          const Opt& lengths, bool hx_grad) {
    AccumulationTargets into = take_accumulation_targets(w_ih, w_hh);  // first: cleared even if a check throws
    Family::check_dtype(op, input);
    const int64_t slots = workspace_slots<Cell>(w_hr != nullptr);
    const RecurrentArgs a = check_backward(op, Cell::traits.gates, slots, grad_output, grad_hy, grad_cy, input, hx,
                                           cx, w_ih, w_hh, output, workspace, w_hr);
    const Tensor len = Family::check_lengths(op, lengths, a.T, a.B, input);
    BackwardProblem p;
    static_cast<ForwardProblem&>(p) =
        make_problem(op, a, len, input, hx, cx, w_ih, w_hh, w_hr, c10::nullopt, c10::nullopt, reverse);
    p.grad_output = grad_output;  // the Family decides what layouts its steps read (grad_output_rows)
    p.grad_hy = grad_hy;
    if (grad_cy) p.grad_cy = *grad_cy;
    p.output = output.contiguous();
    p.ws = workspace.contiguous();
    p.input_grad = input_grad;
    p.hx_grad = hx_grad;
    p.into = std::move(into);
    return p;
  }

  template <class Cell>
  static ForwardResult forward(const ForwardProblem& p) {
    const typename Family::Guard guard(p.input.device());
    return recurrent_forward<Cell, Family>(Family::context(), p);
  }

  template <class Cell>
  static BackwardResult backward(const BackwardProblem& p) {
    const typename Family::Guard guard(p.input.device());
    return recurrent_backward<Cell, Family>(Family::context(), p);
  }

  // The entry points, one per shape of schema (csrc/ops.cpp's templates); forward_entry /
  // backward_entry pick a cell's. The op's name in errors is "rnnfast.<Cell::name>".

  // A cell without a cell state (RNN, GRU): no cx in, no cy out.
  template <class Cell>
  static StatelessForward stateless_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                            const Tensor& w_hh, const Opt& b_ih, const Opt& b_hh, bool reverse,
                                            const Opt& lengths, bool workspace) {
    const ForwardResult r = forward<Cell>(forward_problem<Cell>(qualified_name<Cell>(), input, hx, nullptr, w_ih,
                                                                w_hh, nullptr, b_ih, b_hh, reverse, lengths, workspace));
    return {r.output, r.hy, r.ws};
  }

  template <class Cell>
  static StatelessBackward stateless_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                                              const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                              const Tensor& output, const Tensor& workspace, bool reverse,
                                              bool input_grad, const Opt& lengths, bool hx_grad) {
    const BackwardResult r = backward<Cell>(backward_problem<Cell>(qualified_name<Cell>(), grad_output, grad_hy,
                                                                   nullptr, input, hx, nullptr, w_ih, w_hh, nullptr,
                                                                   output, workspace, reverse, input_grad, lengths, hx_grad));
    return {r.grad_input, r.grad_hx, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
  }

  // The same with the cell's option after `reverse` (gru's reset_after): true runs Cell, false its
  // Alternative (cells.h).
  template <class Cell>
  static StatelessForward option_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                         const Tensor& w_hh, const Opt& b_ih, const Opt& b_hh, bool reverse,
                                         bool option, const Opt& lengths, bool workspace) {
    using Alternative = typename AlternativeOf<Cell>::type;
    return option ? stateless_forward<Cell>(input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths, workspace)
                  : stateless_forward<Alternative>(input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths, workspace);
  }

  template <class Cell>
  static StatelessBackward option_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                                           const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                           const Tensor& output, const Tensor& workspace, bool reverse, bool option,
                                           bool input_grad, const Opt& lengths, bool hx_grad) {
    using Alternative = typename AlternativeOf<Cell>::type;
    return option ? stateless_backward<Cell>(grad_output, grad_hy, input, hx, w_ih, w_hh, output, workspace, reverse,
                                             input_grad, lengths, hx_grad)
                  : stateless_backward<Alternative>(grad_output, grad_hy, input, hx, w_ih, w_hh, output, workspace,
                                                    reverse, input_grad, lengths, hx_grad);
  }

  // A cell with a cell state (LSTM): cx in, cy out.
  template <class Cell>
  static CellStateForward cell_state_forward(const Tensor& input, const Tensor& hx, const Tensor& cx,
                                             const Tensor& w_ih, const Tensor& w_hh, const Opt& b_ih,
                                             const Opt& b_hh, bool reverse, const Opt& lengths, bool workspace) {
    const ForwardResult r = forward<Cell>(forward_problem<Cell>(qualified_name<Cell>(), input, hx, &cx, w_ih, w_hh,
                                                                nullptr, b_ih, b_hh, reverse, lengths, workspace));
    return {r.output, r.hy, r.cy, r.ws};
  }

  template <class Cell>
  static CellStateBackward cell_state_backward(const Tensor& grad_output, const Tensor& grad_hy,
                                               const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                                               const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                                               const Tensor& output, const Tensor& workspace, bool reverse,
                                               bool input_grad, const Opt& lengths, bool hx_grad) {
    const BackwardResult r = backward<Cell>(backward_problem<Cell>(qualified_name<Cell>(), grad_output, grad_hy,
                                                                   &grad_cy, input, hx, &cx, w_ih, w_hh, nullptr,
                                                                   output, workspace, reverse, input_grad, lengths, hx_grad));
    return {r.grad_input, r.grad_hx, r.grad_cx, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
  }

  // A cell's two ops, by the shape of its schema.
  template <class Cell>
  static constexpr auto forward_entry() {
    if constexpr (Cell::traits.has_cell_state()) return &cell_state_forward<Cell>;
    else if constexpr (has_option<Cell>()) return &option_forward<Cell>;
    else return &stateless_forward<Cell>;
  }

  template <class Cell>
  static constexpr auto backward_entry() {
    if constexpr (Cell::traits.has_cell_state()) return &cell_state_backward<Cell>;
    else if constexpr (has_option<Cell>()) return &option_backward<Cell>;
    else return &stateless_backward<Cell>;
  }

  // LSTM with a projection: the same loop with the LstmProjection hook (loop.h).
  static CellStateForward lstm_proj_forward(const Tensor& input, const Tensor& hx, const Tensor& cx,
                                            const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_hr,
                                            const Opt& b_ih, const Opt& b_hh, bool reverse, const Opt& lengths,
                                            bool workspace) {
    const ForwardResult r = forward<LstmCell>(forward_problem<LstmCell>("rnnfast.lstm_proj", input, hx, &cx, w_ih,
                                                                        w_hh, &w_hr, b_ih, b_hh, reverse, lengths,
                                                                        workspace));
    return {r.output, r.hy, r.cy, r.ws};
  }

  static ProjectionBackward lstm_proj_backward(const Tensor& grad_output, const Tensor& grad_hy,
                                               const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
                                               const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                                               const Tensor& w_hr, const Tensor& output, const Tensor& workspace,
                                               bool reverse, bool input_grad, const Opt& lengths, bool hx_grad) {
    const BackwardResult r = backward<LstmCell>(backward_problem<LstmCell>("rnnfast.lstm_proj", grad_output, grad_hy,
                                                                           &grad_cy, input, hx, &cx, w_ih, w_hh, &w_hr,
                                                                           output, workspace, reverse, input_grad,
                                                                           lengths, hx_grad));
    return {r.grad_input, r.grad_hx, r.grad_cx, r.grad_w_ih, r.grad_w_hh, r.grad_w_hr, r.grad_b_ih, r.grad_b_hh};
  }
};

// The recurrent ops, listed once: visit(forward name, backward name, CellTag<Cell>, projection) for
// each cell of cells.h's RNNFAST_CELLS that has ops of its own, then the LSTM projection
// (projection: std::true_type). Registrations with entry points (for_each_recurrent_op below) and
// those without (the Autograd kernels, csrc/autograd.cpp) both walk it, so a new cell gets all.
template <class Visit>
void for_each_recurrent_op_pair(const Visit& visit) {
  for_each_cell([&](auto tag) {
    using Cell = typename decltype(tag)::type;
    if constexpr (has_own_op<Cell>()) visit(forward_op_name<Cell>(), backward_op_name<Cell>(), tag, std::false_type{});
  });
  visit("lstm_proj_forward", "lstm_proj_backward", CellTag<LstmCell>{}, std::true_type{});
}

// def(name, entry point) for every recurrent op: what the backend registrations share (CPU and
// CUDA TORCH_LIBRARY_IMPL blocks, the emulation's pybind module).
template <class Ops, class Def>
void for_each_recurrent_op(const Def& def) {
  for_each_recurrent_op_pair([&](const char* forward, const char* backward, auto tag, auto projection) {
    using Cell = typename decltype(tag)::type;
    if constexpr (decltype(projection)::value) {
      def(forward, &Ops::lstm_proj_forward);
      def(backward, &Ops::lstm_proj_backward);
    } else {
      def(forward, Ops::template forward_entry<Cell>());
      def(backward, Ops::template backward_entry<Cell>());
    }
  });
}

}  // namespace core
}  // namespace rnnfast
