// Fused per-time-step pointwise kernels of the recurrent layers (DESIGN.md §3), forward and
// backward, one kernel shape templated over the cell (math: cells.cuh; layouts: kernels.h).
//
// One thread per (batch row b, hidden unit j), all gates of that unit: consecutive threads take
// consecutive j, so every gate's row block is read and written coalesced. A thread reads and
// writes only its own (b, j) elements of dh/dc, which is why those carries can be updated in place.
#include "cells.cuh"
#include "kernels.h"

namespace rnnfast {
namespace kernels {
namespace {

using cells::Phase;

constexpr int kThreads = 256;

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

// The forward accessor of cells.cuh for unit (b, j).
template <class Cell>
struct ForwardUnit {
  const ForwardStepArgs& a;
  int64_t b, j;

  __device__ float x(int g) const { return a.xg[b * Cell::kGates * a.hidden + g * a.hidden + j]; }
  __device__ float h(int g) const {
    const float bias = a.b_hh ? a.b_hh[g * a.hidden + j] : 0.0f;
    return a.hg[b * a.hg_ld + (g - a.hg_first_gate) * a.hidden + j] + bias;
  }
  __device__ float h_prev() const { return a.h_prev[b * a.hidden + j]; }
  __device__ float c_prev() const { return a.c_prev[b * a.c_prev_ld + j]; }
  __device__ float saved(int k) const { return a.saved[(b * Cell::kSaved + k) * a.hidden + j]; }
  __device__ void save(int k, float v) const { a.saved[(b * Cell::kSaved + k) * a.hidden + j] = v; }
  __device__ void set_h(float v) const { a.h_out[b * a.hidden + j] = v; }
};

// The backward accessor of cells.cuh for unit (b, j).
template <class Cell>
struct BackwardUnit {
  const BackwardStepArgs& a;
  int64_t b, j;

  __device__ int64_t at() const { return b * a.hidden + j; }
  __device__ float dh() const { return a.grad_h[at()] + a.dh[at()]; }
  __device__ float dc() const { return a.dc[at()]; }
  __device__ float saved(int k) const { return a.saved[(b * Cell::kSaved + k) * a.hidden + j]; }
  __device__ float h_new() const { return a.h_new[at()]; }
  __device__ float h_prev() const { return a.h_prev[at()]; }
  __device__ float c_prev() const { return a.c_prev[b * a.c_prev_ld + j]; }
  __device__ float drh() const { return a.drh[at()]; }
  __device__ int64_t gate(int g) const { return b * Cell::kGates * a.hidden + g * a.hidden + j; }
  __device__ void set_dg(int g, float v) const {
    a.dgx[gate(g)] = v;
    if (a.dgh) a.dgh[gate(g)] = v;
  }
  __device__ void set_dg(int g, float vx, float vh) const {
    a.dgx[gate(g)] = vx;
    a.dgh[gate(g)] = vh;
  }
  __device__ void set_dh_prev(float v) const { a.dh[at()] = v; }
  __device__ void add_dh_prev(float v) const { a.dh[at()] += v; }
  __device__ void set_dc_prev(float v) const { a.dc[at()] = v; }
};

// Grid-stride over the B*H units; the launchers size the grid to cover them in one pass.
template <class Cell, int kPhase>
__global__ void __launch_bounds__(kThreads) forward_step_kernel(const ForwardStepArgs a) {
  const int64_t units = a.batch * a.hidden;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * blockDim.x) {
    ForwardUnit<Cell> s{a, u / a.hidden, u % a.hidden};
    Cell::forward(s, Phase<kPhase>{});
  }
}

template <class Cell, int kPhase>
__global__ void __launch_bounds__(kThreads) backward_step_kernel(const BackwardStepArgs a) {
  const int64_t units = a.batch * a.hidden;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * blockDim.x) {
    BackwardUnit<Cell> s{a, u / a.hidden, u % a.hidden};
    Cell::backward(s, Phase<kPhase>{});
  }
}

unsigned grid_for(int64_t units) {
  const int64_t blocks = (units + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);  // grid-stride covers the rest
}

template <class Cell, int kPhase>
cudaError_t launch_forward(const ForwardStepArgs& a, cudaStream_t stream) {
  forward_step_kernel<Cell, kPhase><<<grid_for(a.batch * a.hidden), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class Cell, int kPhase>
cudaError_t launch_backward(const BackwardStepArgs& a, cudaStream_t stream) {
  backward_step_kernel<Cell, kPhase><<<grid_for(a.batch * a.hidden), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t recurrent_forward_step(CellKind cell, int phase, const ForwardStepArgs& args, cudaStream_t stream) {
  if (phase < 0 || phase >= cell_layout(cell).phases) return cudaErrorInvalidValue;
  if (args.batch <= 0 || args.hidden <= 0) return cudaSuccess;
  switch (cell) {
    case CellKind::kRnnTanh: return launch_forward<cells::RnnTanhCell, 0>(args, stream);
    case CellKind::kRnnRelu: return launch_forward<cells::RnnReluCell, 0>(args, stream);
    case CellKind::kGruResetAfter: return launch_forward<cells::GruResetAfterCell, 0>(args, stream);
    case CellKind::kGruResetBefore:
      return phase == 0 ? launch_forward<cells::GruResetBeforeCell, 0>(args, stream)
                        : launch_forward<cells::GruResetBeforeCell, 1>(args, stream);
    case CellKind::kLstm: return launch_forward<cells::LstmCell, 0>(args, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t recurrent_backward_step(CellKind cell, int phase, const BackwardStepArgs& args, cudaStream_t stream) {
  if (phase < 0 || phase >= cell_layout(cell).phases) return cudaErrorInvalidValue;
  if (args.batch <= 0 || args.hidden <= 0) return cudaSuccess;
  switch (cell) {
    case CellKind::kRnnTanh: return launch_backward<cells::RnnTanhCell, 0>(args, stream);
    case CellKind::kRnnRelu: return launch_backward<cells::RnnReluCell, 0>(args, stream);
    case CellKind::kGruResetAfter: return launch_backward<cells::GruResetAfterCell, 0>(args, stream);
    case CellKind::kGruResetBefore:
      return phase == 0 ? launch_backward<cells::GruResetBeforeCell, 0>(args, stream)
                        : launch_backward<cells::GruResetBeforeCell, 1>(args, stream);
    case CellKind::kLstm: return launch_backward<cells::LstmCell, 0>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kernels
}  // namespace rnnfast
