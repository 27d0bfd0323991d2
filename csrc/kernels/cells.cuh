// Each recurrent cell's pointwise math, forward and backward, for one hidden unit j of one batch
// row b at one time step. Written once; recurrent.cu instantiates one kernel shape per cell.
//
// The math reads and writes through an accessor `s` that the kernel provides, so a cell never
// indexes memory itself (layouts: kernels.h). Forward accessor:
//   s.x(g)      input projection of gate g: (W_ih x_t + b_ih)[g]
//   s.h(g)      recurrent pre-activation of gate g: (W_hh h_{t-1} + b_hh)[g]; in GRU reset_before's
//               phase 1, gate 2 is W_hn (r⊙h_{t-1}) + b_hn
//   s.h_prev(), s.c_prev()            the state before the step
//   s.saved(k), s.save(k, v)          workspace slot k of this step (see CONTRACTS: gru r,z,n,hn;
//                                     lstm i,f,g,o,c), s.set_h(v) writes output[t]
// Backward accessor:
//   s.dh()      dL/dh_t in total (grad_output[t] + what flowed back from step t+1)
//   s.dc()      LSTM: dL/dc_t carried from step t+1 (grad_cy at the last step)
//   s.saved(k), s.h_new(), s.h_prev(), s.c_prev()
//   s.drh()     GRU reset_before phase 1: dL/d(r⊙h_{t-1}) = dn_pre · W_hn (a GEMM between phases)
//   s.set_dg(g, v)        gradient of gate g's pre-activation (input and recurrent side alike)
//   s.set_dg(g, vx, vh)   ... when the two sides differ (GRU reset_after's n gate: vh = vx⊙r)
//   s.set_dh_prev(v), s.add_dh_prev(v)   the direct (non-GEMM) part of dL/dh_{t-1}
//   s.set_dc_prev(v)      LSTM: dL/dc_{t-1}
// The GEMM dG_t·W_hh that adds the rest of dL/dh_{t-1} is the host loop's.
//
// Each cell's constants must agree with kernels.h's cell_layout(); recurrent.cu checks that.
#pragma once
#include <cuda_runtime.h>
#include <math.h>  // expf, tanhf when compiled for the host (tests/cuda_emulation.cpp)

namespace rnnfast {
namespace cells {

template <int P>
struct Phase {};  // phase tag: a cell with a GEMM between its pointwise parts has Phase<0> and Phase<1>

// Accurate expf/tanhf (no fast-math): the CUDA float32 path is checked against float64 at 1e-5.
__host__ __device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// h' = act(W_ih x + b_ih + W_hh h + b_hh); tanh or relu.
template <bool kRelu>
struct RnnCell {
  static constexpr int kGates = 1, kSaved = 0, kPhases = 1;

  template <class S>
  __host__ __device__ static void forward(S& s, Phase<0>) {
    const float pre = s.x(0) + s.h(0);
    s.set_h(kRelu ? (pre < 0.0f ? 0.0f : pre) : tanhf(pre));  // relu keeps NaN, as torch.relu
  }

  // No workspace: the derivative is a function of the output h' alone.
  template <class S>
  __host__ __device__ static void backward(S& s, Phase<0>) {
    const float h = s.h_new(), dh = s.dh();
    s.set_dg(0, kRelu ? (h > 0.0f ? dh : 0.0f) : dh * (1.0f - h * h));
  }
};
using RnnTanhCell = RnnCell<false>;
using RnnReluCell = RnnCell<true>;

// torch.nn.GRU / cuDNN form: r, z = σ(...); hn = W_hn h + b_hn; n = tanh(W_in x + b_in + r⊙hn);
// h' = (1−z)⊙n + z⊙h = n + z⊙(h − n).
struct GruResetAfterCell {
  static constexpr int kGates = 3, kSaved = 4, kPhases = 1;

  template <class S>
  __host__ __device__ static void forward(S& s, Phase<0>) {
    const float r = sigmoid(s.x(0) + s.h(0));
    const float z = sigmoid(s.x(1) + s.h(1));
    const float hn = s.h(2);
    const float n = tanhf(s.x(2) + r * hn);
    const float hp = s.h_prev();
    s.save(0, r); s.save(1, z); s.save(2, n); s.save(3, hn);
    s.set_h(n + z * (hp - n));
  }

