// The one host loop every recurrent cell runs through on CPU (contract: csrc/ops.cpp): GEMMs through
// ATen into buffers allocated once per call, the cell's pointwise math (csrc/core/cells.h, run over
// batch rows by rows.h).
//
// forward:  XG = X W_ihᵀ (one GEMM over all T*B rows, biases added pointwise); per step t (walking
//           order) HG = h_{t-1} W_hhᵀ (into one preallocated (B, G*H) buffer), then Cell::forward per row.
// backward: per step in reverse, Cell::backward per row writes dG[t] (and dGh[t]), then one GEMM
//           dh_{t-1} (+)= dGh[t] W_hh; after the loop dx = dG W_ih, dW_ih = dGᵀ X,
//           dW_hh = dGhᵀ Hprev, db_ih / db_hh = column sums of dG / dGh (for RNN and LSTM the
//           last three are one GEMM, dGᵀ [X | Hprev | 1], zero-padded to a multiple of 16
//           columns; GRU reset_after: dGᵀ [X | 1 | 0...] when I is not a multiple of 16).
// The per-step recurrent GEMMs go through RecurrentGemm (blas.h: W_hh packed once per call); the
// pointwise passes run over batch rows with at::parallel_for once B*G*H is large enough. With a
// packed W_hh small enough for L2, each thread instead walks the whole sequence over its own block
// of batch rows (batch_split_chunks): no synchronization per step.
// Variable-length batches (optional lengths): the GEMMs still cover all B rows; the pointwise
// passes freeze a row once t >= lengths[b] (freeze_forward / freeze_backward), and backward then
// always accumulates the dh GEMM (cells that do not carry dh zero their dh rows first).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "../core/args.h"
#include "../core/cells.h"
#include "../core/sequence.h"
#include "../core/tensors.h"
#include "blas.h"
#include "rows.h"

