// The one host loop of the recurrent ops, for every cell and every backend (CPU, CUDA, the CPU
// emulation of the CUDA path): what happens in which order over one layer-direction and the whole
// sequence. What each piece does on a machine is the Backend's (csrc/cpu/backend.h,
// csrc/cuda/backend.h); what a cell computes is the Cell's (cells.h). docs/core.md explains the
// Backend concept at length; in short a backend provides, over a block of batch rows `Rows`:
//
//   walk(splittable, f)       call f(rows) once for all B rows, or (CPU batch split) once per row
//                             block from several threads; f walks all T steps over its rows
//   recurrent_gemm(rows, st)  HG = h_{t-1} W_hh[gates of phase 0]ᵀ
//   forward_step<P>(rows, st) phase P of the cell's pointwise forward over the rows
//   mid_gemm(rows, st)        two-phase cells: HG1 = workspace[t][gemm_slot] W_hh[the other gates]ᵀ
//   backward_step<P>(rows, st), mid_gemm_backward(rows, st) (drh = dG[t][phase 1 gates] W_hh[..])
//   recurrent_gemm_backward(rows, st)  dh_{t-1} (+)= dGh[t] W_hh[gates of phase 0]
//
// The LSTM projection (torch.nn.LSTM(proj_size=P): h_t = m_t W_hrᵀ, m_t = o tanh c_t) is a Hook:
// the cell writes m_t into the workspace's m slot, and the hook turns it into h_t after each
// forward step, and dL/dh_t into dL/dm_t before each backward step (LstmProjection below: ATen on
// the backend's device and stream, so backend-neutral). NoProjection is the empty hook.
#pragma once
#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include "args.h"
#include "cells.h"
#include "grad_accumulation.h"
#include "scratch.h"
#include "sequence.h"
#include "tensors.h"
#include "weight_grads.h"

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

