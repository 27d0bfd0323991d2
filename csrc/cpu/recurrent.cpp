// CPU registrations of the recurrent ops (schemas in csrc/ops.cpp): the shared entry points
// (csrc/core/recurrent_ops.h) over the CPU backend (backend.h) and the one host loop
// (csrc/core/loop.h). The LSTM projection (lstm_proj) is the loop's projection hook.
#include <torch/library.h>

#include "../core/recurrent_ops.h"
#include "backend.h"

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  using Ops = rnnfast::core::RecurrentOps<rnnfast::cpu::CpuFamily>;
  m.impl("rnn_tanh_forward", &Ops::rnn_tanh_forward);
  m.impl("rnn_tanh_backward", &Ops::rnn_tanh_backward);
  m.impl("rnn_relu_forward", &Ops::rnn_relu_forward);
  m.impl("rnn_relu_backward", &Ops::rnn_relu_backward);
  m.impl("gru_forward", &Ops::gru_forward);
  m.impl("gru_backward", &Ops::gru_backward);
  m.impl("lstm_forward", &Ops::lstm_forward);
  m.impl("lstm_backward", &Ops::lstm_backward);
  m.impl("lstm_proj_forward", &Ops::lstm_proj_forward);
  m.impl("lstm_proj_backward", &Ops::lstm_proj_backward);
}
