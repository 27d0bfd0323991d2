// The CUDA backend of the one host loop (csrc/core/loop.h; docs/core.md), templated over a device
// context Ctx (Guard: constructible from a c10::Device; stream(): the current cudaStream_t) so that
// recurrent.cu runs it on the GPU and tests/cuda_emulation.cpp runs the very same code on the CPU.
// ATen and csrc/kernels/kernels.h only: no c10/cuda header, nothing of csrc/cpu.
//
// - GEMMs through ATen (cuBLAS) on the current stream: XG = X W_ihᵀ + b_ih for all T*B rows, per
//   step HG = h_{t-1} W_hhᵀ (mm_out into one buffer), dh (+)= dGh[t] W_hh; b_hh is added by the
//   step kernels.
// - Step launches: csrc/kernels (one thread per (b, j)), their errors checked at each launch.
// - Weight gradients: core::weight_grads_separate (no concatenated operand on the device).
// - Variable-length batches: lengths (int64 (B,)) on the CPU or already on the input's device. CPU
//   lengths are staged through pinned memory and copied with one asynchronous H2D copy per op
//   call (from pageable memory that copy would make the host wait); device lengths are used as
//   they are, their range checked by an asynchronous device-side assert. The step kernels freeze a
//   row once t >= lengths[b].
// No op here synchronizes with the host. CUDA-graph capture: without lengths, or with device
// lengths, every op is capturable (kernel launches, cuBLAS GEMMs, ATen ops on the current stream);
// with CPU lengths it is not (the pinned staging buffer would be baked into the graph): capture
// with the lengths on the device.
#pragma once
#include <ATen/ATen.h>

#include "../core/loop.h"
#include "../kernels/kernels.h"

