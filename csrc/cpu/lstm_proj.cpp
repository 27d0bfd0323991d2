// LSTM with a projection (torch.nn.LSTM(proj_size=P)) on CPU: one layer, one direction, the whole
// sequence, forward and backward (schemas in csrc/ops.cpp).
//
//   gates_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh      W_hh (4H, P), h (B, P)
//   c_t = f c_{t-1} + i g;  m_t = o tanh(c_t);  h_t = m_t W_hrᵀ     W_hr (P, H)
//
// The cell math is LstmCell's (csrc/core/cells.h) with its h output pointed at the workspace's m slot; each
// step adds one GEMM, m_t W_hrᵀ, written straight into output[t]. Workspace (T, B, 6H) =
// [i, f, g, o, c, m]. Backward per step in reverse: dH[t] = dh + grad_output[t] (kept for
// dW_hr), dm = dH[t] W_hr (GEMM), LstmCell::backward on dm, then dh_{t-1} = dG[t] W_hh (GEMM). After
// the loop dx, dW_ih, dW_hh and dW_hr = dHᵀ M are single GEMMs. Variable-length batches (lengths)
// freeze rows as the other cells do (recurrent.h): state carried, zero gate gradients.
#include <torch/library.h>

#include "recurrent.h"

namespace rnnfast {
namespace cpu {
namespace {

constexpr const char* kOp = "rnnfast.lstm_proj";
constexpr int64_t G = LstmCell::traits.gates;

// Rows [b0, b1) of one step's pointwise pass; frozen rows carry c and get zero gates and m.
template <typename T_, class MakeRow>
RNNFAST_SIMD_CLONES void proj_forward_rows(const MakeRow& row, int64_t b0, int64_t b1, int64_t H, int64_t t,
                                           const int64_t* len) {
  for (int64_t b = b0; b < b1; ++b) {
    const FwdRow<T_> r = row(b);
    if (frozen(len, t, b)) {
      for (int64_t j = 0; j < LstmCell::kSlotC * H; ++j) r.ws[j] = T_(0);  // the gate slots i, f, g, o
      for (int64_t j = 0; j < H; ++j) r.ws[LstmCell::kSlotC * H + j] = r.c[j];
      for (int64_t j = 0; j < H; ++j) r.h_out[j] = T_(0);  // m
    } else {
      forward_row<LstmCell, 0>(r, H);
    }
  }
}

template <typename T_, class MakeRow>
RNNFAST_SIMD_CLONES void proj_backward_rows(const MakeRow& row, T_* dh, const T_* dy, int64_t b0, int64_t b1,
                                            int64_t H, int64_t P, int64_t t, const int64_t* len) {
  for (int64_t b = b0; b < b1; ++b) {
    const BwdRow<T_> r = row(b);
    if (frozen(len, t, b)) {  // h_t is a copy of h_{t-1}: dh passes on with grad_output[t]; dc untouched
      for (int64_t j = 0; j < LstmCell::traits.gates * H; ++j) r.dg[j] = T_(0);
      for (int64_t j = 0; j < P; ++j) dh[b * P + j] += dy[b * P + j];
    } else {
      backward_row<LstmCell, 0>(r, H);
      if (len) {
        for (int64_t j = 0; j < P; ++j) dh[b * P + j] = T_(0);  // consumed into dH[t]; the GEMM adds the rest
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_proj_forward(
    const at::Tensor& input_, const at::Tensor& hx_, const at::Tensor& cx_, const at::Tensor& w_ih_,
    const at::Tensor& w_hh_, const at::Tensor& w_hr_, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, bool reverse, const c10::optional<at::Tensor>& lengths) {
  const RecurrentArgs a = check_forward(kOp, LstmCell::traits.gates, input_, hx_, &cx_, w_ih_, w_hh_, b_ih, b_hh, &w_hr_);
  const at::Tensor len = check_lengths(kOp, lengths, a.T, a.B);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P, WS = kLstmProjSlots * H;
  const at::Tensor input = input_.contiguous(), hx = hx_.contiguous(), cx = cx_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), w_hr = w_hr_.contiguous();
  const auto opts = input.options();

  at::Tensor output = at::empty({T, B, P}, opts);
  at::Tensor ws = at::empty({T, B, WS}, opts);
  at::Tensor xg = at::empty({T * B, G * H}, opts);
  at::mm_out(xg, input.view({T * B, I}), w_ih.t());
  at::Tensor bias = folded_bias<LstmCell>(b_ih, b_hh, H);
  if (!bias.defined()) bias = at::zeros({G * H}, opts);
  at::Tensor hg = at::empty({B, G * H}, opts);
  const at::Tensor w_hh_t = w_hh.t(), w_hr_t = w_hr.t();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_proj", [&] {
    RECORD_FUNCTION("rnnfast::forward_recurrence", std::vector<c10::IValue>());
    using T_ = scalar_t;
    const T_* xg_p = xg.const_data_ptr<T_>();
    const T_* bias_p = bias.const_data_ptr<T_>();
    const T_* hg_p = hg.const_data_ptr<T_>();
    const T_* cx_p = cx.const_data_ptr<T_>();
    T_* ws_p = ws.data_ptr<T_>();
    T_* out_p = output.data_ptr<T_>();
    const T_* hx_p = hx.const_data_ptr<T_>();
    const int64_t* len_p = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    const PrevState<T_> prev{out_p, hx_p, ws_p, cx_p, T, B, H, P, WS, LstmCell::kSlotC, reverse};
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_of(s, T, reverse), tp = s ? time_of(s - 1, T, reverse) : -1;
      at::mm_out(hg, s ? output.select(0, tp) : hx, w_hh_t);
      auto row = [&](int64_t b) {
        FwdRow<T_> r{};
        r.xg = xg_p + (t * B + b) * G * H;
        r.bias = bias_p;
        r.hg = hg_p + b * G * H;
        r.c = prev.c(s) + b * prev.c_ld(s);
        r.ws = ws_p + (t * B + b) * WS;
        r.h_out = r.ws + kLstmProjSlotM * H;  // m_t; h_t is its projection
        return r;
      };
      for_rows(B, G * H, [&](int64_t b0, int64_t b1) { proj_forward_rows<T_>(row, b0, b1, H, t, len_p); });
      at::Tensor out_t = output.select(0, t);
      at::mm_out(out_t, ws.select(0, t).narrow(1, kLstmProjSlotM * H, H), w_hr_t);
      if (len_p) {  // frozen rows keep h_{t-1}
        const T_* h_before = prev.h(s);
        for (int64_t b = 0; b < B; ++b) {
          if (frozen(len_p, t, b)) std::copy(h_before + b * P, h_before + (b + 1) * P, out_p + (t * B + b) * P);
        }
      }
    }
  });
  const int64_t t_last = time_of(T - 1, T, reverse);
  at::Tensor hy = output.select(0, t_last).clone();
  at::Tensor cy = ws.select(0, t_last).narrow(1, LstmCell::kSlotC * H, H).clone(at::MemoryFormat::Contiguous);
  return {output, hy, cy, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_proj_backward(const at::Tensor& grad_output_, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                   const at::Tensor& input_, const at::Tensor& hx_, const at::Tensor& cx_, const at::Tensor& w_ih_,
                   const at::Tensor& w_hh_, const at::Tensor& w_hr_, const at::Tensor& output_,
                   const at::Tensor& ws_, bool reverse, bool input_grad, const c10::optional<at::Tensor>& lengths) {
  const RecurrentArgs a = check_backward(kOp, LstmCell::traits.gates, kLstmProjSlots, grad_output_, grad_hy, &grad_cy, input_, hx_, &cx_, w_ih_,
                                         w_hh_, output_, ws_, &w_hr_);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P, WS = kLstmProjSlots * H;
  const at::Tensor len = check_lengths(kOp, lengths, T, B);

  const at::Tensor grad_output = grad_output_.contiguous(), input = input_.contiguous();
  const at::Tensor hx = hx_.contiguous(), cx = cx_.contiguous(), output = output_.contiguous();
  const at::Tensor ws = ws_.contiguous(), w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor w_hr = w_hr_.contiguous();
  const auto opts = input.options();

  at::Tensor dG = at::empty({T, B, G * H}, opts);
  at::Tensor dH = at::empty({T, B, P}, opts);  // dL/dh_t in full, per step (for dW_hr)
  at::Tensor dh = dense_copy(grad_hy);  // never a stride-0 grad's layout (recurrent.h)
  at::Tensor dc = dense_copy(grad_cy);
  at::Tensor dm = at::empty({B, H}, opts);
  const at::Tensor zero_row = at::zeros({H}, opts);  // LstmCell::backward adds a grad_output row: none here

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_proj", [&] {
    RECORD_FUNCTION("rnnfast::backward_recurrence", std::vector<c10::IValue>());
    using T_ = scalar_t;
    const T_* dy_p = grad_output.const_data_ptr<T_>();
    const T_* ws_p = ws.const_data_ptr<T_>();
    const T_* cx_p = cx.const_data_ptr<T_>();
    const T_* zero_p = zero_row.const_data_ptr<T_>();
    T_* dg_p = dG.data_ptr<T_>();
    T_* dH_p = dH.data_ptr<T_>();
    T_* dh_p = dh.data_ptr<T_>();
    T_* dc_p = dc.data_ptr<T_>();
    T_* dm_p = dm.data_ptr<T_>();
    const int64_t* len_p = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    const PrevState<T_> prev{nullptr, nullptr, ws_p, cx_p, T, B, H, P, WS, LstmCell::kSlotC, reverse};
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_of(s, T, reverse);
      const T_* dy_t = dy_p + t * B * P;
      T_* dH_t = dH_p + t * B * P;
      for (int64_t b = 0; b < B; ++b) {
        const bool fr = frozen(len_p, t, b);
        for (int64_t j = 0; j < P; ++j) dH_t[b * P + j] = fr ? T_(0) : dh_p[b * P + j] + dy_t[b * P + j];
      }
      at::mm_out(dm, dH.select(0, t), w_hr);
      auto row = [&](int64_t b) {
        BwdRow<T_> r{};
        r.dy = zero_p;
        r.c = prev.c(s) + b * prev.c_ld(s);
        r.ws = ws_p + (t * B + b) * WS;
        r.dg = dg_p + (t * B + b) * G * H;
        r.dgh = r.dg;
        r.dh = dm_p + b * H;
        r.dc = dc_p + b * H;
        return r;
      };
      for_rows(B, G * H, [&](int64_t b0, int64_t b1) {
        proj_backward_rows<T_>(row, dh_p, dy_t, b0, b1, H, P, t, len_p);
      });
      if (len_p) {
        dh.addmm_(dG.select(0, t), w_hh);
      } else {
        at::mm_out(dh, dG.select(0, t), w_hh);
      }
    }
  });

  RECORD_FUNCTION("rnnfast::weight_grads", std::vector<c10::IValue>());
  const at::Tensor dG2 = dG.view({T * B, G * H});
  at::Tensor grad_input = input_grad ? at::mm(dG2, w_ih).view({T, B, I}) : at::zeros_like(input);
  at::Tensor grad_w_ih = at::mm(dG2.t(), zero_padding(input, len).view({T * B, I}));  // see zero_padding
  at::Tensor hprev = at::empty({T * B, P}, opts);
  fill_prev_states(hprev, hx, output, reverse);
  at::Tensor grad_w_hh = at::mm(dG2.t(), hprev);
  at::Tensor grad_w_hr = at::mm(dH.view({T * B, P}).t(), ws.view({T * B, WS}).narrow(1, kLstmProjSlotM * H, H));
  at::Tensor grad_b_ih = dG2.sum(0);
  at::Tensor grad_b_hh = grad_b_ih.clone();
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_w_hr, grad_b_ih, grad_b_hh};
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfast

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("lstm_proj_forward", &rnnfast::cpu::lstm_proj_forward);
  m.impl("lstm_proj_backward", &rnnfast::cpu::lstm_proj_backward);
}
