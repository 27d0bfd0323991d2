// Every rnnfast op's schema, declared once. Implementations register per dispatch key: csrc/cpu
// (CPU) and csrc/cuda (CUDA), the recurrent ops of both through the same entry points
// (csrc/core/recurrent_ops.h) and host loop (csrc/core/loop.h) over the cells of csrc/core/cells.h
// (docs/core.md). The forward ops' autograd: csrc/autograd.cpp; Python wiring (fakes, autocast,
// the backward ops' double-backward refusal): rnnfast/_ops.py. The module rnnfast._C itself: csrc/python.cpp.
#include <torch/library.h>

#include <string>

#include "core/cells.h"
#include "core/decode.h"

namespace {

// The recurrent ops' schemas, one template per shape (the entry points of csrc/core/recurrent_ops.h
// have the same shapes): every cell of csrc/core/cells.h's RNNFAST_CELLS with ops of its own gets
// <name>_forward and <name>_backward, {name} its name and {option} ", bool <option>" for a cell with
// an option (gru: reset_after), else nothing.
constexpr const char* kForward =
    "{name}_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse"
    "{option}, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor workspace)";
constexpr const char* kBackward =
    "{name}_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
    "Tensor output, Tensor workspace, bool reverse{option}, bool input_grad=True, Tensor? lengths=None, "
    "bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)";
// With a cell state (LSTM): cx in, cy out, and their gradients.
constexpr const char* kCellStateForward =
    "{name}_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "bool reverse, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)";
constexpr const char* kCellStateBackward =
    "{name}_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, "
    "Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, bool input_grad=True, "
    "Tensor? lengths=None, bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, "
    "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)";

void replace(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
}

template <class Cell>
std::string recurrent_schema(const char* shape) {
  std::string s = shape;
  replace(s, "{name}", Cell::name);
  if constexpr (rnnfast::core::has_option<Cell>()) {
    replace(s, "{option}", std::string(", bool ") + Cell::option);
  } else {
    replace(s, "{option}", "");
  }
  return s;
}

}  // namespace

TORCH_LIBRARY(rnnfast, m) {
  // ---- recurrent layers: one layer, one direction, the whole sequence --------------------------
  // input (T, B, I) time-major; hx, cx (B, H); w_ih (G*H, I); w_hh (G*H, H); b_* (G*H) or None.
  // reverse=true walks t = T-1 .. 0 (the backward direction of a bidirectional layer); output[t]
  // is always the state after consuming input[t].
  // workspace is what backward needs beyond output (layout in rnnfast/_ops.py, shared by CPU/CUDA):
  //   rnn_*: (0,)   gru: (T, B, 4H) = [r, z, n, hn]   lstm: (T, B, 5H) = [i, f, g, o, c]
  //   (each cell's Slot enum in csrc/core/cells.h; tests/test_core_cells.py holds the two together)
  // Backward ops: input_grad=false skips the dx GEMM (the input needs no gradient, e.g. one-hot
  // tokens into the first layer) and returns grad_input as zeros.
  // lengths (optional, int64 (B,) on the CPU, values in [0, T]): variable-length batches (what a
  // PackedSequence holds). Sequence b is input[0 .. lengths[b]-1]; at every step t >= lengths[b]
  // row b is frozen: its state is carried unchanged (output[t, b] = the state before, the reverse
  // direction starts from hx at t = lengths[b]-1), so hy (cy) is each sequence's own final state.
  // Frozen positions get no gradient into input or weights; grad_output there flows into the state
  // they copy. Pass the same lengths to the backward op.
  rnnfast::core::for_each_cell([&](auto tag) {
    using Cell = typename decltype(tag)::type;
    if constexpr (rnnfast::core::has_own_op<Cell>()) {
      const bool state = Cell::traits.has_cell_state();
      m.def(recurrent_schema<Cell>(state ? kCellStateForward : kForward).c_str());
      m.def(recurrent_schema<Cell>(state ? kCellStateBackward : kBackward).c_str());
    }
  });
  // LSTM with a projection (torch.nn.LSTM(proj_size=P); CPU and CUDA): h_t = (o ⊙ tanh c_t) W_hrᵀ, so hx,
  // grad_hy and output rows have P columns, cx/cy H; w_hh (4*H, P), w_hr (P, H). Workspace (T, B, 6H)
  // = [i, f, g, o, c, m] with m = o ⊙ tanh c. lengths as above.
  m.def("lstm_proj_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor w_hr, Tensor? b_ih, Tensor? b_hh, bool reverse, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)");
  m.def("lstm_proj_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor w_hr, Tensor output, Tensor workspace, bool reverse, bool input_grad=True, Tensor? lengths=None, bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_w_hr, Tensor grad_b_ih, Tensor grad_b_hh)");

  // ---- gradient clipping (csrc/cpu/clip.cpp, csrc/cuda/clip.cu) ---------------------------------
  // A gradient list on one device, any mix of float16/bfloat16/float32/float64 (accumulated in
  // float64 on CPU, float32 grads in float within blocks of 1024 elements; on CUDA in float per
  // thread, or float64 when a float64 grad is present, partials in float64). The total norm
  // is a 0-dim tensor of the promoted dtype, as torch.nn.utils.clip_grad_norm_ returns it.
  // grad_norm: the p-norm of the list viewed as one vector (p = inf, -inf, 0 as torch).
  m.def("grad_norm(Tensor[] tensors, float norm_type) -> Tensor");
  // clip_grads_with_norm_: grads *= clamp(max_norm / (total_norm + 1e-6), max=1), in place.
  m.def("clip_grads_with_norm_(Tensor(a!)[] grads, float max_norm, Tensor total_norm) -> ()");
  // clip_grad_norm_: both in one call; returns the total norm (before clipping).
  m.def("clip_grad_norm_(Tensor(a!)[] grads, float max_norm, float norm_type) -> Tensor");

  // ---- generation (csrc/core/decode.h): predict's per-token loop in one call ------------------------
  // From the state after a prefix (state: [h] or [h, c], each (L, 1, H)) and its last token, generate
  // num_preds tokens of a one-hot (embedding None) or embedding language model: per token every
  // layer's T = 1 step through the cell's own forward op, the head (V, H), then argmax (temperature 0)
  // or a draw from softmax(logits / temperature) over the top_k most likely. params: w_ih, w_hh
  // (+ b_ih, b_hh when has_biases) per layer; options: the cell's option values (gru: reset_after).
  // Inference only; returns the tokens, int64 (num_preds,) on the model's device.
  m.def("decode(str cell, bool[] options, Tensor[] params, bool has_biases, Tensor[] state, Tensor? embedding, "
        "Tensor head_weight, Tensor? head_bias, int token, int num_preds, float temperature=0., int? top_k=None, "
        "Generator? generator=None) -> Tensor tokens");
}

// decode is ATen calls only (its layers go through the dispatcher to the per-backend kernels), so
// one registration serves CPU and CUDA.
TORCH_LIBRARY_IMPL(rnnfast, CompositeExplicitAutograd, m) { m.impl("decode", &rnnfast::core::decode); }
