// The weight gradients of a recurrent layer, after the backward loop (loop.h): dW_ih, dW_hh,
// db_ih, db_hh from all steps' pre-activation grads at once, as large ATen GEMMs (so any backend
// whose tensors ATen can multiply runs them). Named strategies, each measured where it is chosen:
//
//   weight_grads_fused      cells whose dG serves both sides (RNN, LSTM): ONE GEMM
//                           dGᵀ [X | Hprev | 1 | 0...] reads dG once
//   weight_grads_split      split_grad cells (GRU reset_after): each side on its own, the bias
//                           grad riding in the column padding where the width is not a multiple of 16
//   weight_grads_two_phase  two-phase cells (GRU reset_before): the mid-step GEMM's rows of W_hh
//                           saw the workspace's gemm_slot, not h_{t-1}
//   weight_grads_separate   no concatenated operand at all: dW_hh from shifted views of output
//                           (the CUDA backend's choice: no (T*B, I+H+1) copy on the device)
//
// A backend supplies the Padding policy: how the rows of frozen positions of a variable-length
// batch (t >= lengths[b], which callers never promise to fill) are zeroed in X, since 0 * NaN
// would otherwise reach every weight gradient (their dG rows are zero):
//   Padding::without_padding(input (T, B, I), lengths) -> X with those rows zeroed (input itself
//       when there is nothing to zero, or, on the CPU, when those rows are all finite: 0 * x is
//       then an exact zero)
//   Padding::zero_rows(rows (T*B, n) view, lengths, T, B) -> zeroes them in place
#pragma once
#include <ATen/ATen.h>

#include "cells.h"
#include "grad_accumulation.h"
#include "scratch.h"
#include "tensors.h"