namespace rnnfast {
namespace core {

// Walking step s of a layer-direction: its time index t, and tp, the previous step's (-1 at s = 0).
struct Step {
  int64_t s, t, tp;
};
inline Step step_at(int64_t s, int64_t T, bool reverse) {
  return Step{s, time_of(s, T, reverse), s ? time_of(s - 1, T, reverse) : -1};
}

// A backend whose input projection runs in chunks of steps (the CPU's, backend.h) provides
//   chunk_steps()        how many steps each projection covers
//   project(s0, s1)      X W_ihᵀ of the time rows walking steps [s0, s1) visit, before they walk
// Others (CUDA) project the whole sequence up front: one chunk of T steps, nothing to call.
template <class Backend, class = void>
struct ChunkedProjection : std::false_type {};
template <class Backend>
struct ChunkedProjection<Backend, std::void_t<decltype(std::declval<Backend&>().project(int64_t(), int64_t()))>>
    : std::true_type {};

// The forward loop: per chunk of steps the input projection (backends that chunk it), then per step
// the recurrent GEMM, the pointwise phase(s), the hook.
template <class Cell, class Backend, class Hook>
void forward_loop(Backend& be, Hook& hook, int64_t T, bool reverse) {
  constexpr bool splittable = Cell::traits.phases == 1 && !Hook::enabled;
  int64_t chunk = T;
  if constexpr (ChunkedProjection<Backend>::value) chunk = std::max<int64_t>(1, be.chunk_steps());
  for (int64_t s0 = 0; s0 < T; s0 += chunk) {
    const int64_t s1 = std::min(T, s0 + chunk);
    if constexpr (ChunkedProjection<Backend>::value) be.project(s0, s1);
    be.walk(splittable, [&](const typename Backend::Rows& rows) {
      for (int64_t s = s0; s < s1; ++s) {
        const Step st = step_at(s, T, reverse);
        be.recurrent_gemm(rows, st);
        be.template forward_step<0>(rows, st);
        if constexpr (Cell::traits.phases == 2) {
          be.mid_gemm(rows, st);
          be.template forward_step<1>(rows, st);
        }
        hook.after_forward_step(st);
      }
    });
  }
}

// The backward loop, steps in reverse walking order: the hook, the pointwise phase(s), then the
// recurrent GEMM that carries dL/dh to the step before. to_hx = false: nobody needs dL/dh0 (the
// initial state needs no gradient), so the last walked step's recurrent GEMM, whose only product
// it is, is skipped (at T = 1 one of the backward's four or five GEMMs).
template <class Cell, class Backend, class Hook>
void backward_loop(Backend& be, Hook& hook, int64_t T, bool reverse, bool to_hx = true) {
  constexpr bool splittable = Cell::traits.phases == 1 && !Hook::enabled;
  be.walk(splittable, [&](const typename Backend::Rows& rows) {
    for (int64_t s = T - 1; s >= 0; --s) {
      const Step st = step_at(s, T, reverse);
      hook.before_backward_step(st);
      be.template backward_step<0>(rows, st);
      if constexpr (Cell::traits.phases == 2) {
        be.mid_gemm_backward(rows, st);
        be.template backward_step<1>(rows, st);
      }
      hook.after_backward_step(st);
      if (s > 0 || to_hx) be.recurrent_gemm_backward(rows, st);
    }
  });
}

// ---- what an op call hands the loop -------------------------------------------------------------

// The forward problem after the argument checks (args.h), tensors contiguous. cx: cells with a
// cell state; w_hr: the LSTM projection; b_ih, b_hh, lengths: undefined when not given (lengths as
// check_lengths returns them: CPU, or for the CUDA ops possibly already on the device).
struct ForwardProblem {
  const char* op = "rnnfast";  // the op's name for messages: "rnnfast.lstm"
  at::Tensor input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh, lengths;
  int64_t T, B, I, H, P;  // P: the width of h (H without a projection)
  bool reverse;
  // false (an inference call, nothing will be differentiated): the forward keeps only the workspace
  // rows the next step reads (ws_period 2) and returns an empty workspace
  bool keep_workspace = true;
  bool projected() const { return w_hr.defined(); }
  at::TensorOptions options() const { return input.options(); }
};

// Where the steps of a call find h_{t-1} and c_{t-1} (sequence.h): output (T, B, P) and the
// workspace (T, B, ws_ld) of this call, hx and cx of the problem.
template <class Cell, typename T_>
PrevState<T_> prev_state(const ForwardProblem& p, const T_* output, const T_* ws, int64_t ws_ld,
                         int64_t ws_period) {
  return PrevState<T_>{output, p.hx.const_data_ptr<T_>(), ws,
                       Cell::traits.has_cell_state() ? p.cx.const_data_ptr<T_>() : nullptr,
                       p.T, p.B, p.H, p.P, ws_ld, Cell::traits.state_slot, p.reverse, std::max<int64_t>(1, ws_period)};
}

// Time rows of the workspace a forward writes: all T (a backward will read them), or for an
// inference call only the two the recurrence alternates between (the next step reads the cell
// state, or the gemm_slot, of the step before; nothing else is read again). The LSTM projection
// keeps all T (its hook reads m through a (T, B, H) view).
inline int64_t workspace_period(const ForwardProblem& p) {
  return p.keep_workspace || p.projected() ? p.T : std::min<int64_t>(p.T, 2);
}

// The workspace width in units of H: the cell's slots, plus the projection's m slot.
template <class Cell>
int64_t workspace_slots(bool projected) {
  return projected ? kLstmProjSlots : Cell::traits.slots;
}

// Tensors a forward call produces; the loop's backend writes output and ws in place.
struct ForwardResult {
  at::Tensor output, hy, cy, ws;
};

// What the step of a cell reads and writes as "h": the layer's output (no projection), or with a
// projection the workspace's m slot as h_t and zeros as h_{t-1} (a frozen row's m is 0), grad
// rows of zeros as grad_output, and dL/dm_t (the hook's) as the carried dL/dh.
struct CellIo {
  at::Tensor h_out;       // (T, B, H), any row stride: where the cell writes h_t
  at::Tensor h_prev;      // (B, H) what the cell sees as h_{t-1}, or undefined: the layer's h_{t-1}
  at::Tensor grad_h;      // (T, B, H), any strides with unit column stride: the cell's grad_output
  at::Tensor dh;          // (B, H) dense: the carried dL/dh the cell reads (and writes, direct_dh)
};

// ---- the projection hook ------------------------------------------------------------------------

struct NoProjection {
  static constexpr bool enabled = false;
  void after_forward_step(const Step&) {}
  void before_backward_step(const Step&) {}
  void after_backward_step(const Step&) {}
};

// h_t = m_t W_hrᵀ after each forward step; a frozen row (lengths) keeps h_{t-1} (the cell wrote
// m = 0 there). Backward: dH[t] = dL/dh_t + grad_output[t] (0 for a frozen row, kept for dW_hr),
// dL/dm_t = dH[t] W_hr for the cell; after the cell, a frozen row's dL/dh_{t-1} is dL/dh_t +
// grad_output[t] (h_t is a copy of h_{t-1}) and an active row's 0, ready for the accumulating
// GEMM dh += dG[t] W_hh (without lengths that GEMM overwrites dh).
struct LstmProjection {
  static constexpr bool enabled = true;
  at::Tensor w_hr, w_hr_t;          // (P, H), its transpose
  at::Tensor output, hx, m;         // (T, B, P), (B, P), (T, B, H) the workspace's m slot
  at::Tensor frozen;                // (T, B, 1) bool, or undefined without lengths
  // backward only
  at::Tensor grad_output, dh, dm, dH;  // (T, B, P), (B, P), (B, H), (T, B, P)
  at::Tensor active_f, frozen_f;       // (T, B, 1) 0/1 in the data's dtype (with lengths)

