// The CUDA host loop of the recurrent ops (contract: csrc/ops.cpp), one template for every cell, and the op
// entry points, templated over the device context (guard + stream) so that recurrent.cu registers
// them for CUDA and tests/cuda_emulation.cpp can run the very same loop on the CPU. ATen and
// kernels.h only: no c10/cuda header here.
//
// forward:  XG = X·W_ihᵀ + b_ih for all T*B rows (one GEMM); per step t in walking order
//           HG = h_{t-1}·W_hhᵀ (mm_out into one (B, G*H) buffer), then one pointwise launch that
//           adds b_hh and writes output[t] and workspace[t]. GRU reset_before: HG covers r,z only;
//           phase 0 writes r, z, r⊙h; GEMM W_hn·(r⊙h); phase 1 writes n and h'.
// backward: per step in reverse walking order, one pointwise launch writing dG[t] (and dGh[t])
//           and the direct part of dh_{t-1}, then dh_{t-1} (+)= dGh[t]·W_hh. After the loop:
//           dx = dG·W_ih, dW_ih = dGᵀ·X, dW_hh = dGhᵀ·H_prev (two GEMMs, no concatenation),
//           db_ih, db_hh = column sums.
// Variable-length batches: lengths (int64 (B,)) on the CPU or already on the input's device. CPU
// lengths are staged through pinned memory and copied with one asynchronous H2D copy per op call
// (from pageable memory that copy would make the host wait); device lengths are used as they are,
// their range checked by an asynchronous device-side assert. The step kernels freeze a row once
// t >= lengths[b] and dh then always gets dGh[t]·W_hh added.
// No op here synchronizes with the host. CUDA-graph capture: without lengths, or with device
// lengths, every op is capturable (kernel launches, cuBLAS GEMMs, ATen ops on the current stream);
// with CPU lengths it is not (the pinned staging buffer would be baked into the graph): capture
// with the lengths on the device.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "../core/args.h"
#include "../core/cells.h"
#include "../core/sequence.h"
#include "../core/tensors.h"
#include "../kernels/kernels.h"

namespace rnnfast {
namespace cuda {
using at::Tensor;
using core::CellKind;
using core::CellTraits;
using core::time_of;

namespace detail {

inline void check_launch(cudaError_t err, const char* op, const char* what) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA ", what, " kernel failed to launch: ", cudaGetErrorName(err), " (",
              cudaGetErrorString(err), ")");
}

// CUDA-only requirements on top of the shared checks (which accept float64 for the CPU path).
inline void check_cuda_dtype(const char* op, const Tensor& input) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat, op, ": supports float32 on CUDA, got input of dtype ",
                   input.scalar_type(), " (float16/bfloat16/float64 CUDA kernels are not implemented; use ",
                   "float32, or run float64 on CPU)");
}