  template <class S>
  __host__ __device__ static void backward(S& s, Phase<0>) {
    const float r = s.saved(0), z = s.saved(1), n = s.saved(2), hn = s.saved(3);
    const float hp = s.h_prev(), dh = s.dh();
    const float dn_pre = dh * (1.0f - z) * (1.0f - n * n);
    const float dz_pre = dh * (hp - n) * z * (1.0f - z);
    const float dr_pre = dn_pre * hn * r * (1.0f - r);
    s.set_dg(0, dr_pre);
    s.set_dg(1, dz_pre);
    s.set_dg(2, dn_pre, dn_pre * r);  // x side sees n_pre directly, h side through r⊙hn
    s.set_dh_prev(dh * z);
  }
};

// The textbook form (Cho et al. 2014, d2l): n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn). The
// candidate's recurrent GEMM needs r first, so a step has two phases around that GEMM; slot 3
// of the workspace holds r⊙h_{t-1}, the GEMM's input.
struct GruResetBeforeCell {
  static constexpr int kGates = 3, kSaved = 4, kPhases = 2;

  template <class S>
  __host__ __device__ static void forward(S& s, Phase<0>) {  // gates; the host then runs W_hn·(r⊙h)
    const float r = sigmoid(s.x(0) + s.h(0));
    const float z = sigmoid(s.x(1) + s.h(1));
    s.save(0, r); s.save(1, z); s.save(3, r * s.h_prev());
  }

  template <class S>
  __host__ __device__ static void forward(S& s, Phase<1>) {  // candidate and state update
    const float z = s.saved(1), hp = s.h_prev();
    const float n = tanhf(s.x(2) + s.h(2));
    s.save(2, n);
    s.set_h(n + z * (hp - n));
  }

  template <class S>
  __host__ __device__ static void backward(S& s, Phase<0>) {  // z, n; the host then runs dn_pre·W_hn
    const float z = s.saved(1), n = s.saved(2);
    const float hp = s.h_prev(), dh = s.dh();
    s.set_dg(1, dh * (hp - n) * z * (1.0f - z));
    s.set_dg(2, dh * (1.0f - z) * (1.0f - n * n));
    s.set_dh_prev(dh * z);
  }

  template <class S>
  __host__ __device__ static void backward(S& s, Phase<1>) {  // r, from d(r⊙h) = dn_pre·W_hn
    const float r = s.saved(0), hp = s.h_prev(), drh = s.drh();
    s.set_dg(0, drh * hp * r * (1.0f - r));
    s.add_dh_prev(drh * r);
  }
};

// i, f, o = σ(...), g = tanh(...); c' = f⊙c + i⊙g; h' = o⊙tanh(c').
struct LstmCell {
  static constexpr int kGates = 4, kSaved = 5, kPhases = 1;

  template <class S>
  __host__ __device__ static void forward(S& s, Phase<0>) {
    const float i = sigmoid(s.x(0) + s.h(0));
    const float f = sigmoid(s.x(1) + s.h(1));
    const float g = tanhf(s.x(2) + s.h(2));
    const float o = sigmoid(s.x(3) + s.h(3));
    const float c = f * s.c_prev() + i * g;
    s.save(0, i); s.save(1, f); s.save(2, g); s.save(3, o); s.save(4, c);
    s.set_h(o * tanhf(c));
  }

  template <class S>
  __host__ __device__ static void backward(S& s, Phase<0>) {
    const float i = s.saved(0), f = s.saved(1), g = s.saved(2), o = s.saved(3);
    const float tc = tanhf(s.saved(4));  // recomputed: cheaper than saving tanh(c) too
    const float dh = s.dh();
    const float dc = s.dc() + dh * o * (1.0f - tc * tc);
    s.set_dg(0, dc * g * i * (1.0f - i));
    s.set_dg(1, dc * s.c_prev() * f * (1.0f - f));
    s.set_dg(2, dc * i * (1.0f - g * g));
    s.set_dg(3, dh * tc * o * (1.0f - o));
    s.set_dc_prev(dc * f);
  }
};

}  // namespace cells
}  // namespace rnnfast