  // The m slot of a (T, B, kLstmProjSlots*H) workspace.
  static at::Tensor m_slot(const at::Tensor& ws, int64_t H) { return ws.narrow(2, kLstmProjSlotM * H, H); }

  // (T, B, 1) bool on the lengths' device: row b is frozen at time t (t >= lengths[b]).
  static at::Tensor frozen_mask(const at::Tensor& len, int64_t T) {
    return at::arange(T, len.options()).view({T, 1, 1}).ge(len.view({1, -1, 1}));
  }

  LstmProjection(const ForwardProblem& p, const at::Tensor& lengths, const at::Tensor& output_, const at::Tensor& ws)
      : w_hr(p.w_hr), w_hr_t(p.w_hr.t()), output(output_), hx(p.hx), m(m_slot(ws, p.H)) {
    if (lengths.defined()) frozen = frozen_mask(lengths, p.T);
  }

  // The cell's view of h in forward: h_t into m, zeros as h_{t-1}.
  CellIo forward_io(const ForwardProblem& p) const {
    return CellIo{m, at::zeros({p.B, p.H}, p.options()), at::Tensor(), at::Tensor()};
  }

  void after_forward_step(const Step& st) {
    at::Tensor out_t = output.select(0, st.t);
    at::mm_out(out_t, m.select(0, st.t), w_hr_t);
    if (frozen.defined()) {
      const at::Tensor h_before = st.s ? output.select(0, st.tp) : hx;
      at::where_out(out_t, frozen.select(0, st.t), h_before, out_t);
    }
  }

  // Backward: dh is the carried (B, P) dL/dh; returns the cell's view (dm as its dh, no grad_output).
  CellIo prepare_backward(const ForwardProblem& p, const at::Tensor& grad_output_, const at::Tensor& dh_) {
    grad_output = grad_output_;
    dh = dh_;
    dm = at::empty({p.B, p.H}, p.options());
    dH = at::empty({p.T, p.B, p.P}, p.options());
    if (frozen.defined()) {
      frozen_f = frozen.to(p.options().dtype());
      active_f = frozen.logical_not().to(p.options().dtype());
    }
    const at::Tensor zero_grad = at::zeros({1, p.B, p.H}, p.options()).expand({p.T, p.B, p.H});
    return CellIo{at::Tensor(), at::Tensor(), zero_grad, dm};
  }

  void before_backward_step(const Step& st) {
    at::Tensor dH_t = dH.select(0, st.t);
    at::add_out(dH_t, dh, grad_output.select(0, st.t));
    if (frozen.defined()) dH_t.mul_(active_f.select(0, st.t));
    at::mm_out(dm, dH_t, w_hr);
  }

  void after_backward_step(const Step& st) {
    if (frozen.defined()) dh.add_(grad_output.select(0, st.t)).mul_(frozen_f.select(0, st.t));
  }