namespace rnnfast {
namespace cpu {
using namespace ::rnnfast::core;  // cells, traits, argument checks, time_of

// Rows per parallel chunk: below ~4K elements a chunk is cheaper on the calling thread than the
// wake-up of another one (measured on the 2-core dev box: 4K-16K equal, 64K slower for LSTM).
inline int64_t row_grain(int64_t row_elems) {
  constexpr int64_t kMinChunk = 4096;
  return std::max<int64_t>(1, kMinChunk / std::max<int64_t>(1, row_elems));
}

template <typename F>
inline void for_rows(int64_t B, int64_t row_elems, const F& f) {
  const int64_t grain = row_grain(row_elems);
  if (B <= grain) {
    f(0, B);
  } else {
    at::parallel_for(0, B, grain, f);
  }
}

// The pointwise row loops, compiled for AVX-512, AVX2 and the baseline ISA (x86-64 builds use
// plain SSE2 otherwise); the dynamic loader picks the widest the CPU supports. Cell functions are
// force-inlined into each clone (cells.h), so each clone vectorizes the whole cell.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNFAST_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RNNFAST_SIMD_CLONES
#endif

// Variable-length batches (`len`, lengths per row, or nullptr): row b is frozen at time t when
// t >= len[b]. A frozen row carries its state unchanged (h_out = h, c_out = c) and zeroes the rest
// of its workspace row (the weight-grad GEMMs read every row; zeros times zero gradient stays zero).
inline bool frozen(const int64_t* len, int64_t t, int64_t b) { return len != nullptr && t >= len[b]; }

template <class Cell, typename T>
RNNFAST_ALWAYS_INLINE void freeze_forward(const FwdRow<T>& r, int64_t H) {
  for (int64_t j = 0; j < H; ++j) r.h_out[j] = r.h[j];
  for (int k = 0; k < Cell::traits.slots; ++k) {
    T* slot = r.ws + k * H;
    if (k == Cell::traits.state_slot) {
      for (int64_t j = 0; j < H; ++j) slot[j] = r.c[j];
    } else {
      for (int64_t j = 0; j < H; ++j) slot[j] = T(0);
    }
  }
}

// A frozen row in backward: no gradient into its gates (dG, dGh rows zero); dL/dh_{t-1} = dL/dh_t
// + grad_output[t] (h_t is a copy of h_{t-1}), dL/dc_{t-1} = dL/dc_t (dc untouched).
template <class Cell, typename T>
RNNFAST_ALWAYS_INLINE void freeze_backward(const BwdRow<T>& r, int64_t H) {
  for (int64_t j = 0; j < Cell::traits.gates * H; ++j) r.dg[j] = T(0);
  if (r.dgh != r.dg) {
    for (int64_t j = 0; j < Cell::traits.gates * H; ++j) r.dgh[j] = T(0);
  }
  for (int64_t j = 0; j < H; ++j) r.dh[j] += r.dy[j];
}

// Phase P of Cell's forward over rows [b0, b1); `row(b)` builds row b's buffers. A frozen row is
// handled in phase 0 (state carried) and skipped after.
template <class Cell, int P, class MakeRow>
RNNFAST_SIMD_CLONES void forward_rows(const MakeRow& row, int64_t b0, int64_t b1, int64_t H, int64_t t,
                                      const int64_t* len) {
  for (int64_t b = b0; b < b1; ++b) {
    if (frozen(len, t, b)) {
      if constexpr (P == 0) freeze_forward<Cell>(row(b), H);
    } else {
      forward_row<Cell, P>(row(b), H);
    }
  }
}

// Phase P of Cell's backward over rows [b0, b1). With lengths, the recurrent GEMM always
// accumulates into dh (a frozen row's dh must survive it), so a cell without a direct part of dh
// (traits.direct_dh false) gets its dh row zeroed here.
template <class Cell, int P, class MakeRow>
RNNFAST_SIMD_CLONES void backward_rows(const MakeRow& row, int64_t b0, int64_t b1, int64_t H, int64_t t,
                                       const int64_t* len) {
  for (int64_t b = b0; b < b1; ++b) {
    if (frozen(len, t, b)) {
      if constexpr (P == 0) freeze_backward<Cell>(row(b), H);
    } else {
      const auto r = row(b);
      backward_row<Cell, P>(r, H);
      if constexpr (P == 0 && !Cell::traits.direct_dh) {
        if (len != nullptr) {
          for (int64_t j = 0; j < H; ++j) r.dh[j] = 0;
        }
      }
    }
  }
}

// Column count of the weight-gradient GEMMs' right operand, rounded up to a multiple of 16.
inline int64_t padded_cols(int64_t n) { return (n + 15) / 16 * 16; }

// Batch-split recurrence: batch rows are independent through the whole recurrence (the GEMM and
// the pointwise math of row b only ever touch row b), so with a packed W_hh each thread can walk
// all T steps over its own block of rows: per step one single-threaded GEMM on its rows and the
// pointwise pass on the same rows, and no synchronization at all until the end of the sequence
// (instead of two fork/joins per step: MKL's inside the GEMM and the pointwise pass's). Each
// thread then streams all of W_hh every step, so this only pays while W_hh stays in a core's L2:
// measured on the 2-core box (Xeon, 2 MB L2), per step M=16 on 1 thread vs M=32 on 2 threads
// (MKL's split over columns): 1 MB W_hh (H=256, 4 gates) 51 vs 54 us; 4 MB (H=512) 314 vs 245 us.
constexpr int64_t kBatchSplitMaxWeightBytes = 1536 * 1024;
constexpr int64_t kBatchSplitMinRows = 8;

// Number of row blocks for the batch-split recurrence (1: run the plain loop).
inline int64_t batch_split_chunks(int64_t B, const RecurrentGemm& rec) {
  if (!rec.packed() || rec.weight_bytes() > kBatchSplitMaxWeightBytes || at::in_parallel_region()) return 1;
  const int64_t nt = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(nt, B / kBatchSplitMinRows));
}

// A dense (contiguous, unit-strided) copy of t: the buffer a loop then writes through raw pointers.
inline at::Tensor dense_copy(const at::Tensor& t) { return at::empty(t.sizes(), t.options()).copy_(t); }

// Padding of a variable-length batch: the caller never promises to fill input rows of frozen
// positions (t >= lengths[b], see freeze_forward), and the weight-gradient GEMMs read every row:
// 0 * NaN would reach every weight gradient. So X is read with those rows zeroed.

// Zeroes, in place, the rows of frozen positions of a (T*B, n) row view (row t*B + b).
inline void zero_frozen_rows(const at::Tensor& rows, const at::Tensor& lengths, int64_t T, int64_t B) {
  if (!lengths.defined()) return;
  const int64_t* len = lengths.const_data_ptr<int64_t>();
  const at::Tensor v = rows.view({T, B, rows.size(1)});
  for (int64_t b = 0; b < B; ++b) {
    if (len[b] < T) v.narrow(0, len[b], T - len[b]).select(1, b).zero_();
  }
}

// input (T, B, I) with the rows of frozen positions zeroed: a copy when some row is frozen, else
// input itself.
inline at::Tensor zero_padding(const at::Tensor& input, const at::Tensor& lengths) {
  if (!lengths.defined()) return input;
  const int64_t T = input.size(0), B = input.size(1);
  const int64_t* len = lengths.const_data_ptr<int64_t>();
  if (std::all_of(len, len + B, [T](int64_t l) { return l >= T; })) return input;
  at::Tensor out = input.clone(at::MemoryFormat::Contiguous);
  zero_frozen_rows(out.view({T * B, input.size(2)}), lengths, T, B);
  return out;
}

// f(b0, b1) for each of `chunks` contiguous blocks of the B batch rows, the blocks spread over the
// threads, MKL single-threaded inside (the batch-split loops below walk a whole sequence per block).
template <class F>
void for_row_blocks(int64_t chunks, int64_t B, const F& f) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const mkl::SequentialScope sequential;
    for (int64_t ch = c0; ch < c1; ++ch) f(B * ch / chunks, B * (ch + 1) / chunks);
  });
}

