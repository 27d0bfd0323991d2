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

#include <tuple>

#include "args.h"
#include "cells.h"
#include "loop.h"

namespace rnnfast {
namespace core {

template <class Family>
struct RecurrentOps {
  using Tensor = at::Tensor;
  using Opt = c10::optional<at::Tensor>;
  // The ops' results, by schema: forward (output, hy[, cy], workspace); backward (grad_input,
  // grad_hx[, grad_cx], grad_w_ih, grad_w_hh[, grad_w_hr], grad_b_ih, grad_b_hh).
  using StatelessForward = std::tuple<Tensor, Tensor, Tensor>;
  using StatelessBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  using LstmForward = std::tuple<Tensor, Tensor, Tensor, Tensor>;
  using LstmBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  using LstmProjBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

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
                                        const Opt& b_hh, bool reverse, const Opt& lengths) {
    Family::check_dtype(op, input);
    const RecurrentArgs a = check_forward(op, Cell::traits.gates, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
    const Tensor len = Family::check_lengths(op, lengths, a.T, a.B, input);
    return make_problem(op, a, len, input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh, reverse);
  }

  template <class Cell>
  static BackwardProblem backward_problem(const char* op, const Tensor& grad_output, const Tensor& grad_hy,
                                          const Tensor* grad_cy, const Tensor& input, const Tensor& hx,
                                          const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor* w_hr,
                                          const Tensor& output, const Tensor& workspace, bool reverse, bool input_grad,
                                          const Opt& lengths) {
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

  // Cells without a cell state (RNN, GRU): no cx in, no cy out.
  template <class Cell>
  static StatelessForward stateless_forward(const char* op, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                            const Tensor& w_hh, const Opt& b_ih, const Opt& b_hh, bool reverse,
                                            const Opt& lengths) {
    const ForwardResult r = forward<Cell>(
        forward_problem<Cell>(op, input, hx, nullptr, w_ih, w_hh, nullptr, b_ih, b_hh, reverse, lengths));
    return {r.output, r.hy, r.ws};
  }

  template <class Cell>
  static StatelessBackward stateless_backward(const char* op, const Tensor& grad_output, const Tensor& grad_hy,
                                              const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                              const Tensor& w_hh, const Tensor& output, const Tensor& workspace,
                                              bool reverse, bool input_grad, const Opt& lengths) {
    const BackwardResult r = backward<Cell>(backward_problem<Cell>(op, grad_output, grad_hy, nullptr, input, hx,
                                                                   nullptr, w_ih, w_hh, nullptr, output, workspace,
                                                                   reverse, input_grad, lengths));
    return {r.grad_input, r.grad_hx, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
  }

  static StatelessForward rnn_tanh_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                           const Tensor& w_hh, const Opt& b_ih, const Opt& b_hh, bool reverse,
                                           const Opt& lengths) {
    return stateless_forward<RnnTanhCell>("rnnfast.rnn_tanh", input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths);
  }

  static StatelessForward rnn_relu_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                           const Tensor& w_hh, const Opt& b_ih, const Opt& b_hh, bool reverse,
                                           const Opt& lengths) {
    return stateless_forward<RnnReluCell>("rnnfast.rnn_relu", input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths);
  }

  static StatelessForward gru_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                      const Opt& b_ih, const Opt& b_hh, bool reverse, bool reset_after,
                                      const Opt& lengths) {
    return reset_after
               ? stateless_forward<GruCell>("rnnfast.gru", input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths)
               : stateless_forward<GruResetBeforeCell>("rnnfast.gru", input, hx, w_ih, w_hh, b_ih, b_hh, reverse,
                                                       lengths);
  }

  static StatelessBackward rnn_tanh_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                                             const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                             const Tensor& output, const Tensor& workspace, bool reverse,
                                             bool input_grad, const Opt& lengths) {
    return stateless_backward<RnnTanhCell>("rnnfast.rnn_tanh", grad_output, grad_hy, input, hx, w_ih, w_hh, output,
                                           workspace, reverse, input_grad, lengths);
  }

