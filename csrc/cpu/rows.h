// The CPU side of the cells (csrc/core/cells.h): accessors over one batch row's buffers, and the
// row passes that run a cell's per-unit math over the H units of a row. Each row pass is one
// `omp simd` loop over j with the cell force-inlined, so the compiler vectorizes the whole cell
// (the row loops in backend.h are compiled for AVX-512, AVX2 and the baseline ISA).
//
// Row buffers (one batch row b of one step t):
//   xg   input projection row, W_ih x (no bias: the GEMM without a bias operand is ~2x faster)
//   bias the biases folded together by the host, added here (b_ih + b_hh, but for the gate whose
//        b_hh the cell applies inside a product: CellTraits::inner_bias_gate, added to h(g) instead)
//   hg   recurrent GEMM row (phase 1 of a two-phase cell: the mid-step GEMM's row)
//   ws   workspace row (traits.slots * H)
//   dg   gradient w.r.t. the input-side pre-activations (rows of dG, used for dW_ih, db_ih, dx)
//   dgh  gradient w.r.t. the recurrent-side pre-activations; the same buffer as dg unless split_grad
//   dh   on entry dL/dh_t from later steps (grad_output[t] is added by the accessor); on exit the
//        direct part of dL/dh_{t-1} (direct_dh cells), else untouched (the host overwrites it).
#pragma once
#include <cstdint>

#include "../core/cells.h"
#include "fastmath.h"

namespace rnnfast {
namespace cpu {

// The CPU's activations: vectorizable polynomial exp/tanh (fastmath.h).
struct FastMath {
  template <typename T>
  RNNFAST_ALWAYS_INLINE static T sigmoid(T x) {
    return T(1) / (T(1) + fast_exp(-x));
  }
  template <typename T>
  RNNFAST_ALWAYS_INLINE static T tanh(T x) {
    return fast_tanh(x);
  }
};

template <typename T>
struct FwdRow {
  const T* xg;
  const T* bias;   // (G*H) folded biases (zeros when the layer has none)
  const T* hg;
  const T* b_hn;   // the inner_bias_gate's rows of b_hh (zeros when b_hh is None); else unused
  const T* h;      // h_{t-1}
  const T* c;      // c_{t-1} (cells with a cell state)
  T* h_out;        // h_t (LSTM with a projection: the workspace's m slot)
  T* ws;
};

template <typename T>
struct BwdRow {
  const T* dy;     // grad_output[t]
  const T* h;      // h_{t-1}
  const T* h_out;  // h_t
  const T* c;      // c_{t-1}
  const T* ws;
  const T* drh;    // two-phase cells, phase 1: the mid-step GEMM's row
  T* dg;
  T* dgh;
  T* dh;
  T* dc;           // in dL/dc_t from later steps, out dL/dc_{t-1}
};

// The gates of phase P: [first, end) (one-phase cells: all of them).
template <class Cell, int P>
constexpr int kPhaseFirstGate = P == 0 ? 0 : Cell::traits.phase0_gates;
template <class Cell, int P>
constexpr int kPhaseEndGate = P == 0 ? Cell::traits.phase0_gates : Cell::traits.gates;

// core/cells.h's forward accessor for unit j of a row, in phase P. Keep = false (an inference
// call of a one-phase cell, which returns no workspace): only the slot the next step reads (the
// cell state) is stored; the gate values the backward would read are not written at all.
template <class Cell, int P, typename T, bool Keep = true>
struct ForwardUnit {
  using value_type = T;
  using Math = FastMath;
  static constexpr int kFirstGate = kPhaseFirstGate<Cell, P>;  // first gate in hg
  const FwdRow<T>& r;
  const int64_t H, j;

  RNNFAST_ALWAYS_INLINE T x(int g) const { return r.xg[g * H + j] + r.bias[g * H + j]; }
  RNNFAST_ALWAYS_INLINE T h(int g) const {
    const T v = r.hg[(g - kFirstGate) * H + j];
    return g == Cell::traits.inner_bias_gate ? v + r.b_hn[j] : v;
  }
  RNNFAST_ALWAYS_INLINE T activated(int g) const { return core::activate<Math>(Cell::act(g), x(g) + h(g)); }
  RNNFAST_ALWAYS_INLINE T h_prev() const { return r.h[j]; }
  RNNFAST_ALWAYS_INLINE T c_prev() const { return r.c[j]; }
  RNNFAST_ALWAYS_INLINE T saved(int k) const { return r.ws[k * H + j]; }
  RNNFAST_ALWAYS_INLINE void save(int k, T v) const {
    static_assert(Keep || Cell::traits.phases == 1, "a two-phase cell reads its saved slots within the step");
    if (Keep || k == Cell::traits.state_slot) r.ws[k * H + j] = v;
  }
  RNNFAST_ALWAYS_INLINE void set_h(T v) const { r.h_out[j] = v; }
};

// core/cells.h's backward accessor for unit j of a row.
template <class Cell, typename T>
struct BackwardUnit {
  using value_type = T;
  using Math = FastMath;
  const BwdRow<T>& r;
  const int64_t H, j;