// float32 data of a tensor that may be undefined (then nullptr): the kernels' optional operands.
inline const float* const_floats(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
inline float* mutable_floats(Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// The checked lengths (undefined when not given) on the input's device for the step kernels. CPU
// lengths for a device input go through pinned memory: the copy is then truly asynchronous (a
// non_blocking copy from pageable memory waits for the device) and the caching host allocator keeps
// the staging block until the copy has run. Lengths already on the input's device (and the CPU
// emulation's CPU lengths for a CPU input) are used as they are.
inline Tensor device_lengths(const Tensor& lengths, const Tensor& input) {
  if (!lengths.defined() || lengths.device() == input.device()) return lengths;
  return lengths.pin_memory().to(input.device(), at::kLong, /*non_blocking=*/true);
}

// X as the weight-gradient GEMM dW_ih = dGᵀ X may read it: with lengths, the padding rows
// (t >= lengths[b], which callers never promise to fill) zeroed, so a NaN or Inf there cannot reach
// dW_ih through 0·NaN (their dG rows are zero). Built on the device from the device lengths: no sync.
inline Tensor input_without_padding(const Tensor& input, const Tensor& len) {
  if (!len.defined()) return input;
  const Tensor valid = at::arange(input.size(0), len.options()).unsqueeze(1) < len.unsqueeze(0);  // (T, B)
  return input.masked_fill(valid.logical_not().unsqueeze(-1), 0);
}

// core::check_lengths for CPU lengths (it reads their range on the host: free for a CPU tensor).
// Lengths on the device are checked without a host sync: dtype, rank, size and device here, the
// range [0, T] by an asynchronous device-side assert (a bad value fails the next synchronizing
// call with this message; the kernels themselves only compare t with lengths[b], so no value can
// make them access memory out of bounds).
inline Tensor check_lengths(const char* op, const c10::optional<Tensor>& lengths, int64_t T, int64_t B,
                            const Tensor& input) {
  if (!lengths.has_value() || !lengths->defined() || lengths->device().is_cpu()) {
    return core::check_lengths(op, lengths, T, B);
  }
  const Tensor& l = *lengths;
  TORCH_CHECK(l.device() == input.device(), op, ": lengths must be on the CPU or on the input's device (",
              input.device(), "), got one on ", l.device());
  TORCH_CHECK_TYPE(l.scalar_type() == at::kLong, op, ": lengths must have dtype int64, got ", l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, op, ": lengths must have shape (B,) = (", B, ",), got ", l.sizes());
  const Tensor c = l.contiguous();
  if (B > 0) {
    at::_assert_async(at::logical_and(c.ge(0), c.le(T)).all(),
                      "rnnfast: lengths on the device must lie in [0, T]");
  }
  return c;
}

// (T, B, 1) bool on the lengths' device: row b is frozen at time t (t >= lengths[b]). Built once per
// call, so the per-step masked updates allocate nothing.
inline Tensor frozen_mask(const Tensor& len, int64_t T) {
  return at::arange(T, len.options()).view({T, 1, 1}).ge(len.view({1, -1, 1}));
}

// Returns (output, hy, cy (undefined unless the cell has a cell state), workspace).
template <CellKind kCell>
std::tuple<Tensor, Tensor, Tensor, Tensor> recurrent_forward(const char* op, cudaStream_t stream, const Tensor& input_, const Tensor& hx_,
                                                             const Tensor& cx_, const Tensor& w_ih_,
                                                             const Tensor& w_hh_, const c10::optional<Tensor>& b_ih_,
                                                             const c10::optional<Tensor>& b_hh_, bool reverse,
                                                             const Tensor& lengths) {
  constexpr CellTraits L = core::traits_of(kCell);
  constexpr int64_t G = L.gates, G_rec = L.phase0_gates;

  const Tensor input = input_.contiguous(), hx = hx_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor cx = L.has_cell_state() ? cx_.contiguous() : Tensor();
  const bool has_b_ih = b_ih_.has_value() && b_ih_->defined();
  const bool has_b_hh = b_hh_.has_value() && b_hh_->defined();
  const Tensor b_hh = has_b_hh ? b_hh_->contiguous() : Tensor();
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = hx.size(1);
  const int64_t WS = L.slots * H;
  const auto opts = input.options();

  Tensor output = at::empty({T, B, H}, opts);
  Tensor ws = L.slots ? at::empty({T, B, WS}, opts) : at::empty({0}, opts);

  // Input projection of all steps at once, b_ih folded in; b_hh is added by the step kernels.
  Tensor xg = at::empty({T * B, G * H}, opts);
  if (has_b_ih) {
    at::addmm_out(xg, *b_ih_, input.view({T * B, I}), w_ih.t());
  } else {
    at::mm_out(xg, input.view({T * B, I}), w_ih.t());
  }

  // Per-step GEMM outputs: allocated once, rewritten every step.
  Tensor hg = at::empty({B, G_rec * H}, opts);
  const Tensor w_rec0_t = w_hh.narrow(0, 0, G_rec * H).t();
  Tensor hg1 = L.phases == 2 ? at::empty({B, (G - G_rec) * H}, opts) : Tensor();
  const Tensor w_rec1_t = L.phases == 2 ? w_hh.narrow(0, G_rec * H, (G - G_rec) * H).t() : Tensor();

  const float* xg_p = const_floats(xg);
  const float* hx_p = const_floats(hx);
  const float* cx_p = const_floats(cx);
  float* out_p = mutable_floats(output);
  float* ws_p = L.slots ? mutable_floats(ws) : nullptr;
  const core::PrevState<float> prev{out_p, hx_p, ws_p, cx_p, T, B, H, H, WS, L.state_slot, reverse};
  const Tensor len = device_lengths(lengths, input);

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = time_of(s, T, reverse);
    const int64_t tp = s ? time_of(s - 1, T, reverse) : -1;
    at::mm_out(hg, s ? output.select(0, tp) : hx, w_rec0_t);

    kernels::ForwardStepArgs a;
    a.batch = B;
    a.hidden = H;
    a.xg = xg_p + t * B * G * H;
    a.hg = const_floats(hg);
    a.hg_ld = G_rec * H;
    a.hg_first_gate = 0;
    a.b_hh = const_floats(b_hh);
    a.h_prev = prev.h(s);
    a.c_prev = prev.c(s);  // cx, or the state slot of the previous step's workspace (nullptr: no cell state)
    a.c_prev_ld = prev.c_ld(s);
    a.h_out = out_p + t * B * H;
    a.saved = ws_p ? ws_p + t * B * WS : nullptr;
    a.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    a.t = t;
    check_launch(kernels::recurrent_forward_step(kCell, 0, a, stream), op, "forward step");

    if constexpr (L.phases == 2) {
      // The candidate's recurrent GEMM on the workspace slot phase 0 wrote (r⊙h, row stride WS).
      at::mm_out(hg1, ws.select(0, t).narrow(1, L.gemm_slot * H, H), w_rec1_t);
      a.hg = const_floats(hg1);
      a.hg_ld = (G - G_rec) * H;
      a.hg_first_gate = G_rec;
      check_launch(kernels::recurrent_forward_step(kCell, 1, a, stream), op, "forward step (phase 2)");
    }
  }

  // Fresh tensors (never views of output/workspace: autograd outputs must not alias).
  Tensor hy = at::empty({B, H}, opts);
  Tensor cy = L.has_cell_state() ? at::empty({B, H}, opts) : Tensor();
  if (T > 0) {
    const int64_t t_last = time_of(T - 1, T, reverse);
    hy.copy_(output.select(0, t_last));
    if (L.has_cell_state()) cy.copy_(ws.select(0, t_last).narrow(1, L.state_slot * H, H));
  } else {
    hy.copy_(hx);
    if (L.has_cell_state()) cy.copy_(cx);
  }
  return {output, hy, cy, ws};
}

// Returns (grad_input, grad_hx, grad_cx (undefined unless cell state), grad_w_ih, grad_w_hh,
// grad_b_ih, grad_b_hh).
template <CellKind kCell>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrent_backward(
    const char* op, cudaStream_t stream, const Tensor& grad_output_, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input_,
    const Tensor& hx_, const Tensor& cx_, const Tensor& w_ih_, const Tensor& w_hh_, const Tensor& output_,
    const Tensor& ws_, bool reverse, bool input_grad, const Tensor& lengths) {
  constexpr CellTraits L = core::traits_of(kCell);
  constexpr int64_t G = L.gates, G_rec = L.phase0_gates;

  const Tensor grad_output = grad_output_.contiguous(), input = input_.contiguous(), hx = hx_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor output = output_.contiguous(), ws = ws_.contiguous();
  const Tensor cx = L.has_cell_state() ? cx_.contiguous() : Tensor();
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = hx.size(1);
  const int64_t WS = L.slots * H;
  const auto opts = input.options();

  Tensor dG = at::empty({T, B, G * H}, opts);                         // input side: dx, dW_ih, db_ih
  Tensor dGh = L.split_grad ? at::empty({T, B, G * H}, opts) : dG;   // recurrent side: dW_hh, db_hh
  Tensor dh = at::empty({B, H}, opts);  // dL/dh_t carried back through the recurrence
  dh.copy_(grad_hy);
  Tensor dc;
  if (L.has_cell_state()) {
    dc = at::empty({B, H}, opts);
    dc.copy_(grad_cy);
  }
  Tensor drh = L.phases == 2 ? at::empty({B, H}, opts) : Tensor();
  const Tensor w_rec0 = w_hh.narrow(0, 0, G_rec * H);
  const Tensor w_rec1 = L.phases == 2 ? w_hh.narrow(0, G_rec * H, (G - G_rec) * H) : Tensor();

  const float* dy_p = const_floats(grad_output);
  const float* out_p = const_floats(output);
  const float* ws_p = L.slots ? const_floats(ws) : nullptr;
  const float* hx_p = const_floats(hx);
  const float* cx_p = const_floats(cx);
  const core::PrevState<float> prev{out_p, hx_p, ws_p, cx_p, T, B, H, H, WS, L.state_slot, reverse};
  float* dg_p = mutable_floats(dG);
  float* dgh_p = L.split_grad ? mutable_floats(dGh) : nullptr;
  const Tensor len = device_lengths(lengths, input);

  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = time_of(s, T, reverse);

    kernels::BackwardStepArgs a;
    a.batch = B;
    a.hidden = H;
    a.grad_h = dy_p + t * B * H;
    a.dh = mutable_floats(dh);
    a.dc = mutable_floats(dc);
    a.saved = ws_p ? ws_p + t * B * WS : nullptr;
    a.h_new = out_p + t * B * H;
    a.h_prev = prev.h(s);
    a.c_prev = prev.c(s);
    a.c_prev_ld = prev.c_ld(s);
    a.dgx = dg_p + t * B * G * H;
    a.dgh = dgh_p ? dgh_p + t * B * G * H : nullptr;
    a.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    a.t = t;
    check_launch(kernels::recurrent_backward_step(kCell, 0, a, stream), op, "backward step");

    if constexpr (L.phases == 2) {
      // d(r⊙h) = dn_pre·W_hn, then phase 1 turns it into dr_pre and the r⊙ part of dh_{t-1}.
      at::mm_out(drh, dG.select(0, t).narrow(1, G_rec * H, (G - G_rec) * H), w_rec1);
      a.drh = const_floats(drh);
      check_launch(kernels::recurrent_backward_step(kCell, 1, a, stream), op, "backward step (phase 2)");
    }
    const Tensor dgh_t = G_rec == G ? dGh.select(0, t) : dGh.select(0, t).narrow(1, 0, G_rec * H);
    if (L.direct_dh || len.defined()) {
      dh.addmm_(dgh_t, w_rec0);  // the kernel left the direct part in dh (0 for other cells)
    } else {
      at::mm_out(dh, dgh_t, w_rec0);
    }
  }

  const Tensor dG2 = dG.view({T * B, G * H});
  const Tensor dGh2 = dGh.view({T * B, G * H});
  Tensor grad_input = input_grad ? at::mm(dG2, w_ih).view({T, B, I}) : at::zeros_like(input);
  Tensor grad_w_ih = at::mm(dG2.t(), input_without_padding(input, len).reshape({T * B, I}));

  // dW_hh rows [0, G_rec*H) saw h_{t-1}: the step taken first saw hx, the others the previous output
  // (a shifted view of output, so no concatenation). Rows of a two-phase cell's second GEMM saw
  // the workspace slot r⊙h.
  Tensor grad_w_hh = at::empty({G * H, H}, opts);
  Tensor gw0 = grad_w_hh.narrow(0, 0, G_rec * H);
  const Tensor dgr = dGh.narrow(2, 0, G_rec * H);  // (T, B, G_rec*H)
  const int64_t t_first = time_of(0, T, reverse);
  if (T > 1) {
    const Tensor d_rest = (reverse ? dgr.narrow(0, 0, T - 1) : dgr.narrow(0, 1, T - 1)).reshape({(T - 1) * B, G_rec * H});
    const Tensor h_rest = (reverse ? output.narrow(0, 1, T - 1) : output.narrow(0, 0, T - 1)).reshape({(T - 1) * B, H});
    at::mm_out(gw0, d_rest.t(), h_rest);
    gw0.addmm_(dgr.select(0, t_first).t(), hx);
  } else if (T == 1) {
    at::mm_out(gw0, dgr.select(0, t_first).t(), hx);
  } else {
    gw0.zero_();
  }
  if constexpr (L.phases == 2) {
    Tensor gw1 = grad_w_hh.narrow(0, G_rec * H, (G - G_rec) * H);
    at::mm_out(gw1, dG2.narrow(1, G_rec * H, (G - G_rec) * H).t(), ws.view({T * B, WS}).narrow(1, L.gemm_slot * H, H));
  }
  Tensor grad_b_ih = dG2.sum(0);
  Tensor grad_b_hh = L.split_grad ? dGh2.sum(0) : grad_b_ih.clone();
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}


