// Pointwise math of every recurrent cell, forward and backward, one row (one batch element,
// H hidden units) at a time. The host loop (recurrent.h) does the GEMMs and calls these; a cell
// knows nothing of tensors. The CUDA kernels (csrc/kernels/cells.cuh) mirror the same formulas.
//
// Conventions (DESIGN.md §3, layouts in csrc/ops.cpp):
//   xg  input projection row, W_ih x (no bias: the GEMM without a bias operand is ~2x faster)
//   bias the biases the host folds together, added here (b_ih + b_hh, see Cell::fold_hidden_bias_n)
//   hg  recurrent GEMM row, W_hh h_{t-1} (GRU reset_before: only the r,z rows)
//   ws  workspace row: gru [r, z, n, hn] (4H), lstm [i, f, g, o, c] (5H), rnn none
//   dg  gradient w.r.t. the input-side pre-activations (rows of dG, used for dW_ih, db_ih, dx)
//   dgh gradient w.r.t. the recurrent-side pre-activations (dW_hh, db_hh, dh_{t-1} GEMM); the same
//       buffer as dg unless Cell::separate_hidden_grad
//   dh  on entry the recurrent gradient dL/dh_t from later steps (grad_output[t] is added here);
//       on exit the part of dL/dh_{t-1} that does not go through W_hh (the host then adds
//       dgh·W_hh), or untouched when Cell::carries_dh is false (the host overwrites it).
#pragma once
#include <cmath>
#include <cstdint>

#include "fastmath.h"

namespace rnnfast {
namespace cpu {

template <typename T>
RNNFAST_ALWAYS_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

template <typename T>
struct FwdRow {
  const T* xg;
  const T* bias;  // (G*H) folded biases (zeros when the layer has none)
  const T* hg;
  const T* b_hn;  // GRU reset_after: the n rows of b_hh (zeros when b_hh is None)
  const T* h;     // h_{t-1}
  const T* c;     // c_{t-1} (LSTM)
  T* h_out;
  T* c_out;  // LSTM: c_t (points into ws)
  T* ws;
};

template <typename T>
struct BwdRow {
  const T* dy;  // grad_output[t]
  const T* h;   // h_{t-1}
  const T* h_out;  // h_t
  const T* c;   // c_{t-1} (LSTM)
  const T* ws;
  T* dg;
  T* dgh;
  T* dh;
  T* dc;  // LSTM: in dL/dc_t from later steps, out dL/dc_{t-1}
};

// ---- Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh) -------------------------------------------
// Backward needs only h_t (the output): tanh' = 1 - h'^2, relu' = [h' > 0].
template <bool Relu>
struct RnnCell {
  static constexpr const char* name = Relu ? "rnn_relu" : "rnn_tanh";
  static constexpr int gates = 1;
  static constexpr int ws_width = 0;
  static constexpr bool has_cell_state = false;
  static constexpr bool fold_hidden_bias_n = true;  // b_hh goes entirely into the projection
  static constexpr bool separate_hidden_grad = false;
  static constexpr bool carries_dh = false;
  static constexpr bool two_phase = false;

  template <typename T>
  RNNFAST_ALWAYS_INLINE static void forward(const FwdRow<T>& r, int64_t H) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T a = (r.xg[j] + r.bias[j]) + r.hg[j];
      r.h_out[j] = Relu ? (a < T(0) ? T(0) : a) : fast_tanh(a);  // relu keeps NaN, as torch's
    }
  }
  template <typename T>
  RNNFAST_ALWAYS_INLINE static void backward(const BwdRow<T>& r, int64_t H) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T d = r.dh[j] + r.dy[j];
      const T y = r.h_out[j];
      r.dg[j] = Relu ? (y <= T(0) ? T(0) : d) : d * (T(1) - y * y);
    }
  }
};

// ---- LSTM: gates i,f,g,o; c' = f c + i g; h' = o tanh(c') ------------------------------------------
struct LstmCell {
  static constexpr const char* name = "lstm";
  static constexpr int gates = 4;
  static constexpr int ws_width = 5;
  static constexpr bool has_cell_state = true;
  static constexpr bool fold_hidden_bias_n = true;
  static constexpr bool separate_hidden_grad = false;
  static constexpr bool carries_dh = false;
  static constexpr bool two_phase = false;