namespace rnnfast {
namespace cuda {
using at::Tensor;
using core::CellIo;
using core::PrevState;
using core::Step;

inline void check_launch(cudaError_t err, const char* op, const char* what) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA ", what, " kernel failed to launch: ", cudaGetErrorName(err), " (",
              cudaGetErrorString(err), ")");
}

// float32 data of a tensor that may be undefined (then nullptr): the kernels' optional operands.
inline const float* const_floats(const Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }
inline float* mutable_floats(Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// The checked lengths (undefined when not given) on the input's device for the step kernels. CPU
// lengths for a device input go through pinned memory: the copy is then truly asynchronous (a
// non_blocking copy from pageable memory waits for the device) and the caching host allocator keeps
// the staging block until the copy has run. Lengths already on the input's device (and the CPU
// emulation's CPU lengths for a CPU input) are used as they are.
inline Tensor device_lengths(const Tensor& lengths, const Tensor& input) {
  if (!lengths.defined() || lengths.device() == input.device()) return lengths;
  return lengths.pin_memory().to(input.device(), at::kLong, /*non_blocking=*/true);
}

// (T, B) bool on the lengths' device: position (t, b) is padding (t >= lengths[b]).
inline Tensor padding_mask(const Tensor& len, int64_t T) {
  return at::arange(T, len.options()).unsqueeze(1).ge(len.unsqueeze(0));
}

// core::check_lengths for CPU lengths (it reads their range on the host: free for a CPU tensor).
// Lengths on the device are checked without a host sync: dtype, rank, size and device here, the
// range [0, T] by an asynchronous device-side assert (a bad value fails the next synchronizing
// call with this message; the kernels themselves only compare t with lengths[b], so no value can
// make them access memory out of bounds).
inline Tensor check_lengths(const char* op, const c10::optional<Tensor>& lengths, int64_t T, int64_t B,
                            const Tensor& input) {
  if (!lengths.has_value() || !lengths->defined() || lengths->device().is_cpu()) {
    return core::check_lengths(op, lengths, T, B);
  }
  const Tensor& l = *lengths;
  TORCH_CHECK(l.device() == input.device(), op, ": lengths must be on the CPU or on the input's device (",
              input.device(), "), got one on ", l.device());
  TORCH_CHECK_TYPE(l.scalar_type() == at::kLong, op, ": lengths must have dtype int64, got ", l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, op, ": lengths must have shape (B,) = (", B, ",), got ", l.sizes());
  const Tensor c = l.contiguous();
  if (B > 0) {
    at::_assert_async(at::logical_and(c.ge(0), c.le(T)).all(), "rnnfast: lengths on the device must lie in [0, T]");
  }
  return c;
}

struct CudaContext {
  cudaStream_t stream;
};

// The rows of a walk: always all B (the step kernels cover them in one launch).
struct Rows {};

// The forward Backend (loop.h) of Cell; float32 only.
template <class Cell>
class CudaForward {
 public:
  using Rows = cuda::Rows;
  static constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;

  CudaForward(const CudaContext& ctx, const core::ForwardProblem& p, const Tensor& lengths, Tensor& output, Tensor& ws,
              const CellIo& io)
      : ctx_(ctx), p_(p), output_(output), ws_(ws), len_(lengths) {
    const int64_t T = p.T, B = p.B, H = p.H;
    const auto opts = p.options();
    // Input projection of all steps at once, b_ih folded in; b_hh is added by the step kernels.
    xg_ = at::empty({T * B, G * H}, opts);
    if (p.b_ih.defined()) {
      at::addmm_out(xg_, p.b_ih, p.input.view({T * B, p.I}), p.w_ih.t());
    } else {
      at::mm_out(xg_, p.input.view({T * B, p.I}), p.w_ih.t());
    }
    // Per-step GEMM outputs: allocated once, rewritten every step.
    hg_ = at::empty({B, G_rec * H}, opts);
    w_rec0_t_ = p.w_hh.narrow(0, 0, G_rec * H).t();
    if constexpr (Cell::traits.phases == 2) {
      hg1_ = at::empty({B, (G - G_rec) * H}, opts);
      w_rec1_t_ = p.w_hh.narrow(0, G_rec * H, (G - G_rec) * H).t();
    }
    h_out_ = io.h_out;
    h_prev_ = io.h_prev;
    const int64_t ws_ld = ws.dim() == 3 ? ws.size(2) : 0;
    ws_p_ = ws_ld ? ws.data_ptr<float>() : nullptr;
    prev_ = core::prev_state<Cell>(p, output.data_ptr<float>(), ws_p_, ws_ld, ws_ld ? ws.size(0) : p.T);
  }

  template <class F>
  void walk(bool, const F& f) {
    f(Rows{});
  }

  void recurrent_gemm(const Rows&, const Step& st) {
    at::mm_out(hg_, st.s ? output_.select(0, st.tp) : p_.hx, w_rec0_t_);
  }

  // The candidate's recurrent GEMM on the workspace slot phase 0 wrote (r⊙h, row stride WS).
  void mid_gemm(const Rows&, const Step& st) {
    at::mm_out(hg1_, ws_.select(0, prev_.ws_row(st.t)).narrow(1, Cell::traits.gemm_slot * p_.H, p_.H), w_rec1_t_);
  }

  template <int P>
  void forward_step(const Rows&, const Step& st) {
    const int64_t B = p_.B, H = p_.H, t = st.t;
    kernels::ForwardStepArgs a;
    a.batch = B;
    a.hidden = H;
    a.xg = const_floats(xg_) + t * B * G * H;
    a.hg = P == 0 ? const_floats(hg_) : const_floats(hg1_);
    a.hg_ld = P == 0 ? G_rec * H : (G - G_rec) * H;
    a.hg_first_gate = P == 0 ? 0 : int(G_rec);
    a.b_hh = const_floats(p_.b_hh);
    a.h_prev = h_prev_.defined() ? const_floats(h_prev_) : prev_.h(st.s);
    a.c_prev = prev_.c(st.s);  // cx, or the state slot of the previous step's workspace (nullptr: no cell state)
    a.c_prev_ld = prev_.c_ld(st.s);
    a.h_out = h_out_.data_ptr<float>() + t * h_out_.stride(0);
    a.h_out_ld = h_out_.stride(1);
    a.saved = ws_p_ ? ws_p_ + prev_.ws_row(t) * B * prev_.ws_ld : nullptr;
    a.saved_ld = prev_.ws_ld;
    a.lengths = len_.defined() ? len_.const_data_ptr<int64_t>() : nullptr;
    a.t = t;
    check_launch(kernels::recurrent_forward_step(Cell::kind, P, a, ctx_.stream), p_.op,
                 P == 0 ? "forward step" : "forward step (phase 2)");
  }

 private:
  CudaContext ctx_;
  const core::ForwardProblem& p_;
  Tensor output_, ws_, len_, xg_, hg_, hg1_, w_rec0_t_, w_rec1_t_, h_out_, h_prev_;
  float* ws_p_ = nullptr;
  PrevState<float> prev_{};
};

// The backward Backend (loop.h) of Cell; float32 only.
template <class Cell>
class CudaBackward {
 public:
  using Rows = cuda::Rows;
  static constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;

  CudaBackward(const CudaContext& ctx, const core::BackwardProblem& p, const Tensor& lengths, Tensor& dG, Tensor& dGh,
               Tensor& dh, Tensor& dc, const CellIo& io)
      : ctx_(ctx), p_(p), len_(lengths), dG_(dG), dGh_(dGh), dh_(dh), dc_(dc), grad_h_(io.grad_h), dh_cell_(io.dh) {
    if constexpr (Cell::traits.phases == 2) {
      drh_ = at::empty({p.B, p.H}, p.options());
      w_rec1_ = p.w_hh.narrow(0, G_rec * p.H, (G - G_rec) * p.H);
    }
    w_rec0_ = p.w_hh.narrow(0, 0, G_rec * p.H);
    const int64_t ws_ld = p.ws.dim() == 3 ? p.ws.size(2) : 0;
    prev_ = core::prev_state<Cell>(p, const_floats(p.output), ws_ld ? const_floats(p.ws) : nullptr, ws_ld, p.T);
    TORCH_INTERNAL_ASSERT(grad_h_.stride(2) == 1 && grad_h_.stride(1) == p.H, p.op,
                          ": the step kernels read grad rows (B, H) densely");
  }

  template <class F>
  void walk(bool, const F& f) {
    f(Rows{});
  }

  template <int P>
  void backward_step(const Rows&, const Step& st) {
    const int64_t B = p_.B, H = p_.H, t = st.t;
    kernels::BackwardStepArgs a;
    a.batch = B;
    a.hidden = H;
    a.grad_h = const_floats(grad_h_) + t * grad_h_.stride(0);
    a.dh = mutable_floats(dh_cell_);
    a.dc = mutable_floats(dc_);
    a.saved = prev_.ws_ld ? prev_.ws + t * B * prev_.ws_ld : nullptr;
    a.saved_ld = prev_.ws_ld;
    a.h_new = prev_.out + t * B * p_.P;
    a.h_prev = prev_.h(st.s);
    a.c_prev = prev_.c(st.s);
    a.c_prev_ld = prev_.c_ld(st.s);
    a.drh = P == 1 ? const_floats(drh_) : nullptr;
    a.dgx = mutable_floats(dG_) + t * B * G * H;
    a.dgh = Cell::traits.split_grad ? mutable_floats(dGh_) + t * B * G * H : nullptr;
    a.lengths = len_.defined() ? len_.const_data_ptr<int64_t>() : nullptr;
    a.t = t;
    check_launch(kernels::recurrent_backward_step(Cell::kind, P, a, ctx_.stream), p_.op,
                 P == 0 ? "backward step" : "backward step (phase 2)");
  }

  // d(r⊙h) = dn_pre·W_hn, which phase 1 turns into dr_pre and the r⊙ part of dh_{t-1}.
  void mid_gemm_backward(const Rows&, const Step& st) {
    at::mm_out(drh_, dG_.select(0, st.t).narrow(1, G_rec * p_.H, (G - G_rec) * p_.H), w_rec1_);
  }

  // dh_{t-1} (+)= dGh[t] W_hh[phase 0 gates]; with lengths every step kernel leaves dh ready for the
  // accumulating GEMM (the direct part, 0 for cells without one; a frozen row's carried grad).
  void recurrent_gemm_backward(const Rows&, const Step& st) {
    const Tensor dgh_t = G_rec == G ? dGh_.select(0, st.t) : dGh_.select(0, st.t).narrow(1, 0, G_rec * p_.H);
    if (Cell::traits.direct_dh || len_.defined()) {
      dh_.addmm_(dgh_t, w_rec0_);
    } else {
      at::mm_out(dh_, dgh_t, w_rec0_);
    }
  }

 private:
  CudaContext ctx_;
  const core::BackwardProblem& p_;
  Tensor len_, dG_, dGh_, dh_, dc_, grad_h_, dh_cell_, drh_, w_rec0_, w_rec1_;
  PrevState<float> prev_{};
};

// The CUDA backend family (loop.h's and recurrent_ops.h's Family concept).
template <class Ctx>
struct CudaFamily {
  using Context = CudaContext;
  using Guard = typename Ctx::Guard;
  template <class Cell, typename T_>
  using Forward = CudaForward<Cell>;
  template <class Cell, typename T_>
  using Backward = CudaBackward<Cell>;

  static Context context() { return Context{Ctx::stream()}; }

  // CUDA-only requirements on top of the shared checks (which accept float64 for the CPU path).
  static void check_dtype(const char* op, const Tensor& input) {
    TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat, op, ": supports float32 on CUDA, got input of dtype ",
                     input.scalar_type(), " (float16/bfloat16/float64 CUDA kernels are not implemented; use ",
                     "float32, or run float64 on CPU)");
  }
  static Tensor check_lengths(const char* op, const c10::optional<Tensor>& lengths, int64_t T, int64_t B,
                              const Tensor& input) {
    return cuda::check_lengths(op, lengths, T, B, input);
  }

  template <class F>
  static void dispatch(at::ScalarType dtype, const F& f) {
    TORCH_INTERNAL_ASSERT(dtype == at::kFloat, "rnnfast: the CUDA backend runs float32 only");
    f(float(0));
  }
  static Tensor step_lengths(const Tensor& lengths, const Tensor& input) { return device_lengths(lengths, input); }
  static Tensor grad_output_rows(const Tensor& g) { return g.contiguous(); }

  // dL/dx (rows, I) = dG (rows, G*H) W_ih, a fresh tensor
  static Tensor input_grad(const Tensor& dG, const Tensor& w_ih) { return at::mm(dG, w_ih); }
  // core/weight_grads.h product_into: ATen's GEMM (cuBLAS) takes every product here
  static bool gemm_into(Tensor&, const Tensor&, const Tensor&, bool) { return false; }

  template <class Cell>
  static core::WeightGrads weight_grads(const core::WeightGradInputs<CudaFamily>& in) {
    return core::weight_grads_separate<Cell>(in);
  }
  // Padding policy (core/weight_grads.h), built on the device from the device lengths: no sync.
  static Tensor without_padding(const Tensor& input, const Tensor& len) {
    if (!len.defined()) return input;
    return input.masked_fill(padding_mask(len, input.size(0)).unsqueeze(-1), 0);
  }
  static void zero_rows(const Tensor& rows, const Tensor& len, int64_t T, int64_t B) {
    rows.view({T, B, rows.size(1)}).masked_fill_(padding_mask(len, T).unsqueeze(-1), 0);
  }
};

}  // namespace cuda
}  // namespace rnnfast