// The batch-split recurrence (float32, one-phase cells): each of `chunks` threads walks all T steps
// over its own block of batch rows, its GEMMs single-threaded. fwd_row(s, b) builds row b's buffers.
template <class Cell, class MakeRow>
void forward_batch_split(const RecurrentGemm& rec, const PrevState<float>& prev, float* hg, const MakeRow& fwd_row,
                         int64_t chunks, int64_t T, int64_t B, int64_t H, bool reverse, const int64_t* len) {
  constexpr int64_t G = Cell::traits.gates;
  for_row_blocks(chunks, B, [&](int64_t b0, int64_t b1) {
    for (int64_t s = 0; s < T; ++s) {
      rec.run_rows(prev.h(s) + b0 * H, H, hg + b0 * G * H, G * H, b1 - b0, /*accumulate=*/false);
      forward_rows<Cell, 0>([&](int64_t b) { return fwd_row(s, b); }, b0, b1, H, time_of(s, T, reverse), len);
    }
  });
}

// The same in backward: rows of dh, dc, dG, dGh are independent too. With lengths the dh GEMM
// accumulates (see backward_rows).
template <class Cell, class MakeRow>
void backward_batch_split(const RecurrentGemm& rec, const float* dgh, float* dh, const MakeRow& bwd_row,
                          int64_t chunks, int64_t T, int64_t B, int64_t H, bool reverse, const int64_t* len) {
  constexpr int64_t G = Cell::traits.gates;
  for_row_blocks(chunks, B, [&](int64_t b0, int64_t b1) {
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_of(s, T, reverse);
      backward_rows<Cell, 0>([&](int64_t b) { return bwd_row(s, b); }, b0, b1, H, t, len);
      rec.run_rows(dgh + (t * B + b0) * G * H, G * H, dh + b0 * H, H, b1 - b0,
                   /*accumulate=*/Cell::traits.direct_dh || len != nullptr);
    }
  });
}