  template <typename T>
  RNNFAST_ALWAYS_INLINE static void forward(const FwdRow<T>& r, int64_t H) {
    T* wi = r.ws;
    T* wf = r.ws + H;
    T* wg = r.ws + 2 * H;
    T* wo = r.ws + 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T i = sigmoid((r.xg[j] + r.bias[j]) + r.hg[j]);
      const T f = sigmoid((r.xg[H + j] + r.bias[H + j]) + r.hg[H + j]);
      const T g = fast_tanh((r.xg[2 * H + j] + r.bias[2 * H + j]) + r.hg[2 * H + j]);
      const T o = sigmoid((r.xg[3 * H + j] + r.bias[3 * H + j]) + r.hg[3 * H + j]);
      const T c = f * r.c[j] + i * g;
      wi[j] = i;
      wf[j] = f;
      wg[j] = g;
      wo[j] = o;
      r.c_out[j] = c;
      r.h_out[j] = o * fast_tanh(c);
    }
  }
  template <typename T>
  RNNFAST_ALWAYS_INLINE static void backward(const BwdRow<T>& r, int64_t H) {
    const T* wi = r.ws;
    const T* wf = r.ws + H;
    const T* wg = r.ws + 2 * H;
    const T* wo = r.ws + 3 * H;
    const T* wc = r.ws + 4 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T i = wi[j], f = wf[j], g = wg[j], o = wo[j];
      const T tc = fast_tanh(wc[j]);
      const T dh = r.dh[j] + r.dy[j];
      // The products in torch's order (autograd of c' = f c + i g, h' = o tanh(c'), with
      // sigmoid' = (1 - y) y, tanh' = 1 - y^2): where a saturated gate or tanh(c') gives an exact 0
      // factor, the overflow / inf * 0 cases come out as torch's, finite where torch's are.
      const T dc = r.dc[j] + (dh * o) * (T(1) - tc * tc);
      r.dg[j] = ((dc * g) * (T(1) - i)) * i;
      r.dg[H + j] = ((dc * r.c[j]) * (T(1) - f)) * f;
      r.dg[2 * H + j] = (dc * i) * (T(1) - g * g);
      r.dg[3 * H + j] = ((dh * tc) * (T(1) - o)) * o;
      r.dc[j] = dc * f;
    }
  }
};

// ---- GRU, shared by both variants: h' = (1 - z) n + z h -------------------------------------------
// reset_after (torch.nn.GRU): n = tanh(xn + r (W_hn h + b_hn)); hn = W_hn h + b_hn is kept.
struct GruResetAfterCell {
  static constexpr const char* name = "gru";
  static constexpr int gates = 3;
  static constexpr int ws_width = 4;
  static constexpr bool has_cell_state = false;
  static constexpr bool fold_hidden_bias_n = false;  // b_hn sits inside r ⊙ (...)
  static constexpr bool separate_hidden_grad = true;  // d(W_hn h) = dn ⊙ r, not dn
  static constexpr bool carries_dh = true;            // dh_{t-1} gets dh ⊙ z directly
  static constexpr bool two_phase = false;

