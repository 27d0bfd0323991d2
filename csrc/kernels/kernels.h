// rnnfast CUDA kernels: the launcher declarations, and the only header the glue (csrc/cuda) includes.
// Framework-free: raw pointers, sizes and a cudaStream_t; every launcher returns the launch's
// cudaError_t (cudaGetLastError) so the glue can check it. No torch header may be included here.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "../core/cells.h"
#include "../core/norm_kind.h"

namespace rnnfast {
namespace kernels {

// ---- recurrent pointwise steps (recurrent.cu; math in csrc/core/cells.h) ---------------------------
// One launch = one time step of one layer-direction: the pointwise work between the recurrent
// GEMMs, one thread per (batch row b, hidden unit j) handling all gates of that unit. The GEMMs
// themselves (input projection for all steps, h_{t-1}·W_hhᵀ per step, dG_t·W_hh per step, the
// weight gradients after the loop) are the caller's (the glue runs them through ATen/cuBLAS).
// Every matrix is row-major float32; `*_ld` is a row stride in elements. Convention for biases:
// b_ih is folded into the input projection by the caller (xg = x·W_ihᵀ + b_ih); b_hh is added here.

// The cells (their math, slots and traits) are csrc/core/cells.h's, framework-free like this header.
using core::CellKind;
using core::CellTraits;

// Forward step at time t. Phase 0 reads gates [0, phase0_gates) from hg; phase 1 (two-phase cells,
// GRU reset_before) reads the mid-step GEMM's product (W_hn·(r⊙h_{t-1})) from hg with
// hg_first_gate = phase0_gates.
struct ForwardStepArgs {
  int64_t batch = 0, hidden = 0;
  const float* xg = nullptr;      // (B, G*H), ld G*H: x_t·W_ihᵀ + b_ih
  const float* hg = nullptr;      // (B, hg_ld): recurrent product of gates from hg_first_gate on, no bias
  int64_t hg_ld = 0;
  int hg_first_gate = 0;
  const float* b_hh = nullptr;    // (G*H) or nullptr
  const float* h_prev = nullptr;  // (B, H), ld H: hx or output[t_prev]
  const float* c_prev = nullptr;  // cells with a cell state: (B, c_prev_ld): cx (ld H) or workspace[t_prev]'s state slot (ld slots*H)
  int64_t c_prev_ld = 0;
  float* h_out = nullptr;         // (B, h_out_ld): output[t] (LSTM with a projection: the workspace's m slot)
  int64_t h_out_ld = 0;
  float* saved = nullptr;         // (B, saved_ld): workspace[t], the cell's slots first (nullptr: no slots)
  int64_t saved_ld = 0;           // slots*H, or more when the workspace holds more (the projection's m)
  // Variable-length batch (csrc/ops.cpp): device int64 (B) or nullptr. Row b is frozen at time t when
  // t >= lengths[b]: phase 0 writes h_out = h_prev (LSTM: c slot = c_prev) and zeroes the other
  // workspace slots; later phases skip it.
  const int64_t* lengths = nullptr;
  int64_t t = 0;
};

// Backward step at time t (the loop walks steps in the reverse of the forward order).
struct BackwardStepArgs {
  int64_t batch = 0, hidden = 0;
  const float* grad_h = nullptr;  // (B, H): grad_output[t]
  float* dh = nullptr;            // (B, H) in: carried dL/dh_t (without grad_output[t]);
                                  //        out: direct part of dL/dh_{t-1} (direct_dh cells), else untouched
  float* dc = nullptr;            // LSTM (B, H) in: carried dL/dc_t; out: dL/dc_{t-1} = f⊙dc
  const float* saved = nullptr;   // (B, saved_ld): workspace[t]
  int64_t saved_ld = 0;
  const float* h_new = nullptr;   // (B, H): output[t]
  const float* h_prev = nullptr;  // (B, H): hx or output[t_prev]
  const float* c_prev = nullptr;  // LSTM, as in ForwardStepArgs
  int64_t c_prev_ld = 0;
  const float* drh = nullptr;     // GRU reset_before phase 1: (B, H) = dn_pre·W_hn
  float* dgx = nullptr;           // (B, G*H): pre-activation grads, input side (dx, dW_ih, db_ih)
  float* dgh = nullptr;           // split_grad cells: (B, G*H) recurrent side (dW_hh, db_hh, dh GEMM); else nullptr
  // Variable-length batch, as in ForwardStepArgs. A frozen row gets zero gate grads and dh += grad_h
  // (dc untouched); with lengths every cell leaves dh ready for an accumulating GEMM (cells without
  // direct_dh write 0 there), so the caller then always adds dGh·W_hh into dh.
  const int64_t* lengths = nullptr;
  int64_t t = 0;
};

// Launch one pointwise phase of a step on `stream`. Returns cudaErrorInvalidValue for a phase the
// cell does not have, cudaSuccess without launching for an empty batch or hidden size, otherwise
// the launch's cudaGetLastError().
cudaError_t recurrent_forward_step(CellKind cell, int phase, const ForwardStepArgs& args, cudaStream_t stream);
cudaError_t recurrent_backward_step(CellKind cell, int phase, const BackwardStepArgs& args, cudaStream_t stream);

// ---- multi-tensor gradient norm and scale (multi_tensor.cu) ---------------------------------------
// A gradient list is an array of tasks in device memory, one per block of the norm and scale
// launches: the range [begin, end) of one tensor's flat (non-overlapping, dense) memory. The glue
// cuts each tensor into tasks of at most kMultiTensorChunk elements; `tensor` is the tensor's index
// in the list (tasks of a tensor are adjacent).
enum class ElemType : int32_t { Half = 0, BFloat16 = 1, Float = 2, Double = 3 };
using core::NormKind;  // csrc/core/norm_kind.h, shared with the CPU ops

constexpr int64_t kMultiTensorChunk = 1 << 15;

struct MultiTensorTask {
  void* data;
  int64_t begin;
  int64_t end;
  ElemType dtype;
  int32_t tensor;
};

// The p-norm of the list viewed as one vector, written to out_total (a 0-dim value of out_type).
// Two launches: per-task partials into `partials` (num_tasks doubles), then a one-block finalize.
// Accumulates in float, or in double when double_acc (any float64 in the list). num_tasks may be 0
// (the norm is then 0). p is used by NormKind::P only.
cudaError_t launch_multi_tensor_norm(const MultiTensorTask* tasks, int num_tasks, NormKind kind, double p,
                                     bool double_acc, double* partials, ElemType out_type, void* out_total,
                                     cudaStream_t stream);

// grads *= clamp(max_norm / (total + 1e-6), max=1), computed on the device from `total` (0-dim, of
// total_type) as torch computes it; nothing is written when the coefficient is 1. One launch.
cudaError_t launch_multi_tensor_clip_scale(const MultiTensorTask* tasks, int num_tasks, const void* total,
                                           ElemType total_type, double max_norm, cudaStream_t stream);

}  // namespace kernels
}  // namespace rnnfast