  // dW_hr = dHᵀ M over all steps.
  at::Tensor weight_grad() const {
    const int64_t rows = dH.size(0) * dH.size(1);
    return at::mm(dH.view({rows, dH.size(2)}).t(), m.reshape({rows, m.size(2)}));
  }
};


// ---- the op drivers: allocation, the loop, the results ------------------------------------------
// A backend Family (csrc/cpu/backend.h CpuFamily, csrc/cuda/backend.h CudaFamily<Ctx>) provides:
//   Context                                   what its backends need from the op (CUDA: the stream)
//   Forward<Cell, T_>(ctx, p, len, output, ws, io)                     the forward Backend
//   Backward<Cell, T_>(ctx, p, len, grad_output, dG, dGh, dh, dc, io)  the backward Backend
//   dispatch(dtype, f)                        f(T_{}) for each dtype it supports
//   step_lengths(lengths, input)              the lengths where the steps read them (CUDA: device)
//   grad_output_rows(grad_output)             grad_output as the steps read it (unit column stride)
//   weight_grads<Cell>(WeightGradInputs<Family>)  its weight-gradient strategy
//   input_grad(dG (rows, G*H), w_ih)          dL/dx (rows, I), a fresh tensor
//   without_padding, zero_rows                the Padding policy of weight_grads.h

template <class Cell, class Family>
ForwardResult recurrent_forward(const typename Family::Context& ctx, const ForwardProblem& p) {
  const int64_t T = p.T, B = p.B, H = p.H;
  const int64_t slots = workspace_slots<Cell>(p.projected());
  const auto opts = p.options();
  ForwardResult r;
  r.output = new_tensor({T, B, p.P}, opts);
  const int64_t period = workspace_period(p);
  // Without keep_workspace the rows are scratch of this call (scratch.h scratch_empty; replaced below).
  r.ws = !slots               ? new_tensor({0}, opts)
         : p.keep_workspace ? new_tensor({period, B, slots * H}, opts)
                            : scratch_empty({period, B, slots * H}, opts);
  const at::Tensor len = Family::step_lengths(p.lengths, p.input);

  Family::dispatch(p.input.scalar_type(), [&](auto zero) {
    using T_ = decltype(zero);
    if constexpr (std::is_same_v<Cell, LstmCell>) {
      if (p.projected()) {
        LstmProjection hook(p, len, r.output, r.ws);
        typename Family::template Forward<Cell, T_> be(ctx, p, len, r.output, r.ws, hook.forward_io(p));
        forward_loop<Cell>(be, hook, T, p.reverse);
        return;
      }
    }
    NoProjection hook;
    typename Family::template Forward<Cell, T_> be(ctx, p, len, r.output, r.ws,
                                                   CellIo{r.output, at::Tensor(), at::Tensor(), at::Tensor()});
    forward_loop<Cell>(be, hook, T, p.reverse);
  });

  // Fresh tensors (never views of output or workspace: autograd outputs must not alias).
  const int64_t t_last = time_of(T - 1, T, p.reverse);
  r.hy = state_copy(r.output, t_last, 0, p.P);
  if (Cell::traits.has_cell_state()) r.cy = state_copy(r.ws, t_last % period, Cell::traits.state_slot * H, H);
  if (!p.keep_workspace && slots) r.ws = new_tensor({0}, opts);  // the rows kept were scratch: nothing to return
  return r;
}

// The backward problem: the forward's, plus the incoming grads and what forward returned.
struct BackwardProblem : ForwardProblem {
  at::Tensor grad_output, grad_hy, grad_cy, output, ws;
  bool input_grad;
  bool hx_grad = true;  // false: grad_hx is returned as zeros, its GEMM skipped (backward_loop's to_hx)
  // Defined: add dW_ih / dW_hh into these and return that gradient undefined (grad_accumulation.h).
  AccumulationTargets into;
};

struct BackwardResult {
  at::Tensor grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_w_hr, grad_b_ih, grad_b_hh;
};

// The node's DeferredRows if this call can take its request (one step of a one-phase cell, no
// projection or lengths, room for B rows, buffers of this problem's width and dtype), allocating
// them on first use; else null (the call computes its weight gradients as usual).
template <class Cell>
DeferredRows* deferral_of(const BackwardProblem& p) {
  DeferredRows* d = p.into.defer;
  if (!d || Cell::traits.phases != 1 || p.projected() || p.lengths.defined() || p.T != 1 || !p.input.is_cpu() ||
      d->row + p.B > d->capacity) {
    return nullptr;
  }
  const int64_t width = Cell::traits.gates * p.H;
  const auto fits = [&](const at::Tensor& buf, int64_t cols) {
    return buf.dim() == 2 && buf.size(0) == d->capacity && buf.size(1) == cols && buf.is_contiguous() &&
           buf.scalar_type() == p.input.scalar_type() && buf.device() == p.input.device();
  };
  const auto ensure = [&](at::Tensor& buf, int64_t cols) {
    if (!fits(buf, cols)) buf = ScratchPool::instance().take(d->capacity * cols, p.options()).view({d->capacity, cols});
  };
  if (d->row == 0) {  // first rows: (re)allocate what does not fit
    ensure(d->dg, width);
    if (Cell::traits.split_grad) ensure(d->dgh, width);
    ensure(d->x, p.I);
    ensure(d->h, p.P);
  }
  // (dgh is defined exactly when split_grad rows are held: rows of another kind of cell never mix)
  if (!fits(d->dg, width) || (Cell::traits.split_grad ? !fits(d->dgh, width) : d->dgh.defined()) ||
      !fits(d->x, p.I) || !fits(d->h, p.P)) {
    return nullptr;
  }
  return d;
}

// Row `row` of a contiguous 2-D CPU buffer, as bytes.
inline char* row_bytes(const at::Tensor& buf, int64_t row) {
  return static_cast<char*>(buf.data_ptr()) + row * buf.size(1) * buf.element_size();
}

// A ragged variable-length batch on the CPU: at most kLiveRowsMaxNum / kLiveRowsMaxDen of its (t, b)
// rows live (t < lengths[b]), as with one long sequence among short ones, or lengths spread over [1, T]. A
// frozen row's gate gradients are zero, so the weight gradients are sums over the live rows only
// and dL/dx is zero elsewhere: their GEMMs then run on the live rows gathered (the T*B-row indices
// returned here, ascending; gather_rows), not on the whole padded batch. Undefined otherwise (no
// lengths, more rows live, lengths or data off the CPU).
// The fraction: with the gathers as row-run copies (a PackedSequence in its sorted order is one run
// per time step) the GEMMs they save repay them well past half the rows live, the bound with
// index_select / index_copy_ gathers. PackedSequence forward+backward, alternating processes (6
// rounds, median time ratio), 1/2 -> 3/4 with the run copies: uniform lengths (~50% live) LSTM
// H256 B32 T35 0.74x, GRU H256 B32 T100 0.82x, RNN-tanh H256 B8 T100 0.81x, GRU H64 B32 T100 2
// threads 0.88x, LSTM H64 B8 T35 0.91x; RNN-tanh I512 H256 B100 T3 2 layers (68% live) 0.90x; ragged
// (already gathered) 1.01x. 3/4 -> 15/16 at 81-90% live: 0.96-1.01x (LSTM H256 B32 T35 0.96x at
// 85%, 0.98x at 90%), so the bound is 7/8.
constexpr int64_t kLiveRowsMaxNum = 7, kLiveRowsMaxDen = 8;
inline at::Tensor live_rows(const at::Tensor& len, int64_t T, int64_t B, const at::Tensor& input) {
  if (!len.defined() || !input.is_cpu() || !len.is_cpu()) return at::Tensor();
  const int64_t* l = len.const_data_ptr<int64_t>();
  int64_t live = 0;
  for (int64_t b = 0; b < B; ++b) live += std::min(l[b], T);
  if (kLiveRowsMaxDen * live > kLiveRowsMaxNum * T * B) return at::Tensor();
  at::Tensor idx = at::empty({live}, at::kLong);
  int64_t* out = idx.data_ptr<int64_t>();
  for (int64_t t = 0, k = 0; t < T; ++t) {
    for (int64_t b = 0; b < B; ++b) {
      if (t < l[b]) out[k++] = t * B + b;
    }
  }
  return idx;
}

// h_{t-1} of the rows idx (T*B-row indices) of a layer, (rows, P): hx's row where the step was the
// walk's first, else the previous step's output (as fill_prev_states for every row). CPU, contiguous.
inline at::Tensor prev_state_rows(const at::Tensor& idx, const at::Tensor& hx_, const at::Tensor& output_, bool reverse) {
  const at::Tensor hx = hx_.contiguous(), output = output_.contiguous();
  const int64_t T = output.size(0), B = output.size(1), P = output.size(2), n = idx.size(0);
  at::Tensor dst = at::empty({n, P}, output.options());
  const size_t bytes = size_t(P) * output.element_size();
  const int64_t* rows = idx.const_data_ptr<int64_t>();
  const char* out = static_cast<const char*>(output.const_data_ptr());
  const char* h0 = static_cast<const char*>(hx.const_data_ptr());
  char* d = static_cast<char*>(dst.data_ptr());
  for (int64_t k = 0; k < n; ++k) {
    const int64_t t = rows[k] / B, b = rows[k] % B, tp = reverse ? t + 1 : t - 1;
    const char* src = (tp < 0 || tp >= T) ? h0 + b * bytes : out + (tp * B + b) * bytes;
    std::memcpy(d + k * bytes, src, bytes);
  }
  return dst;
}

// The weight and bias gradients of `in` by the Family's strategy into r (or into the accumulation
// targets p.into).
template <class Cell, class Family>
BackwardResult finish_weight_grads(const WeightGradInputs<Family>& in, const BackwardProblem& p, BackwardResult r) {
  WeightGrads wg = Family::template weight_grads<Cell>(in);
  // A strategy that wrote a fresh result although asked to accumulate: add it in here, as the
  // autograd engine would have.
  if (p.into.w_ih.defined() && wg.w_ih.defined()) p.into.w_ih.add_(std::exchange(wg.w_ih, at::Tensor()));
  if (p.into.w_hh.defined() && wg.w_hh.defined()) p.into.w_hh.add_(std::exchange(wg.w_hh, at::Tensor()));
  r.grad_w_ih = wg.w_ih;
  r.grad_w_hh = wg.w_hh;
  r.grad_b_ih = wg.b_ih;
  r.grad_b_hh = wg.b_hh;
  return r;
}

template <class Cell, class Family>
BackwardResult recurrent_backward(const typename Family::Context& ctx, const BackwardProblem& p) {
  constexpr int64_t G = Cell::traits.gates;
  const int64_t T = p.T, B = p.B, H = p.H;
  const auto opts = p.options();
  const at::Tensor len = Family::step_lengths(p.lengths, p.input);
  const at::Tensor grad_output = Family::grad_output_rows(p.grad_output);

  // Deferred weight gradients (grad_accumulation.h DeferredRows): this step's pre-activation grads
  // go straight into the node's rows, and the weight and bias gradients are left to the node.
  DeferredRows* defer = deferral_of<Cell>(p);
  // this step's rows of the node's buffers (CPU: from_blob, no view ops)
  const auto rows_of = [&](const at::Tensor& buf) {
    return at::from_blob(row_bytes(buf, defer->row), {T, B, buf.size(1)}, opts);
  };
  // scratch for this call (scratch.h): never returned, every row written before it is read
  at::Tensor dG = defer ? rows_of(defer->dg) : scratch_empty({T, B, G * H}, opts);  // input side
  at::Tensor dGh = !Cell::traits.split_grad ? dG
                   : defer                  ? rows_of(defer->dgh)
                                            : scratch_empty({T, B, G * H}, opts);  // recurrent side
  // dL/dh_t (dL/dc_t) flowing back through the recurrence: fresh dense buffers whatever the
  // incoming grads' strides (a broadcast grad of hy has stride 0; a clone would keep it)
  BackwardResult r;
  r.grad_hx = p.into.grad_hy_owned ? p.grad_hy : dense_copy(p.grad_hy);
  if (Cell::traits.has_cell_state()) r.grad_cx = p.into.grad_cy_owned ? p.grad_cy : dense_copy(p.grad_cy);

  Family::dispatch(p.input.scalar_type(), [&](auto zero) {
    using T_ = decltype(zero);
    if constexpr (std::is_same_v<Cell, LstmCell>) {
      if (p.projected()) {
        LstmProjection hook(p, len, p.output, p.ws);
        const CellIo io = hook.prepare_backward(p, grad_output, r.grad_hx);
        typename Family::template Backward<Cell, T_> be(ctx, p, len, dG, dGh, r.grad_hx, r.grad_cx, io);
        backward_loop<Cell>(be, hook, T, p.reverse, p.hx_grad);
        r.grad_w_hr = hook.weight_grad();
        return;
      }
    }
    NoProjection hook;
    typename Family::template Backward<Cell, T_> be(ctx, p, len, dG, dGh, r.grad_hx, r.grad_cx,
                                                    CellIo{at::Tensor(), at::Tensor(), grad_output, r.grad_hx});
    backward_loop<Cell>(be, hook, T, p.reverse, p.hx_grad);
  });

  if (!p.hx_grad) r.grad_hx.zero_();  // it holds a partial dL/dh0 (the skipped GEMM's operand)
  const at::Tensor dG2 = dG.view({T * B, G * H});
  const at::Tensor live = defer ? at::Tensor() : live_rows(len, T, B, p.input);
  if (live.defined()) {  // a ragged batch: dL/dx and the weight gradients from the live rows only
    const int64_t n = live.size(0), WS = p.ws.dim() == 3 ? p.ws.size(2) : 0;
    // the gathered operands are this call's scratch (scratch.h): never returned
    const at::Tensor dg = gather_rows(dG2, live, scratch_empty({n, G * H}, opts));
    const at::Tensor dgh =
        Cell::traits.split_grad ? gather_rows(dGh.view({T * B, G * H}), live, scratch_empty({n, G * H}, opts)) : dg;
    if (p.input_grad) {
      r.grad_input =
          scatter_rows(Family::input_grad(dg, p.w_ih), live, at::empty({T * B, p.I}, opts)).view({T, B, p.I});
    } else if (!p.into.drops_unrequested) {
      r.grad_input = at::zeros_like(p.input);
    }
    // the live rows as one step of n rows (T = 1, B = n, h_{t-1} = hx), as the deferred flush below
    const at::Tensor hs = prev_state_rows(live, p.hx, p.output, p.reverse);
    const at::Tensor ws = Cell::traits.phases == 2
                              ? gather_rows(p.ws.view({T * B, WS}), live, scratch_empty({n, WS}, opts)).view({1, n, WS})
                              : p.ws;
    const WeightGradInputs<Family> in{dg, dgh,
                                      gather_rows(p.input.view({T * B, p.I}), live, scratch_empty({n, p.I}, opts))
                                          .view({1, n, p.I}),
                                      at::Tensor(), hs, hs.view({1, n, p.P}), ws, false, p.into};
    RECORD_FUNCTION("rnnfast::weight_grad_live_rows", std::vector<c10::IValue>({in.dg}));
    return finish_weight_grads<Cell, Family>(in, p, std::move(r));
  }
  // input_grad=false: the input needs no gradient; zeros instead of the (T*B, G*H) x (G*H, I) GEMM
  // (undefined instead when the autograd node, which drops it, says so: grad_accumulation.h)
  r.grad_input = p.input_grad              ? Family::input_grad(dG2, p.w_ih).view({T, B, p.I})
                 : p.into.drops_unrequested ? at::Tensor()
                                            : at::zeros_like(p.input);
  WeightGradInputs<Family> in{dG2, dGh.view({T * B, G * H}), p.input, len, p.hx, p.output, p.ws, p.reverse, p.into};
  if (defer) {  // this step's rows join the node's; their gradients are computed at the flush
    std::memcpy(row_bytes(defer->x, defer->row), p.input.const_data_ptr(), p.input.nbytes());  // contiguous CPU
    std::memcpy(row_bytes(defer->h, defer->row), p.hx.const_data_ptr(), p.hx.nbytes());
    defer->row += B;
    if (!defer->flush) return r;
    // The flush: every row's weight and bias gradients, as one step of K rows (T = 1, B = K,
    // h_{t-1} = hx), by the Family's strategy (a few rows: raw BLAS calls), into the targets.
    const int64_t K = defer->row;
    const at::Tensor hs = defer->h.narrow(0, 0, K);
    in = WeightGradInputs<Family>{defer->dg.narrow(0, 0, K),
                                  Cell::traits.split_grad ? defer->dgh.narrow(0, 0, K) : defer->dg.narrow(0, 0, K),
                                  defer->x.narrow(0, 0, K).view({1, K, p.I}),
                                  at::Tensor(),
                                  hs,
                                  hs.view({1, K, p.P}),
                                  p.ws,  // read by two-phase cells only, which never defer
                                  false,
                                  p.into};
    defer->flushed = true;
  }
  RECORD_FUNCTION("rnnfast::weight_grad_rows", std::vector<c10::IValue>({in.dg}));  // K: the profiler's shapes
  return finish_weight_grads<Cell, Family>(in, p, std::move(r));
}

}  // namespace core
}  // namespace rnnfast