// LSTM with a projection (torch.nn.LSTM(proj_size=P)): the LSTM step kernel with its h output pointed
// at m_t = o⊙tanh(c_t) (a (T, B, H) buffer), then per step output[t] = m_t·W_hrᵀ. The kernel's
// workspace has 5 slots, so the op's (T, B, 6H) workspace [i, f, g, o, c, m] (the CPU layout) is
// assembled once after the loop and split once in backward. A frozen row (lengths) gets m = 0 from the
// kernel (its h_prev is a zero buffer) and keeps h_{t-1} in output[t] (a masked copy on the device).
inline std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_proj_forward(const char* op, cudaStream_t stream,
                                                                    const Tensor& input_, const Tensor& hx_,
                                                                    const Tensor& cx_, const Tensor& w_ih_,
                                                                    const Tensor& w_hh_, const Tensor& w_hr_,
                                                                    const c10::optional<Tensor>& b_ih_,
                                                                    const c10::optional<Tensor>& b_hh_, bool reverse,
                                                                    const Tensor& lengths) {
  constexpr CellTraits L = core::LstmCell::traits;
  constexpr int64_t G = L.gates;
  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), w_hr = w_hr_.contiguous();
  const bool has_b_ih = b_ih_.has_value() && b_ih_->defined();
  const Tensor b_hh = b_hh_.has_value() && b_hh_->defined() ? b_hh_->contiguous() : Tensor();
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = cx.size(1), P = hx.size(1);
  const int64_t WS = L.slots * H;
  const auto opts = input.options();

  Tensor output = at::empty({T, B, P}, opts);
  Tensor ws_lstm = at::empty({T, B, WS}, opts);
  Tensor m = at::empty({T, B, H}, opts);
  Tensor xg = at::empty({T * B, G * H}, opts);
  if (has_b_ih) {
    at::addmm_out(xg, *b_ih_, input.view({T * B, I}), w_ih.t());
  } else {
    at::mm_out(xg, input.view({T * B, I}), w_ih.t());
  }
  Tensor hg = at::empty({B, G * H}, opts);
  const Tensor zero_h = at::zeros({B, H}, opts);  // "h_prev" of the kernel: a frozen row's m
  const Tensor len = device_lengths(lengths, input);
  const Tensor frozen = len.defined() ? frozen_mask(len, T) : Tensor();
  const Tensor w_hh_t = w_hh.t(), w_hr_t = w_hr.t();
  const core::PrevState<float> prev{nullptr, nullptr, const_floats(ws_lstm), const_floats(cx), T, B, H, P, WS, L.state_slot, reverse};

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = time_of(s, T, reverse);
    const Tensor h_prev = s ? output.select(0, time_of(s - 1, T, reverse)) : hx;
    at::mm_out(hg, h_prev, w_hh_t);
    kernels::ForwardStepArgs a;
    a.batch = B;
    a.hidden = H;
    a.xg = const_floats(xg) + t * B * G * H;
    a.hg = const_floats(hg);
    a.hg_ld = G * H;
    a.b_hh = const_floats(b_hh);
    a.h_prev = const_floats(zero_h);
    a.c_prev = prev.c(s);
    a.c_prev_ld = prev.c_ld(s);
    a.h_out = mutable_floats(m) + t * B * H;
    a.saved = mutable_floats(ws_lstm) + t * B * WS;
    a.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    a.t = t;
    check_launch(kernels::recurrent_forward_step(CellKind::lstm, 0, a, stream), op, "forward step");
    Tensor out_t = output.select(0, t);
    at::mm_out(out_t, m.select(0, t), w_hr_t);
    if (len.defined()) at::where_out(out_t, frozen.select(0, t), h_prev, out_t);
  }
  const int64_t t_last = time_of(T - 1, T, reverse);
  Tensor hy = output.select(0, t_last).clone();
  Tensor cy = ws_lstm.select(0, t_last).narrow(1, L.state_slot * H, H).clone(at::MemoryFormat::Contiguous);
  return {output, hy, cy, at::cat({ws_lstm, m}, 2)};
}

