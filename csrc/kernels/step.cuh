// One unit's share of a recurrent step on the device: the memory side of the accessors that the
// cells' math (csrc/core/cells.h) reads and writes through, and the dispatch from a runtime
// (cell, phase) to the templates. Included by recurrent.cu (the kernels); free of launch syntax so
// that the same code can also be compiled for the host (tests/cuda_emulation.cpp runs the glue's
// host loop on the CPU with it).
#pragma once
#include <math.h>  // expf, tanhf when compiled for the host (tests/cuda_emulation.cpp)

#include "../core/cells.h"
#include "kernels.h"

#ifndef RNNFAST_HD
#define RNNFAST_HD __host__ __device__
#endif

namespace rnnfast {
namespace kernels {
namespace step {

// The device's activations: accurate expf/tanhf (no fast-math), since the CUDA float32 path is
// checked against float64 at 1e-5.
struct DeviceMath {
  static RNNFAST_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
  static RNNFAST_HD float tanh(float x) { return tanhf(x); }
};

// A cell's traits as scalar constants: device code may read a constexpr scalar, not a member of a
// constexpr struct (CUDA's rule for constexpr variables in device code).
template <class Cell>
struct Traits {
  static constexpr int gates = Cell::traits.gates;
  static constexpr int slots = Cell::traits.slots;
  static constexpr int state_slot = Cell::traits.state_slot;
  static constexpr bool direct_dh = Cell::traits.direct_dh;
};

// The forward accessor for unit (b, j); phase P's hg starts at gate a.hg_first_gate.
template <class Cell>
struct ForwardUnit {
  using value_type = float;
  using Math = DeviceMath;
  const ForwardStepArgs& a;
  int64_t b, j;

  RNNFAST_HD float x(int g) const { return a.xg[b * Traits<Cell>::gates * a.hidden + g * a.hidden + j]; }
  RNNFAST_HD float h(int g) const {
    const float bias = a.b_hh ? a.b_hh[g * a.hidden + j] : 0.0f;
    return a.hg[b * a.hg_ld + (g - a.hg_first_gate) * a.hidden + j] + bias;
  }
  RNNFAST_HD float activated(int g) const { return core::activate<Math>(Cell::act(g), x(g) + h(g)); }
  RNNFAST_HD float h_prev() const { return a.h_prev[b * a.hidden + j]; }
  RNNFAST_HD float c_prev() const { return a.c_prev[b * a.c_prev_ld + j]; }
  RNNFAST_HD float saved(int k) const { return a.saved[b * a.saved_ld + k * a.hidden + j]; }
  RNNFAST_HD void save(int k, float v) const { a.saved[b * a.saved_ld + k * a.hidden + j] = v; }
  RNNFAST_HD void set_h(float v) const { a.h_out[b * a.h_out_ld + j] = v; }
};

// The backward accessor for unit (b, j).
template <class Cell>
struct BackwardUnit {
  using value_type = float;
  using Math = DeviceMath;
  const BackwardStepArgs& a;
  int64_t b, j;

  RNNFAST_HD int64_t at() const { return b * a.hidden + j; }
  RNNFAST_HD float dh() const { return a.grad_h[at()] + a.dh[at()]; }
  RNNFAST_HD float dc() const { return a.dc[at()]; }
  RNNFAST_HD float saved(int k) const { return a.saved[b * a.saved_ld + k * a.hidden + j]; }
  RNNFAST_HD float h_new() const { return a.h_new[at()]; }
  RNNFAST_HD float h_prev() const { return a.h_prev[at()]; }
  RNNFAST_HD float c_prev() const { return a.c_prev[b * a.c_prev_ld + j]; }
  RNNFAST_HD float drh() const { return a.drh[at()]; }
  RNNFAST_HD int64_t gate(int g) const { return b * Traits<Cell>::gates * a.hidden + g * a.hidden + j; }
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
      for (int k = 0; k < Traits<Cell>::slots; ++k) s.save(k, k == Traits<Cell>::state_slot ? s.c_prev() : 0.0f);
      s.set_h(s.h_prev());
    }
    return;
  }
  Cell::forward(s, core::Phase<kPhase>{});
}

template <class Cell, int kPhase>
RNNFAST_HD void backward_unit(const BackwardStepArgs& a, int64_t u) {
  BackwardUnit<Cell> s{a, u / a.hidden, u % a.hidden};
  if (a.lengths != nullptr && a.t >= a.lengths[s.b]) {
    if (kPhase == 0) {
      for (int g = 0; g < Traits<Cell>::gates; ++g) {
        a.dgx[s.gate(g)] = 0.0f;
        if (a.dgh) a.dgh[s.gate(g)] = 0.0f;
      }
      s.add_dh_prev(a.grad_h[s.at()]);  // h_t is a copy of h_{t-1}; dc passes through untouched
    }
    return;
  }
  Cell::backward(s, core::Phase<kPhase>{});
  if (a.lengths != nullptr && kPhase == 0 && !Traits<Cell>::direct_dh) s.set_dh_prev(0.0f);
}

// Calls f.template run<Cell, kPhase>() for a runtime (cell, phase); cudaErrorInvalidValue for a
// phase the cell does not have.
template <class F>
struct ForPhase {
  const F& f;
  int phase;
  template <class Cell>
  cudaError_t run() const {
    if constexpr (Cell::traits.phases == 2) {
      if (phase == 1) return f.template run<Cell, 1>();
    }
    return f.template run<Cell, 0>();
  }
};

template <class F>
cudaError_t dispatch(CellKind cell, int phase, const F& f) {
  if (phase < 0 || phase >= core::traits_of(cell).phases) return cudaErrorInvalidValue;
  return core::for_cell(cell, ForPhase<F>{f, phase});
}

}  // namespace step
}  // namespace kernels
}  // namespace rnnfast