// Bias added to the input projection: b_ih + b_hh, except the b_hh rows a cell keeps inside its
// pointwise math (G0U reset_after: b_hn). Undefined when there are no biases at all.
template <class Cell>
at::Tensor folded_bias(const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, int64_t H) {
  const bool has_ih = b_ih.has_value() && b_ih->defined();
  const bool has_hh = b_hh.has_value() && b_hh->defined();
  at::Tensor hh;
  if (has_hh) {
    hh = *b_hh;
    if (Cell::traits.inner_bias_gate >= 0) {
      hh = hh.clone();
      hh.narrow(0, Cell::traits.inner_bias_gate * H, H).zero_();
    }
  }
  if (has_ih && has_hh) return *b_ih + hh;
  if (has_ih) return b_ih->contiguous();
  if (has_hh) return hh.contiguous();
  return at::Tensor();
}

// Returns (output, hy, cy (undefined unless kCellState), workspace).
template <class Cell>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_forward(
    const at::Tensor& input_, const at::Tensor& hx_, const at::Tensor& cx_, const at::Tensor& w_ih_,
    const at::Tensor& w_hh_, const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    bool reverse, const at::Tensor& lengths) {
  constexpr int64_t G = Cell::traits.gates;
  constexpr bool kCellState = Cell::traits.has_cell_state(), kTwoPhase = Cell::traits.phases == 2;
  constexpr int64_t G_rec = Cell::traits.phase0_gates;  // gate rows in the per-step recurrent GEMM
  const at::Tensor input = input_.contiguous();
  const at::Tensor hx = hx_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous();
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor cx = kCellState ? cx_.contiguous() : at::Tensor();
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = hx.size(1);
  const auto opts = input.options();

  at::Tensor output = at::empty({T, B, H}, opts);
  at::Tensor ws = Cell::traits.slots ? at::empty({T, B, Cell::traits.slots * H}, opts) : at::empty({0}, opts);

  // Input projection of all steps at once.
  at::Tensor xg = at::empty({T * B, G * H}, opts);
  {
    RECORD_FUNCTION("rnnfast::input_projection", std::vector<c10::IValue>());
    // The biases are added in the pointwise pass, not here: at::addmm_out first broadcasts the bias
    // into xg and then runs the GEMM with beta = 1 (measured 0.40 -> 0.20 ms at T*B=1120, G*H=768).
    at::mm_out(xg, input.view({T * B, I}), w_ih.t());
  }
  at::Tensor bias = folded_bias<Cell>(b_ih, b_hh, H);
  if (!bias.defined()) bias = at::zeros({G * H}, opts);
  at::Tensor b_hn;
  if (Cell::traits.inner_bias_gate >= 0) {
    b_hn = (b_hh.has_value() && b_hh->defined()) ? b_hh->narrow(0, Cell::traits.inner_bias_gate * H, H).contiguous() : at::zeros({H}, opts);
  }

  at::Tensor hg = at::empty({B, G_rec * H}, opts);
  at::Tensor gn = kTwoPhase ? at::empty({B, H}, opts) : at::Tensor();
  // h_{t-1} W_recᵀ and (two-phase) (r h) W_hnᵀ, weights packed once for all steps
  const RecurrentGemm rec(w_hh.narrow(0, 0, G_rec * H), /*transpose=*/true, B, T);
  const RecurrentGemm rec_n = kTwoPhase ? RecurrentGemm(w_hh.narrow(0, G_rec * H, (G - G_rec) * H), true, B, T) : rec;
  const int64_t WS = Cell::traits.slots * H;

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), Cell::name, [&] {
    RECORD_FUNCTION("rnnfast::forward_recurrence", std::vector<c10::IValue>());  // profiler scope
    using T_ = scalar_t;
    const T_* xg_p = xg.const_data_ptr<T_>();
    const T_* bias_p = bias.const_data_ptr<T_>();
    const T_* hg_p = hg.const_data_ptr<T_>();
    const T_* gn_p = kTwoPhase ? gn.const_data_ptr<T_>() : nullptr;
    const T_* b_hn_p = b_hn.defined() ? b_hn.const_data_ptr<T_>() : nullptr;
    T_* out_p = output.data_ptr<T_>();
    T_* ws_p = Cell::traits.slots ? ws.data_ptr<T_>() : nullptr;
    const T_* hx_p = hx.const_data_ptr<T_>();
    const T_* cx_p = kCellState ? cx.const_data_ptr<T_>() : nullptr;
    const int64_t* len_p = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;

    const PrevState<T_> prev{out_p, hx_p, ws_p, cx_p, T, B, H, H, WS, Cell::traits.state_slot, reverse};
    // Row b of step s's pointwise arguments.
    auto fwd_row = [&](int64_t s, int64_t b) {
      const int64_t t = time_of(s, T, reverse);
      FwdRow<T_> r;
      r.xg = xg_p + (t * B + b) * G * H;
      r.bias = bias_p;
      r.hg = hg_p + b * G_rec * H;
      r.b_hn = b_hn_p;
      r.h = prev.h(s) + b * H;
      r.c = kCellState ? prev.c(s) + b * prev.c_ld(s) : nullptr;
      r.h_out = out_p + (t * B + b) * H;
      r.ws = ws_p ? ws_p + (t * B + b) * WS : nullptr;
      return r;
    };

    if constexpr (std::is_same_v<T_, float> && Cell::traits.phases == 1) {  // dependent on Cell: discarded for double
      const int64_t chunks = batch_split_chunks(B, rec);
      if (chunks > 1) {
        forward_batch_split<Cell>(rec, prev, hg.data_ptr<float>(), fwd_row, chunks, T, B, H, reverse, len_p);
        return;
      }
    }

    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_of(s, T, reverse);
      const int64_t tp = s ? time_of(s - 1, T, reverse) : -1;
      rec.run(s ? output.select(0, tp) : hx, hg, /*accumulate=*/false);
      auto row = [&](int64_t b) { return fwd_row(s, b); };
      for_rows(B, G * H, [&](int64_t b0, int64_t b1) { forward_rows<Cell, 0>(row, b0, b1, H, t, len_p); });
      if constexpr (kTwoPhase) {
        // the mid-step GEMM on the workspace's gemm_slot (GRU reset_before: r ⊙ h), row stride WS
        rec_n.run(ws.select(0, t).narrow(1, Cell::traits.gemm_slot * H, H), gn, false);
        auto row2 = [&](int64_t b) {
          FwdRow<T_> r = row(b);
          r.hg = gn_p + b * H;
          return r;
        };
        for_rows(B, G * H, [&](int64_t b0, int64_t b1) { forward_rows<Cell, 1>(row2, b0, b1, H, t, len_p); });
      }
    }
  });

  const int64_t t_last = time_of(T - 1, T, reverse);
  at::Tensor hy = output.select(0, t_last).clone();
  at::Tensor cy;
  if (kCellState) cy = ws.select(0, t_last).narrow(1, Cell::traits.state_slot * H, H).clone(at::MemoryFormat::Contiguous);  // never a view of ws (B == 1)
  return {output, hy, cy, ws};
}