// Backward per step in reverse: dH[t] = dh + grad_output[t] (0 for frozen rows), dm = dH[t]·W_hr,
// the LSTM backward kernel on dm, dh_{t-1} = dG[t]·W_hh (frozen rows: dh + grad_output[t]).
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_proj_backward(
    const char* op, cudaStream_t stream, const Tensor& grad_output_, const Tensor& grad_hy, const Tensor& grad_cy,
    const Tensor& input_, const Tensor& hx_, const Tensor& cx_, const Tensor& w_ih_, const Tensor& w_hh_,
    const Tensor& w_hr_, const Tensor& output_, const Tensor& ws_, bool reverse, bool input_grad,
    const Tensor& lengths) {
  constexpr CellTraits L = core::LstmCell::traits;
  constexpr int64_t G = L.gates;
  const Tensor grad_output = grad_output_.contiguous(), input = input_.contiguous();
  const Tensor hx = hx_.contiguous(), cx = cx_.contiguous(), output = output_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), w_hr = w_hr_.contiguous();
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = cx.size(1), P = hx.size(1);
  const int64_t WS = L.slots * H;
  const auto opts = input.options();
  const Tensor ws_lstm = ws_.narrow(2, 0, WS).contiguous();
  const Tensor m = ws_.narrow(2, WS, H);  // (T, B, H): slot core::kLstmProjSlotM, row stride kLstmProjSlots*H
  const core::PrevState<float> prev{nullptr, nullptr, const_floats(ws_lstm), const_floats(cx), T, B, H, P, WS, L.state_slot, reverse};

  Tensor dG = at::empty({T, B, G * H}, opts);
  Tensor dH = at::empty({T, B, P}, opts);
  Tensor dh = at::empty({B, P}, opts);
  dh.copy_(grad_hy);
  Tensor dc = at::empty({B, H}, opts);
  dc.copy_(grad_cy);
  Tensor dm = at::empty({B, H}, opts);
  const Tensor zero_h = at::zeros({B, H}, opts);  // the kernel's grad_h: dm already holds all of dL/dm
  const Tensor len = device_lengths(lengths, input);
  Tensor active_f, frozen_f;  // (T, B, 1) 0/1 in the input's dtype
  if (len.defined()) {
    const Tensor frozen = frozen_mask(len, T);
    frozen_f = frozen.to(opts.dtype());
    active_f = frozen.logical_not().to(opts.dtype());
  }

  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = time_of(s, T, reverse);
    const Tensor dy_t = grad_output.select(0, t);
    Tensor dH_t = dH.select(0, t);
    at::add_out(dH_t, dh, dy_t);
    if (len.defined()) dH_t.mul_(active_f.select(0, t));
    at::mm_out(dm, dH_t, w_hr);
    kernels::BackwardStepArgs a;
    a.batch = B;
    a.hidden = H;
    a.grad_h = const_floats(zero_h);
    a.dh = mutable_floats(dm);
    a.dc = mutable_floats(dc);
    a.saved = const_floats(ws_lstm) + t * B * WS;
    a.c_prev = prev.c(s);
    a.c_prev_ld = prev.c_ld(s);
    a.dgx = mutable_floats(dG) + t * B * G * H;
    a.lengths = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    a.t = t;
    check_launch(kernels::recurrent_backward_step(CellKind::lstm, 0, a, stream), op, "backward step");
    if (len.defined()) {  // active rows: dG[t]·W_hh; frozen rows (dG = 0): dh + grad_output[t]
      dh.add_(dy_t).mul_(frozen_f.select(0, t));
      dh.addmm_(dG.select(0, t), w_hh);
    } else {
      at::mm_out(dh, dG.select(0, t), w_hh);
    }
  }

  const Tensor dG2 = dG.view({T * B, G * H});
  Tensor grad_input = input_grad ? at::mm(dG2, w_ih).view({T, B, I}) : at::zeros_like(input);
  Tensor grad_w_ih = at::mm(dG2.t(), input_without_padding(input, len).reshape({T * B, I}));
  Tensor hprev = at::empty({T * B, P}, opts);  // h_{t-1} for every t, in time order
  core::fill_prev_states(hprev, hx, output, reverse);
  Tensor grad_w_hh = at::mm(dG2.t(), hprev);
  Tensor grad_w_hr = at::mm(dH.view({T * B, P}).t(), m.reshape({T * B, H}));
  Tensor grad_b_ih = dG2.sum(0);
  Tensor grad_b_hh = grad_b_ih.clone();
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_w_hr, grad_b_ih, grad_b_hh};
}

}  // namespace detail