  static StatelessBackward rnn_relu_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                                             const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                             const Tensor& output, const Tensor& workspace, bool reverse,
                                             bool input_grad, const Opt& lengths) {
    return stateless_backward<RnnReluCell>("rnnfast.rnn_relu", grad_output, grad_hy, input, hx, w_ih, w_hh, output,
                                           workspace, reverse, input_grad, lengths);
  }

  static StatelessBackward gru_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                                        const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
                                        const Tensor& workspace, bool reverse, bool reset_after, bool input_grad,
                                        const Opt& lengths) {
    return reset_after ? stateless_backward<GruCell>("rnnfast.gru", grad_output, grad_hy, input, hx, w_ih, w_hh,
                                                     output, workspace, reverse, input_grad, lengths)
                       : stateless_backward<GruResetBeforeCell>("rnnfast.gru", grad_output, grad_hy, input, hx, w_ih,
                                                                w_hh, output, workspace, reverse, input_grad, lengths);
  }

  static LstmForward lstm_forward(const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                  const Tensor& w_hh, const Opt& b_ih, const Opt& b_hh, bool reverse,
                                  const Opt& lengths) {
    const ForwardResult r = forward<LstmCell>(forward_problem<LstmCell>("rnnfast.lstm", input, hx, &cx, w_ih, w_hh,
                                                                        nullptr, b_ih, b_hh, reverse, lengths));
    return {r.output, r.hy, r.cy, r.ws};
  }

  static LstmBackward lstm_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
                                    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                    const Tensor& w_hh, const Tensor& output, const Tensor& workspace, bool reverse,
                                    bool input_grad, const Opt& lengths) {
    const BackwardResult r = backward<LstmCell>(backward_problem<LstmCell>("rnnfast.lstm", grad_output, grad_hy,
                                                                           &grad_cy, input, hx, &cx, w_ih, w_hh,
                                                                           nullptr, output, workspace, reverse,
                                                                           input_grad, lengths));
    return {r.grad_input, r.grad_hx, r.grad_cx, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
  }

  // LSTM with a projection: the same loop with the LstmProjection hook (loop.h).
  static LstmForward lstm_proj_forward(const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                       const Tensor& w_hh, const Tensor& w_hr, const Opt& b_ih, const Opt& b_hh,
                                       bool reverse, const Opt& lengths) {
    const ForwardResult r = forward<LstmCell>(forward_problem<LstmCell>("rnnfast.lstm_proj", input, hx, &cx, w_ih,
                                                                        w_hh, &w_hr, b_ih, b_hh, reverse, lengths));
    return {r.output, r.hy, r.cy, r.ws};
  }

  static LstmProjBackward lstm_proj_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
                                             const Tensor& input, const Tensor& hx, const Tensor& cx,
                                             const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_hr,
                                             const Tensor& output, const Tensor& workspace, bool reverse,
                                             bool input_grad, const Opt& lengths) {
    const BackwardResult r = backward<LstmCell>(backward_problem<LstmCell>("rnnfast.lstm_proj", grad_output, grad_hy,
                                                                           &grad_cy, input, hx, &cx, w_ih, w_hh, &w_hr,
                                                                           output, workspace, reverse, input_grad,
                                                                           lengths));
    return {r.grad_input, r.grad_hx, r.grad_cx, r.grad_w_ih, r.grad_w_hh, r.grad_w_hr, r.grad_b_ih, r.grad_b_hh};
  }
};

// def(name, &Ops::name) for every recurrent op: the one list the registrations share (CPU and CUDA
// TORCH_LIBRARY_IMPL blocks, the emulation's pybind module).
template <class Ops, class Def>
void for_each_recurrent_op(const Def& def) {
  def("rnn_tanh_forward", &Ops::rnn_tanh_forward);
  def("rnn_tanh_backward", &Ops::rnn_tanh_backward);
  def("rnn_relu_forward", &Ops::rnn_relu_forward);
  def("rnn_relu_backward", &Ops::rnn_relu_backward);
  def("gru_forward", &Ops::gru_forward);
  def("gru_backward", &Ops::gru_backward);
  def("lstm_forward", &Ops::lstm_forward);
  def("lstm_backward", &Ops::lstm_backward);
  def("lstm_proj_forward", &Ops::lstm_proj_forward);
  def("lstm_proj_backward", &Ops::lstm_proj_backward);
}

}  // namespace core
}  // namespace rnnfast