// ---- weight gradients: after the backward loop, dW_ih, dW_hh, db_ih, db_hh from all steps' dG ----
// Three strategies, by what a cell's gradients look like (chosen in recurrent_backward).
struct WeightGradInputs {
  at::Tensor dg;      // (T*B, G*H) input-side pre-activation grads
  at::Tensor dgh;     // (T*B, G*H) recurrent-side (the same tensor as dg unless split_grad)
  at::Tensor x;       // (T*B, I) input as given (padding rows not zeroed: see x_padding_zeroed)
  at::Tensor input, lengths;  // (T, B, I); lengths or undefined
  at::Tensor hx, output, ws;
  bool reverse;
  int64_t rows() const { return dg.size(0); }
  int64_t I() const { return x.size(1); }
  int64_t H() const { return hx.size(1); }
  // h_{t-1} of every (t, b) row into dst (T*B, H), any row stride
  void fill_hprev(const at::Tensor& dst) const { fill_prev_states(dst, hx, output, reverse); }
  // X into dst (T*B, I), any row stride, padding rows zeroed
  void fill_x(const at::Tensor& dst) const {
    dst.copy_(x);
    zero_frozen_rows(dst, lengths, input.size(0), input.size(1));
  }
  // X with padding rows zeroed, for a plain GEMM (a copy only when some row is frozen)
  at::Tensor x_padding_zeroed() const { return zero_padding(input, lengths).view({rows(), I()}); }
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
  at::Tensor a = at::empty({rows, n}, opts);
  fill(a.narrow(1, 0, cols));
  a.narrow(1, cols, 1).fill_(1);
  if (n > cols + 1) a.narrow(1, cols + 1, n - (cols + 1)).zero_();
  return a;
}

