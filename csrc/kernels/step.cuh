// One unit's share of a recurrent step: the memory side of the accessors that cells.cuh's math
// reads and writes through, and the dispatch from a runtime (cell, phase) to the templates.
// Included by recurrent.cu (the kernels); free of launch syntax so that the same code can also be
// compiled for the host (tests/cuda_emulation.cpp runs the glue's host loop on the CPU with it).
#pragma once
#include "cells.cuh"
#include "kernels.h"

#ifndef RNNFAST_HD
#define RNNFAST_HD __host__ __device__
#endif

namespace rnnfast {
namespace kernels {
namespace step {

// Fail the build if a cell's constants drift from the table the host loop uses.
template <class Cell, CellKind kKind>
constexpr bool layout_matches() {
  return Cell::kGates == cell_layout(kKind).gates && Cell::kSaved == cell_layout(kKind).saved &&
         Cell::kPhases == cell_layout(kKind).phases;
}
static_assert(layout_matches<cells::RnnTanhCell, CellKind::kRnnTanh>(), "rnn_tanh layout");
static_assert(layout_matches<cells::RnnReluCell, CellKind::kRnnRelu>(), "rnn_relu layout");
static_assert(layout_matches<cells::GruResetAfterCell, CellKind::kGruResetAfter>(), "gru layout");
static_assert(layout_matches<cells::GruResetBeforeCell, CellKind::kGruResetBefore>(), "gru layout");
static_assert(layout_matches<cells::LstmCell, CellKind::kLstm>(), "lstm layout");

// The host loop's table entry of each cell class.
template <class Cell> struct LayoutOf;
template <> struct LayoutOf<cells::RnnTanhCell> { static constexpr CellLayout value = cell_layout(CellKind::kRnnTanh); };
template <> struct LayoutOf<cells::RnnReluCell> { static constexpr CellLayout value = cell_layout(CellKind::kRnnRelu); };
template <> struct LayoutOf<cells::GruResetAfterCell> {
  static constexpr CellLayout value = cell_layout(CellKind::kGruResetAfter);
};
template <> struct LayoutOf<cells::GruResetBeforeCell> {
  static constexpr CellLayout value = cell_layout(CellKind::kGruResetBefore);
};
template <> struct LayoutOf<cells::LstmCell> { static constexpr CellLayout value = cell_layout(CellKind::kLstm); };

// The forward accessor of cells.cuh for unit (b, j).
template <class Cell>
struct ForwardUnit {
  const ForwardStepArgs& a;
  int64_t b, j;

  RNNFAST_HD float x(int g) const { return a.xg[b * Cell::kGates * a.hidden + g * a.hidden + j]; }
  RNNFAST_HD float h(int g) const {
    const float bias = a.b_hh ? a.b_hh[g * a.hidden + j] : 0.0f;
    return a.hg[b * a.hg_ld + (g - a.hg_first_gate) * a.hidden + j] + bias;
  }
  RNNFAST_HD float h_prev() const { return a.h_prev[b * a.hidden + j]; }
  RNNFAST_HD float c_prev() const { return a.c_prev[b * a.c_prev_ld + j]; }
  RNNFAST_HD float saved(int k) const { return a.saved[(b * Cell::kSaved + k) * a.hidden + j]; }
  RNNFAST_HD void save(int k, float v) const { a.saved[(b * Cell::kSaved + k) * a.hidden + j] = v; }
  RNNFAST_HD void set_h(float v) const { a.h_out[b * a.hidden + j] = v; }
};

// The backward accessor of cells.cuh for unit (b, j).
template <class Cell>
struct BackwardUnit {
  const BackwardStepArgs& a;
  int64_t b, j;