// The ops (schemas: csrc/ops.cpp): checks shared with the CPU path, then the shared loop on the
// context's device and stream. Ctx provides `Guard` (constructible from a Device) and `stream()`.
template <class Ctx>
struct RecurrentOps {
  using StatelessForward = std::tuple<Tensor, Tensor, Tensor>;
  using LstmForward = std::tuple<Tensor, Tensor, Tensor, Tensor>;
  using StatelessBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  using LstmBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  using Bias = c10::optional<Tensor>;

  template <CellKind kCell>
  static StatelessForward stateless_forward(const char* op, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                              const Tensor& w_hh, const Bias& b_ih, const Bias& b_hh, bool reverse,
                              const Bias& lengths) {
    detail::check_cuda_dtype(op, input);
    const core::RecurrentArgs a =
        core::check_forward(op, core::traits_of(kCell).gates, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh);
    const Tensor len = detail::check_lengths(op, lengths, a.T, a.B, input);
    const typename Ctx::Guard guard(input.device());
    auto [output, hy, cy, ws] = detail::recurrent_forward<kCell>(op, Ctx::stream(), input, hx, Tensor(), w_ih, w_hh,
                                                                 b_ih, b_hh, reverse, len);
    return {output, hy, ws};
  }

  template <CellKind kCell>
  static StatelessBackward stateless_backward(const char* op, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                               const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
                               const Tensor& workspace, bool reverse, bool input_grad, const Bias& lengths) {
    constexpr CellTraits L = core::traits_of(kCell);
    detail::check_cuda_dtype(op, input);
    const core::RecurrentArgs a = core::check_backward(op, L.gates, L.slots, grad_output, grad_hy, nullptr, input, hx,
                                                     nullptr, w_ih, w_hh, output, workspace);
    const Tensor len = detail::check_lengths(op, lengths, a.T, a.B, input);
    const typename Ctx::Guard guard(input.device());
    auto [dx, dhx, dcx, dw_ih, dw_hh, db_ih, db_hh] = detail::recurrent_backward<kCell>(
        op, Ctx::stream(), grad_output, grad_hy, Tensor(), input, hx, Tensor(), w_ih, w_hh, output, workspace,
        reverse, input_grad, len);
    return {dx, dhx, dw_ih, dw_hh, db_ih, db_hh};
  }