  RNNFAST_ALWAYS_INLINE T dh() const { return r.dh[j] + r.dy[j]; }
  RNNFAST_ALWAYS_INLINE T dc() const { return r.dc[j]; }
  RNNFAST_ALWAYS_INLINE T saved(int k) const { return r.ws[k * H + j]; }
  RNNFAST_ALWAYS_INLINE T h_new() const { return r.h_out[j]; }
  RNNFAST_ALWAYS_INLINE T h_prev() const { return r.h[j]; }
  RNNFAST_ALWAYS_INLINE T c_prev() const { return r.c[j]; }
  RNNFAST_ALWAYS_INLINE T drh() const { return r.drh[j]; }
  RNNFAST_ALWAYS_INLINE void set_dg(int g, T v) const {
    r.dg[g * H + j] = v;
    if constexpr (Cell::traits.split_grad) r.dgh[g * H + j] = v;
  }
  RNNFAST_ALWAYS_INLINE void set_dg(int g, T vx, T vh) const {
    r.dg[g * H + j] = vx;
    r.dgh[g * H + j] = vh;
  }
  RNNFAST_ALWAYS_INLINE void set_dh_prev(T v) const { r.dh[j] = v; }
  RNNFAST_ALWAYS_INLINE void add_dh_prev(T v) const { r.dh[j] += v; }
  RNNFAST_ALWAYS_INLINE void set_dc_prev(T v) const { r.dc[j] = v; }
};

// How many gates of phase P have an activation of their own (Cell::act).
template <class Cell, int P>
constexpr int activated_gates() {
  int n = 0;
  for (int g = kPhaseFirstGate<Cell, P>; g < kPhaseEndGate<Cell, P>; ++g) n += Cell::act(g) != core::Act::none;
  return n;
}

// Units per block of the activation pre-pass (its buffer: the phase's gates x kActBlock values).
constexpr int64_t kActBlock = 256;

// The forward accessor of the combine pass: activated(g) reads what the pre-pass computed.
template <class Cell, int P, typename T, bool Keep>
struct PreActivatedUnit : ForwardUnit<Cell, P, T, Keep> {
  const T* act;  // this unit's activations, gate g at act[(g - first gate of P) * kActBlock]
  RNNFAST_ALWAYS_INLINE T activated(int g) const { return act[(g - kPhaseFirstGate<Cell, P>)*kActBlock]; }
};

// The pre-pass over units [j0, j0 + n) of a row for gates G.. of phase P: one loop per gate with
// an activation of its own, act[(g - first) * kActBlock + i] = activation(x(g) + h(g)). The gate is
// a template argument, so Cell::act(g) and the accessor's gate branches fold.
template <class Cell, int P, bool Keep, int G, typename T>
RNNFAST_ALWAYS_INLINE void activate_gates(const FwdRow<T>& r, int64_t H, int64_t j0, int64_t n, T* act) {
  if constexpr (G < kPhaseEndGate<Cell, P>) {
    if constexpr (Cell::act(G) != core::Act::none) {
      T* out = act + (G - kPhaseFirstGate<Cell, P>)*kActBlock;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = ForwardUnit<Cell, P, T, Keep>{r, H, j0 + i}.activated(G);
    }
    activate_gates<Cell, P, Keep, G + 1>(r, H, j0, n, act);
  }
}

// The blocking of both forward row passes (forward_row below; rows_avx512.cpp's row_pass): units
// [0, H) in blocks of kActBlock, with a stack buffer for a block's activations of phase P's
// activated gates; block(j0, n, act) runs one block (its activation loops, then the cell). The
// block is a force-inlined lambda, so that it is compiled for the ISA of the clone it lands in.
template <class Cell, int P, typename T, class Block>
RNNFAST_ALWAYS_INLINE void for_activation_blocks(int64_t H, const Block& block) {
  alignas(64) T act[(kPhaseEndGate<Cell, P> - kPhaseFirstGate<Cell, P>)*kActBlock];
  for (int64_t j0 = 0; j0 < H; j0 += kActBlock) block(j0, H - j0 < kActBlock ? H - j0 : kActBlock, act);
}

// Phase P of Cell's forward over the H units of one row (Keep: see ForwardUnit).
// With two or more gates that have an activation of their own (LSTM: all four; GRU: r and z), the
// row goes in blocks of kActBlock units: first one loop per such gate, activation(x(g) + h(g))
// into a stack buffer, then the cell over the block, reading those through activated(g). Each loop
// then holds one activation's constants and temporaries; all of a cell's activations in one loop
// body are more than the 32 vector registers of AVX-512, so gcc re-broadcast constants every
// iteration. Measured on the LSTM's forward row (g++ -O3, AVX-512, 1 thread): 3.5-3.9 -> 2.7-3.1
// ns per unit at H = 64, 256 and 1024, results bit for bit the same (the same functions on the same
// values, only evaluated in another order).
template <class Cell, int P, bool Keep = true, typename T>
RNNFAST_ALWAYS_INLINE void forward_row(const FwdRow<T>& r, int64_t H) {
  if constexpr (activated_gates<Cell, P>() >= 2) {
    for_activation_blocks<Cell, P, T>(H, [&](int64_t j0, int64_t n, T* act) RNNFAST_ALWAYS_INLINE_LAMBDA {
      activate_gates<Cell, P, Keep, kPhaseFirstGate<Cell, P>>(r, H, j0, n, act);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        PreActivatedUnit<Cell, P, T, Keep> s{{r, H, j0 + i}, act + i};
        Cell::forward(s, core::Phase<P>{});
      }
    });
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      ForwardUnit<Cell, P, T, Keep> s{r, H, j};
      Cell::forward(s, core::Phase<P>{});
    }
  }
}

// Phase P of Cell's backward over the H units of one row.
template <class Cell, int P, typename T>
RNNFAST_ALWAYS_INLINE void backward_row(const BwdRow<T>& r, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    BackwardUnit<Cell, T> s{r, H, j};
    Cell::backward(s, core::Phase<P>{});
  }
}

}  // namespace cpu
}  // namespace rnnfast