  template <typename T>
  RNNFAST_ALWAYS_INLINE static void forward(const FwdRow<T>& r, int64_t H) {
    T* wr = r.ws;
    T* wz = r.ws + H;
    T* wn = r.ws + 2 * H;
    T* whn = r.ws + 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T rr = sigmoid((r.xg[j] + r.bias[j]) + r.hg[j]);
      const T z = sigmoid((r.xg[H + j] + r.bias[H + j]) + r.hg[H + j]);
      const T hn = r.hg[2 * H + j] + r.b_hn[j];
      const T n = fast_tanh((r.xg[2 * H + j] + r.bias[2 * H + j]) + rr * hn);
      wr[j] = rr;
      wz[j] = z;
      wn[j] = n;
      whn[j] = hn;
      r.h_out[j] = n + z * (r.h[j] - n);
    }
  }
  template <typename T>
  RNNFAST_ALWAYS_INLINE static void backward(const BwdRow<T>& r, int64_t H) {
    const T* wr = r.ws;
    const T* wz = r.ws + H;
    const T* wn = r.ws + 2 * H;
    const T* whn = r.ws + 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T rr = wr[j], z = wz[j], n = wn[j], hn = whn[j];
      const T dh = r.dh[j] + r.dy[j];
      const T dn = dh * (T(1) - z) * (T(1) - n * n);
      const T dz = dh * (r.h[j] - n) * z * (T(1) - z);
      const T dr = dn * hn * rr * (T(1) - rr);
      r.dg[j] = dr;
      r.dg[H + j] = dz;
      r.dg[2 * H + j] = dn;
      r.dgh[j] = dr;
      r.dgh[H + j] = dz;
      r.dgh[2 * H + j] = dn * rr;
      r.dh[j] = dh * z;
    }
  }
};

// reset_before (textbook, Cho et al.): n = tanh(xn + W_hn (r h) + b_hn); hn = r h is kept. The
// candidate's recurrent GEMM needs r first, so a step is two phases around a second GEMM:
//   forward:  hg = h W_hrzᵀ -> forward (r, z, rh) -> gn = rh W_hnᵀ -> forward2 (n, h')
//   backward: backward (dz, dn, dh z) -> drh = dn W_hn -> backward2 (dr, dh += drh r)
//             -> dh += [dr dz] W_hrz
struct GruResetBeforeCell {
  static constexpr const char* name = "gru";
  static constexpr int gates = 3;
  static constexpr int ws_width = 4;
  static constexpr bool has_cell_state = false;
  static constexpr bool fold_hidden_bias_n = true;
  static constexpr bool separate_hidden_grad = false;
  static constexpr bool carries_dh = true;
  static constexpr bool two_phase = true;

  template <typename T>
  RNNFAST_ALWAYS_INLINE static void forward(const FwdRow<T>& r, int64_t H) {  // phase 1: r, z, r h
    T* wr = r.ws;
    T* wz = r.ws + H;
    T* whn = r.ws + 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T rr = sigmoid((r.xg[j] + r.bias[j]) + r.hg[j]);
      wr[j] = rr;
      wz[j] = sigmoid((r.xg[H + j] + r.bias[H + j]) + r.hg[H + j]);
      whn[j] = rr * r.h[j];
    }
  }
  // phase 2; r.hg is the second GEMM's row W_hn (r h)
  template <typename T>
  RNNFAST_ALWAYS_INLINE static void forward2(const FwdRow<T>& r, int64_t H) {
    const T* wz = r.ws + H;
    T* wn = r.ws + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T n = fast_tanh((r.xg[2 * H + j] + r.bias[2 * H + j]) + r.hg[j]);
      wn[j] = n;
      r.h_out[j] = n + wz[j] * (r.h[j] - n);
    }
  }
  template <typename T>
  RNNFAST_ALWAYS_INLINE static void backward(const BwdRow<T>& r, int64_t H) {  // phase 1: dz, dn
    const T* wz = r.ws + H;
    const T* wn = r.ws + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T z = wz[j], n = wn[j];
      const T dh = r.dh[j] + r.dy[j];
      r.dg[H + j] = dh * (r.h[j] - n) * z * (T(1) - z);
      r.dg[2 * H + j] = dh * (T(1) - z) * (T(1) - n * n);
      r.dh[j] = dh * z;
    }
  }
  // phase 2; drh = dn W_hn (the second GEMM's row)
  template <typename T>
  RNNFAST_ALWAYS_INLINE static void backward2(const BwdRow<T>& r, const T* drh, int64_t H) {
    const T* wr = r.ws;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T rr = wr[j];
      r.dg[j] = drh[j] * r.h[j] * rr * (T(1) - rr);
      r.dh[j] += drh[j] * rr;
    }
  }
};

}  // namespace cpu
}  // namespace rnnfast