  static StatelessForward rnn_tanh_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                               const Bias& b_ih, const Bias& b_hh, bool reverse, const Bias& lengths) {
    return stateless_forward<CellKind::rnn_tanh>("rnnfast.rnn_tanh", input, hx, w_ih, w_hh, b_ih, b_hh, reverse,
                                               lengths);
  }

  static StatelessForward rnn_relu_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                               const Bias& b_ih, const Bias& b_hh, bool reverse, const Bias& lengths) {
    return stateless_forward<CellKind::rnn_relu>("rnnfast.rnn_relu", input, hx, w_ih, w_hh, b_ih, b_hh, reverse,
                                               lengths);
  }

  static StatelessForward gru_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                          const Bias& b_ih, const Bias& b_hh, bool reverse, bool reset_after, const Bias& lengths) {
    return reset_after ? stateless_forward<CellKind::gru>("rnnfast.gru", input, hx, w_ih, w_hh, b_ih, b_hh,
                                                                   reverse, lengths)
                       : stateless_forward<CellKind::gru_reset_before>("rnnfast.gru", input, hx, w_ih, w_hh, b_ih, b_hh,
                                                                    reverse, lengths);
  }

  static LstmForward lstm_forward(const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                           const Tensor& w_hh, const Bias& b_ih, const Bias& b_hh, bool reverse,
                           const Bias& lengths) {
    const char* op = "rnnfast.lstm";
    detail::check_cuda_dtype(op, input);
    const core::RecurrentArgs a =
        core::check_forward(op, core::LstmCell::traits.gates, input, hx, &cx, w_ih, w_hh, b_ih, b_hh);
    const Tensor len = detail::check_lengths(op, lengths, a.T, a.B, input);
    const typename Ctx::Guard guard(input.device());
    return detail::recurrent_forward<CellKind::lstm>(op, Ctx::stream(), input, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                                      reverse, len);
  }

  static StatelessBackward rnn_tanh_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                                const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
                                const Tensor& workspace, bool reverse, bool input_grad, const Bias& lengths) {
    return stateless_backward<CellKind::rnn_tanh>("rnnfast.rnn_tanh", grad_output, grad_hy, input, hx, w_ih, w_hh,
                                                output, workspace, reverse, input_grad, lengths);
  }

  static StatelessBackward rnn_relu_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input,
                                const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
                                const Tensor& workspace, bool reverse, bool input_grad, const Bias& lengths) {
    return stateless_backward<CellKind::rnn_relu>("rnnfast.rnn_relu", grad_output, grad_hy, input, hx, w_ih, w_hh,
                                                output, workspace, reverse, input_grad, lengths);
  }

  static StatelessBackward gru_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
                           const Tensor& w_ih, const Tensor& w_hh, const Tensor& output, const Tensor& workspace,
                           bool reverse, bool reset_after, bool input_grad, const Bias& lengths) {
    return reset_after ? stateless_backward<CellKind::gru>("rnnfast.gru", grad_output, grad_hy, input, hx,
                                                                    w_ih, w_hh, output, workspace, reverse, input_grad,
                                                                    lengths)
                       : stateless_backward<CellKind::gru_reset_before>("rnnfast.gru", grad_output, grad_hy, input, hx,
                                                                     w_ih, w_hh, output, workspace, reverse,
                                                                     input_grad, lengths);
  }

  static LstmBackward lstm_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
                            const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                            const Tensor& w_hh, const Tensor& output, const Tensor& workspace, bool reverse,
                            bool input_grad, const Bias& lengths) {
    const char* op = "rnnfast.lstm";
    constexpr CellTraits L = core::LstmCell::traits;
  constexpr int64_t G = L.gates;
    detail::check_cuda_dtype(op, input);
    const core::RecurrentArgs a = core::check_backward(op, L.gates, L.slots, grad_output, grad_hy, &grad_cy, input, hx,
                                                     &cx, w_ih, w_hh, output, workspace);
    const Tensor len = detail::check_lengths(op, lengths, a.T, a.B, input);
    const typename Ctx::Guard guard(input.device());
    return detail::recurrent_backward<CellKind::lstm>(op, Ctx::stream(), grad_output, grad_hy, grad_cy, input, hx,
                                                       cx, w_ih, w_hh, output, workspace, reverse, input_grad, len);
  }

  static LstmForward lstm_proj_forward(const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                const Tensor& w_hh, const Tensor& w_hr, const Bias& b_ih, const Bias& b_hh,
                                bool reverse, const Bias& lengths) {
    const char* op = "rnnfast.lstm_proj";
    detail::check_cuda_dtype(op, input);
    const core::RecurrentArgs a = core::check_forward(op, core::LstmCell::traits.gates, input, hx, &cx, w_ih, w_hh, b_ih, b_hh, &w_hr);
    const Tensor len = detail::check_lengths(op, lengths, a.T, a.B, input);
    const typename Ctx::Guard guard(input.device());
    return detail::lstm_proj_forward(op, Ctx::stream(), input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh, reverse, len);
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_proj_backward(
      const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
      const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_hr, const Tensor& output,
      const Tensor& workspace, bool reverse, bool input_grad, const Bias& lengths) {
    const char* op = "rnnfast.lstm_proj";
    detail::check_cuda_dtype(op, input);
    const core::RecurrentArgs a = core::check_backward(op, core::LstmCell::traits.gates, core::kLstmProjSlots, grad_output, grad_hy, &grad_cy, input, hx,
                                                     &cx, w_ih, w_hh, output, workspace, &w_hr);
    const Tensor len = detail::check_lengths(op, lengths, a.T, a.B, input);
    const typename Ctx::Guard guard(input.device());
    return detail::lstm_proj_backward(op, Ctx::stream(), grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh,
                                      w_hr, output, workspace, reverse, input_grad, len);
  }
};

}  // namespace cuda
}  // namespace rnnfast