namespace rnnfast {
namespace core {

// Column count of the weight-gradient GEMMs' right operand, rounded up to a multiple of 16.
inline int64_t padded_cols(int64_t n) { return (n + 15) / 16 * 16; }

// dst = a b, or dst += a b when accumulating (beta = 0 ignores dst's old contents, NaN or not):
// the backend's own GEMM where it takes the operands (Padding::gemm_into: on the CPU, rnnfast's
// blocked AVX2 GEMM for the large ones, cpu/blas.h blocked_gemm), else ATen's.
template <class Padding>
void product_into(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (Padding::gemm_into(dst, a, b, accumulate)) return;
  if (accumulate) dst.addmm_(a, b);
  else at::mm_out(dst, a, b);
}
// a b, a fresh tensor, as product_into.
template <class Padding>
at::Tensor product(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor dst = at::empty({a.size(0), b.size(1)}, a.options());
  product_into<Padding>(dst, a, b, false);
  return dst;
}

template <class Padding>
struct WeightGradInputs {
  at::Tensor dg;       // (T*B, G*H) input-side pre-activation grads
  at::Tensor dgh;      // (T*B, G*H) recurrent-side (the same tensor as dg unless split_grad)
  at::Tensor input;    // (T, B, I) as given (padding rows not zeroed)
  at::Tensor lengths;  // or undefined
  at::Tensor hx, output, ws;  // hx (B, P), output (T, B, P), ws (T, B, slots*H)
  bool reverse;
  // Weight gradients to accumulate into (beta = 1) instead of returning fresh ones; either may be
  // undefined. The autograd node passes them (grad_accumulation.h); a strategy that honours one
  // leaves that result undefined, and recurrent_backward adds any other result into it.
  AccumulationTargets into = {};
  int64_t T() const { return input.size(0); }
  int64_t B() const { return input.size(1); }
  int64_t rows() const { return dg.size(0); }
  int64_t I() const { return input.size(2); }
  int64_t P() const { return hx.size(1); }  // the width of h
  int64_t gate_rows() const { return dg.size(1); }
  // h_{t-1} of every (t, b) row into dst (T*B, P), any row stride
  void fill_hprev(const at::Tensor& dst) const { fill_prev_states(dst, hx, output, reverse); }
  // X into dst (T*B, I), any row stride, padding rows zeroed
  void fill_x(const at::Tensor& dst) const {
    dst.copy_(input.view({rows(), I()}));
    if (lengths.defined()) Padding::zero_rows(dst, lengths, T(), B());
  }
  // X with padding rows zeroed, for a plain GEMM
  at::Tensor x_padding_zeroed() const { return Padding::without_padding(input, lengths).reshape({rows(), I()}); }
};

struct WeightGrads {
  at::Tensor w_ih, w_hh, b_ih, b_hh;
};

// [A | 1 | 0...]: the operand whose product with dG gives a weight gradient and, in its column of
// ones, the bias gradient; columns padded to a multiple of 16 (MKL runs an odd N up to 25% slower).
// `fill(a)` writes the leading `cols` columns.
template <class Fill>
at::Tensor with_ones_column(int64_t rows, int64_t cols, const at::TensorOptions& opts, const Fill& fill) {
  const int64_t n = padded_cols(cols + 1);
  at::Tensor a = scratch_empty({rows, n}, opts);  // scratch of this call (scratch.h)
  fill(a.narrow(1, 0, cols));
  a.narrow(1, cols, 1).fill_(1);
  if (n > cols + 1) a.narrow(1, cols + 1, n - (cols + 1)).zero_();
  return a;
}

// Measured against two GEMMs written straight into contiguous results (no narrow-and-copy): 2-3%
// faster for the d2l LSTM (B=32, T=35, I=28, H=256) on the CPU, equal at H=512.
template <class Padding>
WeightGrads weight_grads_fused(const WeightGradInputs<Padding>& in) {
  const int64_t I = in.I(), P = in.P();
  const at::Tensor a = with_ones_column(in.rows(), I + P, in.dg.options(), [&](const at::Tensor& d) {
    in.fill_x(d.narrow(1, 0, I));
    in.fill_hprev(d.narrow(1, I, P));
  });
  const at::Tensor w = product<Padding>(in.dg.t(), a);
  WeightGrads g;
  g.w_ih = w.narrow(1, 0, I).contiguous();
  g.w_hh = w.narrow(1, I, P).contiguous();
  g.b_ih = w.select(1, I + P).contiguous();
  g.b_hh = g.b_ih.clone();
  return g;
}

// Where the side's width is not a multiple of 16 (the one-hot I = 28) the bias grad rides in the
// padding, [A | 1 | 0...]; otherwise a plain GEMM and a column sum (measured on the CPU: padding 512
// columns to 528 and copying X cost more than the sum saves, GRU B=64 T=100 I=H=512 backward
// 171 -> 177 ms).
template <class Padding>
WeightGrads weight_grads_split(const WeightGradInputs<Padding>& in) {
  const int64_t I = in.I(), P = in.P();
  const auto opts = in.dg.options();
  WeightGrads g;
  if (I % 16 != 0) {
    const at::Tensor ax = with_ones_column(in.rows(), I, opts, [&](const at::Tensor& d) { in.fill_x(d); });
    // [X | 1 | 0...]ᵀ dG, the transposed product: MKL then packs the narrow operand rather than
    // all of dG (measured 0.37 -> 0.27 ms at T*B = 1120, G*H = 768, I = 28).
    const at::Tensor wx = product<Padding>(ax.t(), in.dg);
    g.w_ih = wx.narrow(0, 0, I).t().contiguous();
    g.b_ih = wx.select(0, I).clone();  // a row view is contiguous: copy it out (no view of wx)
  } else {
    g.w_ih = product<Padding>(in.dg.t(), in.x_padding_zeroed());
    g.b_ih = in.dg.sum(0);
  }
  if (P % 16 != 0) {
    const at::Tensor ah = with_ones_column(in.rows(), P, opts, [&](const at::Tensor& d) { in.fill_hprev(d); });
    const at::Tensor wh = product<Padding>(in.dgh.t(), ah);
    g.w_hh = wh.narrow(1, 0, P).contiguous();
    g.b_hh = wh.select(1, P).contiguous();
  } else {
    at::Tensor hprev = scratch_empty({in.rows(), P}, opts);
    in.fill_hprev(hprev);
    g.w_hh = product<Padding>(in.dgh.t(), hprev);
    g.b_hh = in.dgh.sum(0);
  }
  return g;
}


// The rows of dW_hh that the mid-step GEMM of a two-phase cell produced: they saw the workspace's
// gemm_slot (GRU reset_before: r h_{t-1}). Written into dst ((G - phase0_gates)*H, H).
// accumulate: add into dst (beta = 1) rather than overwrite it.
template <class Cell, class Padding>
void mid_gemm_weight_grad(const WeightGradInputs<Padding>& in, at::Tensor& dst, bool accumulate = false) {
  constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;
  const int64_t H = in.gate_rows() / G;
  product_into<Padding>(dst, in.dg.narrow(1, G_rec * H, (G - G_rec) * H).t(),
               in.ws.view({in.rows(), Cell::traits.slots * H}).narrow(1, Cell::traits.gemm_slot * H, H), accumulate);
}

template <class Cell, class Padding>
WeightGrads weight_grads_two_phase(const WeightGradInputs<Padding>& in) {
  constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;
  const int64_t H = in.gate_rows() / G;
  at::Tensor hprev = scratch_empty({in.rows(), H}, in.dg.options());
  in.fill_hprev(hprev);
  WeightGrads g;
  g.w_ih = product<Padding>(in.dg.t(), in.x_padding_zeroed());
  g.w_hh = at::empty({G * H, H}, in.dg.options());
  at::Tensor phase0_rows = g.w_hh.narrow(0, 0, G_rec * H), phase1_rows = g.w_hh.narrow(0, G_rec * H, (G - G_rec) * H);
  product_into<Padding>(phase0_rows, in.dg.narrow(1, 0, G_rec * H).t(), hprev, false);
  mid_gemm_weight_grad<Cell>(in, phase1_rows);
  g.b_ih = in.dg.sum(0);
  g.b_hh = g.b_ih.clone();
  return g;
}

// dst (rows, P) = dGr[..]ᵀ Hprev without materializing Hprev: the step taken first saw hx, every
// other step the previous step's output, a shifted view of output. dgr (T, B, rows).
template <class Padding>
void recurrent_weight_grad_shifted(at::Tensor& dst, const at::Tensor& dgr, const at::Tensor& hx,
                                          const at::Tensor& output, bool reverse, bool accumulate = false) {
  const int64_t T = output.size(0), B = output.size(1), P = output.size(2), n = dgr.size(2);
  const int64_t t_first = reverse ? T - 1 : 0;
  if (T > 1) {
    const at::Tensor d_rest = (reverse ? dgr.narrow(0, 0, T - 1) : dgr.narrow(0, 1, T - 1)).reshape({(T - 1) * B, n});
    const at::Tensor h_rest = (reverse ? output.narrow(0, 1, T - 1) : output.narrow(0, 0, T - 1)).reshape({(T - 1) * B, P});
    product_into<Padding>(dst, d_rest.t(), h_rest, accumulate);
    dst.addmm_(dgr.select(0, t_first).t(), hx);
  } else {
    product_into<Padding>(dst, dgr.select(0, t_first).t(), hx, accumulate);
  }
}

// Every gradient its own GEMM or column sum, no concatenated operand. Honours in.into_*: a weight
// gradient to accumulate into takes the same GEMMs with beta = 1 (no fresh result, no add pass).
template <class Cell, class Padding>
WeightGrads weight_grads_separate(const WeightGradInputs<Padding>& in) {
  constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;
  const int64_t H = in.gate_rows() / G, P = in.P();
  const bool into_ih = in.into.w_ih.defined(), into_hh = in.into.w_hh.defined();
  at::Tensor w_ih = into_ih ? in.into.w_ih : at::empty({G * H, in.I()}, in.dg.options());
  product_into<Padding>(w_ih, in.dg.t(), in.x_padding_zeroed(), into_ih);
  at::Tensor w_hh = into_hh ? in.into.w_hh : at::empty({G * H, P}, in.dg.options());
  at::Tensor phase0_rows = w_hh.narrow(0, 0, G_rec * H);
  recurrent_weight_grad_shifted<Padding>(phase0_rows, in.dgh.view({in.T(), in.B(), G * H}).narrow(2, 0, G_rec * H), in.hx,
                                in.output, in.reverse, into_hh);
  if constexpr (Cell::traits.phases == 2) {
    at::Tensor phase1_rows = w_hh.narrow(0, G_rec * H, (G - G_rec) * H);
    mid_gemm_weight_grad<Cell>(in, phase1_rows, into_hh);
  }
  WeightGrads g;
  if (!into_ih) g.w_ih = w_ih;
  if (!into_hh) g.w_hh = w_hh;
  g.b_ih = in.dg.sum(0);
  g.b_hh = Cell::traits.split_grad ? in.dgh.sum(0) : g.b_ih.clone();
  return g;
}

// Whether a concatenated operand repays its copies. The concatenating strategies write the
// weight gradients into one (G*H, I+P+pad) product and copy them out (fused), or fill a
// (rows, I+P) operand first: about 2 (G*H)(I+P) extra element moves, against the (rows, G*H) read
// of dG they save. With few rows (a cell's step, T*B small) the copies dominate: LSTM I=H=1024,
// T=B=1 backward 26.7 ms with the copies (fresh 32 MB buffers, page faults), the GEMMs alone a few
// ms. So: concatenate only when rows >= 2 (I + P).
template <class Padding>
bool concatenation_repays(const WeightGradInputs<Padding>& in) {
  return in.rows() >= 2 * (in.I() + in.P());
}

// The strategy the CPU measured best for each kind of cell; a short problem (few rows) takes the
// separate GEMMs written straight into their results.
template <class Cell, class Padding>
WeightGrads weight_grads_by_cell(const WeightGradInputs<Padding>& in) {
  if (!concatenation_repays(in)) {
    return weight_grads_separate<Cell>(in);
  } else if constexpr (Cell::traits.phases == 2) {
    return weight_grads_two_phase<Cell>(in);
  } else if constexpr (Cell::traits.split_grad) {
    return weight_grads_split(in);
  } else {
    return weight_grads_fused(in);
  }
}

}  // namespace core
}  // namespace rnnfast