// Cells whose dG serves both sides (RNN, LSTM): dW_ih, dW_hh and the bias grad in ONE GEMM that
// reads dG once, dGᵀ [X | Hprev | 1 | 0...]. Measured against two GEMMs written straight into
// contiguous results (no narrow-and-copy): 2-3% faster for the d2l LSTM (B=32, T=35, I=28, H=256),
// equal at H=512.
inline WeightGrads weight_grads_fused(const WeightGradInputs& in) {
  const int64_t I = in.I(), H = in.H();
  const at::Tensor a = with_ones_column(in.rows(), I + H, in.x.options(), [&](const at::Tensor& d) {
    in.fill_x(d.narrow(1, 0, I));
    in.fill_hprev(d.narrow(1, I, H));
  });
  const at::Tensor w = at::mm(in.dg.t(), a);
  WeightGrads g;
  g.w_ih = w.narrow(1, 0, I).contiguous();
  g.w_hh = w.narrow(1, I, H).contiguous();
  g.b_ih = w.select(1, I + H).contiguous();
  g.b_hh = g.b_ih.clone();
  return g;
}

// Cells with split input/recurrent grads (GRU reset_after): each side on its own. Where the side's
// width is not a multiple of 16 (the one-hot I = 28) the bias grad rides in the padding, [A | 1 | 0...];
// otherwise a plain GEMM and a column sum (measured: padding 512 columns to 528 and copying X cost
// more than the sum saves, GRU B=64 T=100 I=H=512 backward 171 -> 177 ms).
inline WeightGrads weight_grads_split(const WeightGradInputs& in) {
  const int64_t I = in.I(), H = in.H();
  WeightGrads g;
  if (I % 16 != 0) {
    const at::Tensor ax = with_ones_column(in.rows(), I, in.x.options(), [&](const at::Tensor& d) { in.fill_x(d); });
    // [X | 1 | 0...]ᵀ dG, the transposed product: MKL then packs the narrow operand rather than
    // all of dG (measured 0.37 -> 0.27 ms at T*B = 1120, G*H = 768, I = 28).
    const at::Tensor wx = at::mm(ax.t(), in.dg);
    g.w_ih = wx.narrow(0, 0, I).t().contiguous();
    g.b_ih = wx.select(0, I).clone();  // a row view is contiguous: copy it out (no view of wx)
  } else {
    g.w_ih = at::mm(in.dg.t(), in.x_padding_zeroed());
    g.b_ih = in.dg.sum(0);
  }
  if (H % 16 != 0) {
    const at::Tensor ah = with_ones_column(in.rows(), H, in.x.options(), [&](const at::Tensor& d) { in.fill_hprev(d); });
    const at::Tensor wh = at::mm(in.dgh.t(), ah);
    g.w_hh = wh.narrow(1, 0, H).contiguous();
    g.b_hh = wh.select(1, H).contiguous();
  } else {
    at::Tensor hprev = at::empty({in.rows(), H}, in.x.options());
    in.fill_hprev(hprev);
    g.w_hh = at::mm(in.dgh.t(), hprev);
    g.b_hh = in.dgh.sum(0);
  }
  return g;
}

// Two-phase cells (GRU reset_before): the rows of W_hh in the first recurrent GEMM saw h_{t-1}, the
// rows of the mid-step GEMM saw the workspace's gemm_slot (r ⊙ h).
template <class Cell>
WeightGrads weight_grads_two_phase(const WeightGradInputs& in) {
  constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;
  const int64_t H = in.H();
  at::Tensor hprev = at::empty({in.rows(), H}, in.x.options());
  in.fill_hprev(hprev);
  WeightGrads g;
  g.w_ih = at::mm(in.dg.t(), in.x_padding_zeroed());
  g.w_hh = at::empty({G * H, H}, in.x.options());
  at::Tensor phase0_rows = g.w_hh.narrow(0, 0, G_rec * H), phase1_rows = g.w_hh.narrow(0, G_rec * H, (G - G_rec) * H);
  at::mm_out(phase0_rows, in.dg.narrow(1, 0, G_rec * H).t(), hprev);
  at::mm_out(phase1_rows, in.dg.narrow(1, G_rec * H, (G - G_rec) * H).t(),
             in.ws.view({in.rows(), Cell::traits.slots * H}).narrow(1, Cell::traits.gemm_slot * H, H));
  g.b_ih = in.dg.sum(0);
  g.b_hh = g.b_ih.clone();
  return g;
}