  RNNFAST_HD int64_t at() const { return b * a.hidden + j; }
  RNNFAST_HD float dh() const { return a.grad_h[at()] + a.dh[at()]; }
  RNNFAST_HD float dc() const { return a.dc[at()]; }
  RNNFAST_HD float saved(int k) const { return a.saved[(b * Cell::kSaved + k) * a.hidden + j]; }
  RNNFAST_HD float h_new() const { return a.h_new[at()]; }
  RNNFAST_HD float h_prev() const { return a.h_prev[at()]; }
  RNNFAST_HD float c_prev() const { return a.c_prev[b * a.c_prev_ld + j]; }
  RNNFAST_HD float drh() const { return a.drh[at()]; }
  RNNFAST_HD int64_t gate(int g) const { return b * Cell::kGates * a.hidden + g * a.hidden + j; }
  RNNFAST_HD void set_dg(int g, float v) const {
    a.dgx[gate(g)] = v;
    if (a.dgh) a.dgh[gate(g)] = v;
  }
  RNNFAST_HD void set_dg(int g, float vx, float vh) const {
    a.dgx[gate(g)] = vx;
    a.dgh[gate(g)] = vh;
  }
  RNNFAST_HD void set_dh_prev(float v) const { a.dh[at()] = v; }
  RNNFAST_HD void add_dh_prev(float v) const { a.dh[at()] += v; }
  RNNFAST_HD void set_dc_prev(float v) const { a.dc[at()] = v; }
};

// Unit u = b*H + j of a step: consecutive u are consecutive hidden units of one batch row.
// A frozen row of a variable-length batch (see ForwardStepArgs::lengths) carries its state.
template <class Cell, int kPhase>
RNNFAST_HD void forward_unit(const ForwardStepArgs& a, int64_t u) {
  ForwardUnit<Cell> s{a, u / a.hidden, u % a.hidden};
  if (a.lengths != nullptr && a.t >= a.lengths[s.b]) {
    if (kPhase == 0) {
      constexpr bool kCellState = LayoutOf<Cell>::value.has_cell_state;  // c in slot 4
      for (int k = 0; k < Cell::kSaved; ++k) s.save(k, (kCellState && k == 4) ? s.c_prev() : 0.0f);
      s.set_h(s.h_prev());
    }
    return;
  }
  Cell::forward(s, cells::Phase<kPhase>{});
}

template <class Cell, int kPhase>
RNNFAST_HD void backward_unit(const BackwardStepArgs& a, int64_t u) {
  BackwardUnit<Cell> s{a, u / a.hidden, u % a.hidden};
  if (a.lengths != nullptr && a.t >= a.lengths[s.b]) {
    if (kPhase == 0) {
      for (int g = 0; g < Cell::kGates; ++g) {
        a.dgx[s.gate(g)] = 0.0f;
        if (a.dgh) a.dgh[s.gate(g)] = 0.0f;
      }
      s.add_dh_prev(a.grad_h[s.at()]);  // h_t is a copy of h_{t-1}; dc passes through untouched
    }
    return;
  }
  Cell::backward(s, cells::Phase<kPhase>{});
  if (a.lengths != nullptr && kPhase == 0 && !LayoutOf<Cell>::value.direct_dh) s.set_dh_prev(0.0f);
}

// Calls f.template run<Cell, kPhase>() for a runtime (cell, phase); cudaErrorInvalidValue for a
// phase the cell does not have.
template <class F>
cudaError_t dispatch(CellKind cell, int phase, const F& f) {
  if (phase < 0 || phase >= cell_layout(cell).phases) return cudaErrorInvalidValue;
  switch (cell) {
    case CellKind::kRnnTanh: return f.template run<cells::RnnTanhCell, 0>();
    case CellKind::kRnnRelu: return f.template run<cells::RnnReluCell, 0>();
    case CellKind::kGruResetAfter: return f.template run<cells::GruResetAfterCell, 0>();
    case CellKind::kGruResetBefore:
      return phase == 0 ? f.template run<cells::GruResetBeforeCell, 0>()
                        : f.template run<cells::GruResetBeforeCell, 1>();
    case CellKind::kLstm: return f.template run<cells::LstmCell, 0>();
  }
  return cudaErrorInvalidValue;
}

}  // namespace step
}  // namespace kernels
}  // namespace rnnfast
