// CPU implementations of the recurrent ops (schemas in csrc/ops.cpp): argument checks, then the
// shared host loop (recurrent.h) instantiated with each cell (csrc/core/cells.h).
#include <torch/library.h>

#include "recurrent.h"

namespace rnnfast {
namespace cpu {
namespace {

// The ops' results, by schema (csrc/ops.cpp): forward (output, hy[, cy], workspace); backward (grad_input,
// grad_hx[, grad_cx], grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh).
using StatelessForward = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using StatelessBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LstmForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LstmBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Cells without a cell state (RNN, GRU): no cx in, no cy out.
template <class Cell>
StatelessForward stateless_forward(const char* op, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                     const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                     const c10::optional<at::Tensor>& b_hh, bool reverse, const c10::optional<at::Tensor>& lengths) {
  const RecurrentArgs a = check_forward(op, Cell::traits.gates, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh);
  const at::Tensor len = check_lengths(op, lengths, a.T, a.B);
  auto [output, hy, cy, ws] = recurrent_forward<Cell>(input, hx, at::Tensor(), w_ih, w_hh, b_ih, b_hh, reverse, len);
  return {output, hy, ws};
}

template <class Cell>
StatelessBackward stateless_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                      const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool input_grad,
                      const c10::optional<at::Tensor>& lengths) {
  const RecurrentArgs a = check_backward(op, Cell::traits.gates, Cell::traits.slots, grad_output, grad_hy, nullptr, input, hx,
                                         nullptr, w_ih, w_hh, output, workspace);
  const at::Tensor len = check_lengths(op, lengths, a.T, a.B);
  auto [dx, dhx, dcx, dw_ih, dw_hh, db_ih, db_hh] = recurrent_backward<Cell>(
      grad_output, grad_hy, at::Tensor(), input, hx, at::Tensor(), w_ih, w_hh, output, workspace, reverse, input_grad,
      len);
  return {dx, dhx, dw_ih, dw_hh, db_ih, db_hh};
}

StatelessForward rnn_tanh_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool reverse,
                      const c10::optional<at::Tensor>& lengths) {
  return stateless_forward<RnnTanhCell>("rnnfast.rnn_tanh", input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths);
}

StatelessForward rnn_relu_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool reverse,
                      const c10::optional<at::Tensor>& lengths) {
  return stateless_forward<RnnReluCell>("rnnfast.rnn_relu", input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths);
}

StatelessForward gru_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                 const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool reverse,
                 bool reset_after, const c10::optional<at::Tensor>& lengths) {
  if (reset_after) {
    return stateless_forward<GruCell>("rnnfast.gru", input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths);
  }
  return stateless_forward<GruResetBeforeCell>("rnnfast.gru", input, hx, w_ih, w_hh, b_ih, b_hh, reverse, lengths);
}

StatelessBackward rnn_tanh_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
                       const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                       const at::Tensor& workspace, bool reverse, bool input_grad,
                       const c10::optional<at::Tensor>& lengths) {
  return stateless_backward<RnnTanhCell>("rnnfast.rnn_tanh", grad_output, grad_hy, input, hx, w_ih, w_hh, output,
                                          workspace, reverse, input_grad, lengths);
}

StatelessBackward rnn_relu_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
                       const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                       const at::Tensor& workspace, bool reverse, bool input_grad,
                       const c10::optional<at::Tensor>& lengths) {
  return stateless_backward<RnnReluCell>("rnnfast.rnn_relu", grad_output, grad_hy, input, hx, w_ih, w_hh, output,
                                         workspace, reverse, input_grad, lengths);
}

StatelessBackward gru_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
                  const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                  const at::Tensor& workspace, bool reverse, bool reset_after, bool input_grad,
                  const c10::optional<at::Tensor>& lengths) {
  if (reset_after) {
    return stateless_backward<GruCell>("rnnfast.gru", grad_output, grad_hy, input, hx, w_ih, w_hh, output,
                                               workspace, reverse, input_grad, lengths);
  }
  return stateless_backward<GruResetBeforeCell>("rnnfast.gru", grad_output, grad_hy, input, hx, w_ih, w_hh, output,
                                              workspace, reverse, input_grad, lengths);
}

LstmForward lstm_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    bool reverse, const c10::optional<at::Tensor>& lengths) {
  const RecurrentArgs a = check_forward("rnnfast.lstm", LstmCell::traits.gates, input, hx, &cx, w_ih, w_hh, b_ih, b_hh);
  const at::Tensor len = check_lengths("rnnfast.lstm", lengths, a.T, a.B);
  return recurrent_forward<LstmCell>(input, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse, len);
}

LstmBackward lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                   const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const at::Tensor& output, const at::Tensor& workspace, bool reverse,
                   bool input_grad, const c10::optional<at::Tensor>& lengths) {
  const RecurrentArgs a = check_backward("rnnfast.lstm", LstmCell::traits.gates, LstmCell::traits.slots, grad_output, grad_hy,
                                         &grad_cy, input, hx, &cx, w_ih, w_hh, output, workspace);
  const at::Tensor len = check_lengths("rnnfast.lstm", lengths, a.T, a.B);
  return recurrent_backward<LstmCell>(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, output, workspace,
                                      reverse, input_grad, len);
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfast

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  using namespace rnnfast::cpu;
  m.impl("rnn_tanh_forward", &rnn_tanh_forward);
  m.impl("rnn_tanh_backward", &rnn_tanh_backward);
  m.impl("rnn_relu_forward", &rnn_relu_forward);
  m.impl("rnn_relu_backward", &rnn_relu_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}