// Returns (grad_input (zeros unless input_grad), grad_hx, grad_cx (undefined unless cell state),
// grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh).
template <class Cell>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward(
    const at::Tensor& grad_output_, const at::Tensor& grad_hy, const at::Tensor& grad_cy, const at::Tensor& input_,
    const at::Tensor& hx_, const at::Tensor& cx_, const at::Tensor& w_ih_, const at::Tensor& w_hh_,
    const at::Tensor& output_, const at::Tensor& ws_, bool reverse, bool input_grad, const at::Tensor& lengths) {
  constexpr int64_t G = Cell::traits.gates;
  constexpr bool kCellState = Cell::traits.has_cell_state(), kTwoPhase = Cell::traits.phases == 2;
  constexpr int64_t G_rec = Cell::traits.phase0_gates;
  // grad_output is read one (t, b) row at a time: any strides along T and B are fine as long as a
  // row is contiguous; a grad broadcast along H too (out.sum() gives an expanded scalar) becomes
  // one materialized row read by every (t, b). Only other layouts are copied.
  at::Tensor grad_output = grad_output_;
  if (grad_output.numel() > 0 && grad_output.size(2) > 1 && grad_output.stride(2) != 1) {
    grad_output = grad_output.stride(0) == 0 && grad_output.stride(1) == 0
                      ? grad_output.select(0, 0).select(0, 0).contiguous().expand_as(grad_output_)
                      : grad_output.contiguous();
  }
  const int64_t dy_st = grad_output.stride(0), dy_sb = grad_output.stride(1);
  const at::Tensor input = input_.contiguous();
  const at::Tensor hx = hx_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous();
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor output = output_.contiguous();
  const at::Tensor ws = ws_.contiguous();
  const at::Tensor cx = kCellState ? cx_.contiguous() : at::Tensor();
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = hx.size(1);
  const auto opts = input.options();
  const int64_t WS = Cell::traits.slots * H;

  at::Tensor dG = at::empty({T, B, G * H}, opts);
  at::Tensor dGh = Cell::traits.split_grad ? at::empty({T, B, G * H}, opts) : dG;
  // dL/dh_t (dL/dc_t) flowing back through the recurrence: fresh dense buffers whatever the
  // incoming grads' strides (a broadcast grad of hy has stride 0; a clone would keep it)
  at::Tensor dh = dense_copy(grad_hy);
  at::Tensor dc = kCellState ? dense_copy(grad_cy) : at::Tensor();
  at::Tensor drh = kTwoPhase ? at::empty({B, H}, opts) : at::Tensor();
  // dGh[t] W_rec and (two-phase) dn W_hn, weights packed once for all steps
  const RecurrentGemm rec(w_hh.narrow(0, 0, G_rec * H), /*transpose=*/false, B, T);
  const RecurrentGemm rec_n = kTwoPhase ? RecurrentGemm(w_hh.narrow(0, G_rec * H, (G - G_rec) * H), false, B, T) : rec;

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), Cell::name, [&] {
    RECORD_FUNCTION("rnnfast::backward_recurrence", std::vector<c10::IValue>());  // profiler scope
    using T_ = scalar_t;
    const T_* dy_p = grad_output.const_data_ptr<T_>();
    const T_* out_p = output.const_data_ptr<T_>();
    const T_* ws_p = Cell::traits.slots ? ws.const_data_ptr<T_>() : nullptr;
    const T_* hx_p = hx.const_data_ptr<T_>();
    const T_* cx_p = kCellState ? cx.const_data_ptr<T_>() : nullptr;
    T_* dg_p = dG.data_ptr<T_>();
    T_* dgh_p = dGh.data_ptr<T_>();
    T_* dh_p = dh.data_ptr<T_>();
    T_* dc_p = kCellState ? dc.data_ptr<T_>() : nullptr;
    const T_* drh_p = kTwoPhase ? drh.const_data_ptr<T_>() : nullptr;
    const int64_t* len_p = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
    const bool accumulate_dh = Cell::traits.direct_dh || len_p != nullptr;  // see backward_rows

    const PrevState<T_> prev{out_p, hx_p, ws_p, cx_p, T, B, H, H, WS, Cell::traits.state_slot, reverse};
    // Row b of step s's pointwise arguments.
    auto bwd_row = [&](int64_t s, int64_t b) {
      const int64_t t = time_of(s, T, reverse);
      BwdRow<T_> r;
      r.dy = dy_p + t * dy_st + b * dy_sb;
      r.h = prev.h(s) + b * H;
      r.h_out = out_p + (t * B + b) * H;
      r.c = kCellState ? prev.c(s) + b * prev.c_ld(s) : nullptr;
      r.ws = ws_p ? ws_p + (t * B + b) * WS : nullptr;
      r.dg = dg_p + (t * B + b) * G * H;
      r.dgh = dgh_p + (t * B + b) * G * H;
      r.dh = dh_p + b * H;
      r.dc = dc_p ? dc_p + b * H : nullptr;
      r.drh = drh_p ? drh_p + b * H : nullptr;
      return r;
    };

    if constexpr (std::is_same_v<T_, float> && Cell::traits.phases == 1) {  // dependent on Cell: discarded for double
      const int64_t chunks = batch_split_chunks(B, rec);
      if (chunks > 1) {
        backward_batch_split<Cell>(rec, dgh_p, dh_p, bwd_row, chunks, T, B, H, reverse, len_p);
        return;
      }
    }

    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_of(s, T, reverse);
      auto row = [&](int64_t b) { return bwd_row(s, b); };
      for_rows(B, G * H, [&](int64_t b0, int64_t b1) { backward_rows<Cell, 0>(row, b0, b1, H, t, len_p); });
      if constexpr (kTwoPhase) {
        rec_n.run(dG.select(0, t).narrow(1, G_rec * H, (G - G_rec) * H), drh, false);
        for_rows(B, G * H, [&](int64_t b0, int64_t b1) { backward_rows<Cell, 1>(row, b0, b1, H, t, len_p); });
      }
      const at::Tensor dgh_t = G_rec == G ? dGh.select(0, t) : dGh.select(0, t).narrow(1, 0, G_rec * H);
      rec.run(dgh_t, dh, accumulate_dh);
    }
  });

  RECORD_FUNCTION("rnnfast::weight_grads", std::vector<c10::IValue>());
  const at::Tensor dG2 = dG.view({T * B, G * H});
  // X as the weight-gradient GEMMs read it: padding rows zeroed (see zero_frozen_rows), in the copy
  // into the GEMM operand where there is one, else through zero_padding's copy (WeightGradInputs)
  const at::Tensor x2 = input.view({T * B, I});
  // input_grad=false: the input needs no gradient; zeros instead of the (T*B, G*H) x (G*H, I) GEMM
  at::Tensor grad_input = input_grad ? at::mm(dG2, w_ih).view({T, B, I}) : at::zeros_like(input);
  const WeightGradInputs in{dG.view({T * B, G * H}), dGh.view({T * B, G * H}), x2, input, lengths, hx, output, ws, reverse};
  WeightGrads wg;
  if constexpr (kTwoPhase) {
    wg = weight_grads_two_phase<Cell>(in);
  } else if constexpr (Cell::traits.split_grad) {
    wg = weight_grads_split(in);
  } else {
    wg = weight_grads_fused(in);
  }
  return {grad_input, dh, dc, wg.w_ih, wg.w_hh, wg.b_ih, wg.b_hh};
}

}  // namespace cpu
}  // namespace rnnfast
