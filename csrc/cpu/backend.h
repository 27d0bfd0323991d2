// The CPU backend of the one host loop (csrc/core/loop.h; docs/core.md): ATen tensors, float32
// and float64.
//
// - Recurrent GEMMs through RecurrentGemm (blas.h: W_hh packed once per call; float64 and builds
//   without MKL fall back to at::mm_out).
// - Step launches: the cell's row passes (rows.h) over the batch rows, compiled for AVX-512, AVX2
//   and the baseline ISA, spread over threads with at::parallel_for once B*G*H is large enough.
// - Batch split: with a packed W_hh small enough for L2, each thread walks the whole sequence over
//   its own block of batch rows (walk() hands the loop one Rows per block): no synchronization per
//   step.
// - The input projection X W_ihᵀ without bias (the biases, folded, are added in the row pass), in
//   chunks of steps for long problems (projection_chunk_steps; loop.h ChunkedProjection).
// - Weight gradients: core/weight_grads.h's strategy per kind of cell; the padding rows of a
//   variable-length batch zeroed from the host-side lengths.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../core/loop.h"
#include "blas.h"
#include "isa.h"
#include "rows.h"
#include "rows_avx512.h"

namespace rnnfast {
namespace cpu {
using namespace ::rnnfast::core;  // cells, traits, the loop, argument checks, time_of

// Rows per parallel chunk: below ~4K elements a chunk is cheaper on the calling thread than the
// wake-up of another one (measured on the 2-core dev box: 4K-16K equal, 64K slower for LSTM).
inline int64_t row_grain(int64_t row_elems) {
  constexpr int64_t kMinChunk = 4096;
  return std::max<int64_t>(1, kMinChunk / std::max<int64_t>(1, row_elems));
}

template <typename F>
inline void for_rows(int64_t B, int64_t row_elems, const F& f) {
  const int64_t grain = row_grain(row_elems);
  if (B <= grain || serial_call()) {
    f(0, B);
  } else {
    at::parallel_for(0, B, grain, f);
  }
}

// The pointwise row loops, compiled for AVX-512, AVX2 and the baseline ISA (x86-64 builds use
// plain SSE2 otherwise); the dynamic loader picks the widest the CPU supports. Cell functions are
// force-inlined into each clone (cells.h), so each clone vectorizes the whole cell.
#if RNNFAST_GCC_X86
#define RNNFAST_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RNNFAST_SIMD_CLONES
#endif

// Variable-length batches (`len`, lengths per row, or nullptr): row b is frozen at time t when
// t >= len[b]. A frozen row carries its state unchanged (h_out = h, c_out = c) and zeroes the rest
// of its workspace row (the weight-grad GEMMs read every row; zeros times zero gradient stays zero).
inline bool frozen(const int64_t* len, int64_t t, int64_t b) { return len != nullptr && t >= len[b]; }

// The end of the live rows of [b0, b1) at time t: one past the last row not frozen (b0 when all
// are). A step's GEMMs run over [b0, live_end) only: the rows after it are frozen, and a frozen row
// reads no GEMM result in forward (freeze_forward) and has a zero dGh row in backward (its product
// would add zeros). Lengths sorted longest first (rnnfast.nn passes a PackedSequence in its sorted
// order) make [b0, live_end) exactly the live rows, so a step costs what its live rows do (as
// torch.nn's packed steps), not the whole padded batch.
inline int64_t live_end(const int64_t* len, int64_t t, int64_t b0, int64_t b1) {
  if (len == nullptr) return b1;
  while (b1 > b0 && t >= len[b1 - 1]) --b1;
  return b1;
}

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
// handled in phase 0 (state carried) and skipped after. Keep = false: an inference call of a
// one-phase cell stores only the workspace slot the next step reads (rows.h ForwardUnit).
template <class Cell, int P, bool Keep, class MakeRow>
RNNFAST_SIMD_CLONES void forward_rows(const MakeRow& row, int64_t b0, int64_t b1, int64_t H, int64_t t,
                                      const int64_t* len) {
  // float32 rows of a cell with an activated gate take the AVX-512 pass where the CPU has it
  constexpr bool kMayVector = RNNFAST_VECTOR_ROWS && kVectorRowCell<Cell> &&
                              std::is_same_v<std::decay_t<decltype(row(b0))>, FwdRow<float>>;
  const bool vector = kMayVector && vector_rows();
  for (int64_t b = b0; b < b1; ++b) {
    if (frozen(len, t, b)) {
      if constexpr (P == 0) freeze_forward<Cell>(row(b), H);
    } else if (vector) {
      if constexpr (kMayVector) forward_row_avx512(Cell::kind, P, Keep, row(b), H);
    } else {
      forward_row<Cell, P, Keep>(row(b), H);
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

// Batch-split recurrence: batch rows are independent through the whole recurrence (the GEMM and
// the pointwise math of row b only ever touch row b), so each thread can walk all T steps over its
// own block of rows: per step one single-threaded GEMM on its rows (the packed W_hh, or unpacked
// gemm_small when it takes a block's rows: a short sequence that does not pack) and the
// pointwise pass on the same rows, and no synchronization at all until the end of the sequence
// (instead of two fork/joins per step: MKL's inside the GEMM and the pointwise pass's). Each
// thread then streams all of W_hh every step, so this only pays while W_hh stays in a core's L2:
// measured on the 2-core box (Xeon, 2 MB L2), per step M=16 on 1 thread vs M=32 on 2 threads
// (MKL's split over columns): 1 MB W_hh (H=256, 4 gates) 51 vs 54 us; 4 MB (H=512) 314 vs 245 us.
// At least kBatchSplitMinRows rows a block: 4 (it was 8) also splits B = 8..15 over 2 threads, measured
// interleaved in one process, 2 threads, forward: LSTM H64 B8 T35 330 -> 196 us, T200 1907 ->
// 1231 us, GRU H64 B8 T35 280 -> 154 us, RNN H64 B8 T35 89 -> 68 us; LSTM H256 B8 T35 unchanged.
// The bound was 1.5 MB until an off-grid sweep found LSTM H = 300 (1.44 MB of W_hh), B = 9-13,
// T = 50, 2 threads, forward at 0.87-0.90x torch.nn: from about 1 MB the two threads' full streams
// of W_hh no longer share a 2 MB L2 comfortably. With 1 MB (alternating processes, 3 rounds, time
// 1.5 MB / 1 MB): LSTM H = 300 B = 9 1.15x, B = 10 1.16x, B = 13 1.20x, H = 272 B = 10 1.05x,
// forward+backward I = H = 300 B = 10 1.17x; RNN H = 600 B = 10 1.28x; GRU H = 300 B = 10 1.03x;
// H = 256 (exactly 1 MB, still split) and B = 4 or 32 unchanged.
constexpr int64_t kBatchSplitMaxWeightBytes = 1024 * 1024;
constexpr int64_t kBatchSplitMinRows = 4;

// Row blocks a batch split may use for B rows of a W_hh of weight_bytes: one per thread, of at least
// kBatchSplitMinRows rows, while W_hh fits (1: no split).
inline int64_t batch_split_blocks(int64_t B, int64_t weight_bytes) {
  if (weight_bytes > kBatchSplitMaxWeightBytes || at::in_parallel_region() || serial_call()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / kBatchSplitMinRows));
}

// Number of row blocks for the batch-split recurrence (1: run the plain loop). A block's GEMM is
// the packed one, or gemm_small when W_hh is unpacked and gemm_small takes the largest block.
inline int64_t batch_split_chunks(int64_t B, const RecurrentGemm& rec) {
  const int64_t chunks = batch_split_blocks(B, rec.weight_bytes());
  if (chunks > 1 && !rec.packed() && !rec.takes_small((B + chunks - 1) / chunks)) return 1;
  return chunks;
}

// The rows each step GEMM of a call runs at once: a batch-split block's (batch_split_chunks), or all
// B. RecurrentGemm picks its kernel by them (blas.h panels_ok: at 2 threads B = 10-30 runs 5-15
// rows a thread, where the panel GEMM beats MKL's). Predicted before W is packed (weight_bytes: of
// the weight RecurrentGemm is given), so without batch_split_chunks' packed-or-gemm_small condition
// and its loop's `splittable`: a call that then runs all B rows on a kernel picked for fewer gets
// the panels from 16 rows, where they tie with MKL at the weights that split (at most 1 MB;
// bench/small_gemm.py W 1024 x 256 M=16-32).
inline int64_t batch_split_rows(int64_t B, int64_t weight_bytes) {
  const int64_t blocks = batch_split_blocks(B, weight_bytes);
  return (B + blocks - 1) / blocks;
}

// Whether one layer's call is small enough to run on one thread (kSerialCallMacs, blas.h): W_hh
// under kSerialMaxWeight elements, its steps under kSerialStepMacs and all its `passes` (forward 1,
// backward 2) under kSerialCallMacs.
template <int64_t G>
inline bool small_call(const ForwardProblem& p, int64_t passes) {
  const double step = double(p.B) * double(G * p.H) * double(p.I + p.P);  // no overflow at any size
  return G * p.H * p.P < kSerialMaxWeight && step < double(kSerialStepMacs) &&
         double(passes) * double(p.T) * step < double(kSerialCallMacs);
}

// The rows a walk of the loop covers: all B rows, or (block) one thread's block of a batch split.
struct Rows {
  int64_t b0, b1;
  bool block;
};

// Runs f over all rows, or in batch-split blocks when the loop allows it (`splittable`: one-phase
// cells, no hook), the data is float32 and the packed weight fits (batch_split_chunks).
template <typename T_, class F>
void walk_rows(bool splittable, int64_t B, const RecurrentGemm& rec, const F& f) {
  if constexpr (std::is_same_v<T_, float>) {
    const int64_t chunks = splittable ? batch_split_chunks(B, rec) : 1;
    if (chunks > 1) {
      for_row_blocks(chunks, B, [&](int64_t b0, int64_t b1) { f(Rows{b0, b1, true}); });
      return;
    }
  }
  std::optional<mkl::SequentialScope> sequential;
  if (B * rec.row_macs() < kSequentialStepMacs) sequential.emplace();  // see kSequentialStepMacs
  f(Rows{0, B, false});
}

// Padding of a variable-length batch: the caller never promises to fill input rows of frozen
// positions (t >= lengths[b], see freeze_forward), and the weight-gradient GEMMs read every row.

// Zeroes, in place, the rows of frozen positions of a (T*B, n) row view (row t*B + b).
inline void zero_frozen_rows(const at::Tensor& rows, const at::Tensor& lengths, int64_t T, int64_t B) {
  if (!lengths.defined()) return;
  const int64_t* len = lengths.const_data_ptr<int64_t>();
  const at::Tensor v = rows.view({T, B, rows.size(1)});
  for (int64_t b = 0; b < B; ++b) {
    if (len[b] < T) v.narrow(0, len[b], T - len[b]).select(1, b).zero_();
  }
}


// Bias added to the input projection, (G*H) of T_: b_ih + b_hh, except the b_hh rows a cell keeps
// inside its pointwise math (CellTraits::inner_bias_gate: GRU reset_after's b_hn). Zeros when there
// are none. Filled by a loop, not ATen ops (at a small size their dispatch cost more than the sum);
// each entry is the same float sum ATen's b_ih + b_hh gave.
template <class Cell, typename T_>
void folded_bias(const ForwardProblem& p, T_* o) {
  const int64_t GH = Cell::traits.gates * p.H, g = Cell::traits.inner_bias_gate;
  const T_* bi = p.b_ih.defined() ? p.b_ih.const_data_ptr<T_>() : nullptr;
  const T_* bh = p.b_hh.defined() ? p.b_hh.const_data_ptr<T_>() : nullptr;
  for (int64_t j = 0; j < GH; ++j) {
    const bool inner = g >= 0 && j >= g * p.H && j < (g + 1) * p.H;
    const T_ h = bh && !inner ? bh[j] : T_(0);
    o[j] = bi && bh ? bi[j] + h : bi ? bi[j] : h;
  }
}

// Steps per chunk of the forward's input projection. One GEMM over all T*B rows writes a
// (T*B, G*H) buffer that the steps then read back row by row; once it is much larger than L2 it
// comes back from L3 or memory (and, fresh every call, costs its page faults). Above kChunkAbove
// bytes the projection runs in chunks of at least kChunkMinRows rows (GEMM efficiency) and about
// kChunkBytes, into one reused buffer that stays in cache. Below it, one GEMM: with a small input
// size (I = 28, a one-hot) the chunked GEMMs were slower than the one large one.
constexpr int64_t kChunkAbove = int64_t(8) << 20, kChunkMinRows = 1024, kChunkBytes = int64_t(4) << 20;
inline int64_t projection_chunk_steps(int64_t T, int64_t B, int64_t row_elems, int64_t elem_bytes) {
  const int64_t row_bytes = std::max<int64_t>(1, row_elems * elem_bytes);
  if (T * B * row_bytes <= kChunkAbove) return std::max<int64_t>(1, T);
  const int64_t rows = std::max(kChunkMinRows, kChunkBytes / row_bytes);
  const int64_t chunks = std::max<int64_t>(1, T * B / rows);  // balanced: no short last chunk
  return (T + chunks - 1) / chunks;
}

struct CpuContext {};

// Whether the first walked step's recurrent GEMM h_{-1} W_hhᵀ is exactly zero and can be skipped:
// hx all zeros and W_hh all finite (0 * inf or NaN is NaN, which must propagate as torch.nn's
// GEMM propagates it). Checked on every call, one read of hx and of W_hh, so only from
// kZeroStateMinRows rows, where the GEMM it saves costs several such reads.
constexpr int64_t kZeroStateMinRows = 8;

// Both loops are branch-free ORs of comparisons so that the compiler vectorizes them; the float
// check (a read of all of W_hh on every call) is cloned for AVX-512 and AVX2 as gemm_small_rows is
// (measured: W_hh 1024 x 256, the baseline SSE2 loop cost about as much as the GEMM it saves at 8 rows).
// all_zero stops at the first block of 256 with a nonzero (or NaN) element: a given, nonzero state
// (a cell stepped in a loop) is told apart in one block instead of a read of all of it per call.
template <typename T_>
bool all_zero(const T_* x, int64_t n) {
  constexpr int64_t kBlock = 256;
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t end = std::min(n, i + kBlock);
    int nonzero = 0;
    for (int64_t j = i; j < end; ++j) nonzero |= x[j] != T_(0);
    if (nonzero) return false;
  }
  return true;
}

// No inf or NaN: |x|'s bits, read as a signed integer, not above the largest finite value's.
template <typename T_, typename Bits>
RNNFAST_ALWAYS_INLINE bool all_finite_bits(const T_* x, int64_t n, Bits largest) {
  const Bits magnitude = std::numeric_limits<Bits>::max();
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, x + i, sizeof(b));
    bad |= Bits((b & magnitude) > largest);
  }
  return !bad;
}

#if RNNFAST_GCC_X86
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
inline bool all_finite(const float* x, int64_t n) {
  return all_finite_bits(x, n, int32_t(0x7f7fffff));
}

inline bool all_finite(const double* x, int64_t n) { return all_finite_bits(x, n, int64_t(0x7fefffffffffffffll)); }

// Whether every row of x (T, B, I), contiguous, at a frozen position (t >= lengths[b]) is finite.
// Their dG rows are zeros, so with finite values there the weight-gradient GEMMs may read X as it
// is (0 * x = 0) instead of a copy with those rows zeroed (zero_padding); an inf or NaN there must
// not reach the gradients (0 * inf), and then the copy is made.
template <typename T_>
bool frozen_rows_finite(const T_* x, const at::Tensor& lengths, int64_t T, int64_t B, int64_t I) {
  const int64_t* len = lengths.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = std::max<int64_t>(len[b], 0); t < T; ++t) {
      if (!all_finite(x + (t * B + b) * I, I)) return false;
    }
  }
  return true;
}

// input (T, B, I) as the weight-gradient GEMMs may read it, rows of frozen positions times their
// zero dG rows: input itself when no row is frozen or every frozen row is finite (0 * x is then
// an exact zero: frozen_rows_finite), else a copy with those rows zeroed (an inf or NaN there must
// not reach the gradients). The same GEMMs run on the same values either way.
inline at::Tensor zero_padding(const at::Tensor& input, const at::Tensor& lengths) {
  if (!lengths.defined()) return input;
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t* len = lengths.const_data_ptr<int64_t>();
  if (std::all_of(len, len + B, [T](int64_t l) { return l >= T; })) return input;
  if (input.is_contiguous()) {
    if (input.scalar_type() == at::kFloat && frozen_rows_finite(input.const_data_ptr<float>(), lengths, T, B, I)) {
      return input;
    }
    if (input.scalar_type() == at::kDouble && frozen_rows_finite(input.const_data_ptr<double>(), lengths, T, B, I)) {
      return input;
    }
  }
  at::Tensor out = input.clone(at::MemoryFormat::Contiguous);
  zero_frozen_rows(out.view({T * B, I}), lengths, T, B);
  return out;
}

template <typename T_>
bool zero_first_recurrence(const ForwardProblem& p) {
  if (p.B < kZeroStateMinRows || !p.hx.is_contiguous() || !p.w_hh.is_contiguous()) return false;
  return all_zero(p.hx.const_data_ptr<T_>(), p.hx.numel()) && all_finite(p.w_hh.const_data_ptr<T_>(), p.w_hh.numel());
}

// W_hh's rows of the cell's phase-0 gates (all of it for a one-phase cell): the weight of the step
// GEMM both Backends pack once per call.
template <class Cell, class Problem>
at::Tensor phase0_weight(const Problem& p) {
  constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;
  return G_rec == G ? p.w_hh : p.w_hh.narrow(0, 0, G_rec * p.H);
}
// Its size in bytes (batch_split_rows), without the view.
template <class Cell, class Problem>
int64_t phase0_weight_bytes(const Problem& p) {
  return Cell::traits.phase0_gates * p.H * p.w_hh.size(1) * int64_t(p.w_hh.element_size());
}

// The forward Backend (loop.h) of Cell over data of type T_.
template <class Cell, typename T_>
class CpuForward {
 public:
  using Rows = cpu::Rows;
  static constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;

  CpuForward(const CpuContext&, const ForwardProblem& p, const at::Tensor& lengths, at::Tensor& output,
             at::Tensor& ws, const CellIo& io)
      : serial_(small_call<G>(p, 1)), p_(p), output_(output), ws_(ws), H_(p.H), B_(p.B), WS_(ws.dim() == 3 ? ws.size(2) : 0),
        // h_{t-1} W_hh[phase 0 gates]ᵀ and (two-phase) the mid-step GEMM, weights packed once for all steps
        rec_(phase0_weight<Cell>(p), /*transpose=*/true, p.B, p.T, batch_split_rows(p.B, phase0_weight_bytes<Cell>(p))) {
    const auto opts = p.options();
    // The input projection X W_ihᵀ, chunk_ steps at a time (project(), called by the loop) into
    // one reused buffer; the biases are added in the pointwise pass, not here: at::addmm_out first
    // broadcasts the bias into xg and then runs the GEMM with beta = 1 (measured 0.40 -> 0.20 ms at
    // T*B=1120, G*H=768).
    chunk_ = projection_chunk_steps(p.T, p.B, G * p.H, sizeof(T_));
    rec_in_.emplace(p.w_ih, /*transpose=*/true, chunk_ * p.B, /*steps=*/1);  // never packed: large chunks
    // The projection buffer xg, the folded bias and the step GEMMs' results in one scratch buffer
    // of this call (core/scratch.h scratch_buffer: the call's arena when small, else the pool);
    // 64-byte aligned parts. Tensors over them only for the ATen fallback (project(), hg(), hg1()).
    auto aligned = [](int64_t n) { return (n + 15) / 16 * 16; };
    const int64_t n_xg = aligned(chunk_ * p.B * G * p.H);
    const int64_t n_bias = aligned(G * p.H), n_hg = aligned(p.B * G_rec * p.H);
    const int64_t n_hg1 = Cell::traits.phases == 2 ? aligned(p.B * p.H) : 0;
    core::ScratchBuffer work = core::scratch_buffer(n_xg + n_bias + n_hg + n_hg1, opts);
    work_ = std::move(work.owner);
    xg_ptr_ = static_cast<T_*>(work.ptr);
    bias_ptr_ = xg_ptr_ + n_xg;
    hg_ptr_ = bias_ptr_ + n_bias;
    hg1_ptr_ = Cell::traits.phases == 2 ? hg_ptr_ + n_hg : nullptr;
    folded_bias<Cell, T_>(p, bias_ptr_);
    if constexpr (Cell::traits.inner_bias_gate >= 0) {
      if (p.b_hh.defined()) {
        b_hn_ptr_ = p.b_hh.const_data_ptr<T_>() + Cell::traits.inner_bias_gate * p.H;
      } else {
        b_hn_ = at::zeros({p.H}, opts);
        b_hn_ptr_ = b_hn_.const_data_ptr<T_>();
      }
    }
    if constexpr (Cell::traits.phases == 2) {
      rec_n_.emplace(p.w_hh.narrow(0, G_rec * p.H, (G - G_rec) * p.H), /*transpose=*/true, p.B, p.T);
    }
    h_out_ = io.h_out;
    h_prev_ = io.h_prev;
    len_ = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
    prev_ = prev_state<Cell>(p, output.data_ptr<T_>(), WS_ ? ws.data_ptr<T_>() : nullptr, WS_, WS_ ? ws.size(0) : p.T);
    zero_first_ = zero_first_recurrence<T_>(p);
    if (zero_first_) {
      RECORD_FUNCTION("rnnfast::zero_state_skip", std::vector<c10::IValue>());  // a mark for the profiler
    }
  }

  template <class F>
  void walk(bool splittable, const F& f) {
    RECORD_FUNCTION("rnnfast::forward_recurrence", std::vector<c10::IValue>());  // profiler scope
    walk_rows<T_>(splittable, B_, rec_, f);
  }

  // The loop's chunked input projection (loop.h ChunkedProjection): xg = X[times of steps
  // [s0, s1)] W_ihᵀ, rows (t - xg_t0_) * B + b.
  int64_t chunk_steps() const { return chunk_; }
  void project(int64_t s0, int64_t s1) {
    RECORD_FUNCTION("rnnfast::input_projection", std::vector<c10::IValue>());
    const int64_t t0 = p_.reverse ? p_.T - s1 : s0, n = s1 - s0;
    xg_t0_ = t0;
    xg_rows_ = nullptr;
    if (len_ != nullptr && project_live(t0, n)) return;
    if constexpr (std::is_same_v<T_, float>) {  // a few rows: gemm_small on raw pointers, no views
      if (rec_in_->run_small(p_.input.const_data_ptr<float>() + t0 * B_ * p_.I, p_.I, xg_ptr_, G * H_, n * B_))
        return;
    }
    at::Tensor xg = rows_of(xg_ptr_, n * B_, G * H_);
    rec_in_->run(p_.input.view({p_.T * B_, p_.I}).narrow(0, t0 * B_, n * B_), xg, /*accumulate=*/false);
  }

  void recurrent_gemm(const Rows& rows, const Step& st) {
    const int64_t b0 = rows.block ? rows.b0 : 0;
    const int64_t m = live_end(len_, st.t, b0, rows.block ? rows.b1 : B_) - b0;  // the live rows
    if (zero_first_ && st.s == 0) {  // h_{-1} = hx = 0, W_hh finite: the product is zeros
      std::fill_n(hg_ptr_ + b0 * G_rec * H_, m * G_rec * H_, T_(0));
      return;
    }
    if (m == 0) return;
    if constexpr (std::is_same_v<T_, float>) {
      // packed or gemm_small: raw pointers, no views per step. A batch-split block (one thread's
      // rows) always has one of the two (batch_split_chunks).
      if (rec_.run_ptr(prev_.h(st.s) + b0 * p_.P, p_.P, hg_ptr_ + b0 * G_rec * H_, G_rec * H_, m,
                       /*accumulate=*/false)) {
        return;
      }
      TORCH_CHECK(!rows.block, "rnnfast: internal error: a batch-split block without a GEMM that takes it");
    }
    const at::Tensor h = st.s ? output_.select(0, st.tp) : p_.hx;
    if (m == B_) return rec_.run(h, hg(), /*accumulate=*/false);
    at::Tensor c = hg().narrow(0, 0, m);
    rec_.run(h.narrow(0, 0, m), c, /*accumulate=*/false);
  }

  // The mid-step GEMM on the workspace's gemm_slot (GRU reset_before: r ⊙ h), row stride WS.
  void mid_gemm(const Rows&, const Step& st) {
    const int64_t m = live_end(len_, st.t, 0, B_);
    if (m == 0) return;
    if constexpr (std::is_same_v<T_, float>) {
      const float* a = ws_.const_data_ptr<float>() + prev_.ws_row(st.t) * B_ * WS_ + Cell::traits.gemm_slot * H_;
      if (rec_n_->run_ptr(a, WS_, hg1_ptr_, H_, m, /*accumulate=*/false)) return;
    }
    at::Tensor c = hg1().narrow(0, 0, m);
    rec_n_->run(ws_.select(0, prev_.ws_row(st.t)).narrow(0, 0, m).narrow(1, Cell::traits.gemm_slot * H_, H_), c,
                /*accumulate=*/false);
  }

  // An inference call (keep_workspace false) of a one-phase cell stores no gate values (Keep =
  // false); measured against storing them all (module forward, inference, 1 thread, alternating
  // processes, medians of 5): LSTM H64 B32 T200 0.75x the time, H256 B32 T35 0.87x, H256 B128 T35
  // 0.96x, GRU H256 B128 T35 0.92x, GRU H64 B32 T200 0.96x, LSTM H512 B128 T35 1.03x (noise).
  template <int P>
  void forward_step(const Rows& rows, const Step& st) {
    if constexpr (Cell::traits.phases == 1) {
      if (!p_.keep_workspace) return forward_step_as<P, false>(rows, st);
    }
    forward_step_as<P, true>(rows, st);
  }

 private:
  // project's form for a variable-length batch where at most 15/16 of the chunk's rows live (the
  // rows [0, live_end) of each time): those rows gathered into one buffer and projected by one GEMM,
  // their results packed in xg time after time (xg_rows_[t - t0]: the xg row of time t's row 0), so
  // a ragged batch projects what lives, not T * B rows. The gather copies I values a row against the
  // GEMM's G*H*I multiply-adds. False (nothing done) where more rows live: then the chunk's one GEMM
  // over all its rows.
  bool project_live(int64_t t0, int64_t n) {
    xg_row_of_.resize(static_cast<size_t>(n));
    int64_t live = 0;  // xg_row_of_: each time's first xg row, the live rows of the times before it
    for (int64_t t = t0; t < t0 + n; ++t) {
      xg_row_of_[t - t0] = live;
      live += live_end(len_, t, 0, B_);
    }
    if (16 * live > 15 * n * B_) return false;
    xg_rows_ = xg_row_of_.data();
    if (live == 0) return true;
    const int64_t I = p_.I;
    at::Tensor a = core::scratch_empty({live, I}, p_.options());
    T_* dst = a.data_ptr<T_>();
    const T_* x = p_.input.const_data_ptr<T_>();
    for (int64_t t = t0; t < t0 + n; ++t) {
      const int64_t row = xg_row_of_[t - t0], end = t + 1 < t0 + n ? xg_row_of_[t + 1 - t0] : live;
      std::memcpy(dst + row * I, x + t * B_ * I, sizeof(T_) * (end - row) * I);
    }
    if constexpr (std::is_same_v<T_, float>) {
      if (rec_in_->run_small(dst, I, xg_ptr_, G * H_, live)) return true;
    }
    at::Tensor xg = rows_of(xg_ptr_, live, G * H_);
    rec_in_->run(a, xg, /*accumulate=*/false);
    return true;
  }

  template <int P, bool Keep>
  void forward_step_as(const Rows& rows, const Step& st) {
    const RowPointers ptr = pointers();
    auto row = [&](int64_t b) { return ptr.template row<P>(st, b); };
    if (rows.block) {
      forward_rows<Cell, P, Keep>(row, rows.b0, rows.b1, H_, st.t, len_);
    } else {
      for_rows(B_, G * H_, [&](int64_t b0, int64_t b1) { forward_rows<Cell, P, Keep>(row, b0, b1, H_, st.t, len_); });
    }
  }

  // Everything a row of a step points into (built once per step: the row builder stays a few adds).
  struct RowPointers {
    const T_* xg;
    const T_* bias;
    const T_* hg;
    const T_* hg1;
    const T_* b_hn;
    const T_* h_prev;  // the cell's h_{t-1} when it is not the layer's (projection: zeros)
    T_* h_out;
    int64_t h_out_st, h_out_sb;
    T_* ws;
    const PrevState<T_>* prev;
    int64_t B, H, WS, P;
    int64_t xg_t0;  // the time of xg's first rows (the current projection chunk)
    const int64_t* xg_rows;  // project_live's xg row of each time's row 0, or nullptr: (t - xg_t0) * B

    template <int Ph>
    FwdRow<T_> row(const Step& st, int64_t b) const {
      FwdRow<T_> r;
      r.xg = xg + ((xg_rows ? xg_rows[st.t - xg_t0] : (st.t - xg_t0) * B) + b) * G * H;
      r.bias = bias;
      r.hg = Ph == 0 ? hg + b * G_rec * H : hg1 + b * H;
      r.b_hn = b_hn;
      r.h = h_prev ? h_prev + b * H : prev->h(st.s) + b * P;
      r.c = Cell::traits.has_cell_state() ? prev->c(st.s) + b * prev->c_ld(st.s) : nullptr;
      r.h_out = h_out + st.t * h_out_st + b * h_out_sb;
      r.ws = ws ? ws + (prev->ws_row(st.t) * B + b) * WS : nullptr;
      return r;
    }
  };

  RowPointers pointers() const {
    return RowPointers{xg_ptr_,
                       bias_ptr_,
                       hg_ptr_,
                       hg1_ptr_,
                       b_hn_ptr_,
                       h_prev_.defined() ? h_prev_.const_data_ptr<T_>() : nullptr,
                       h_out_.data_ptr<T_>(),
                       h_out_.stride(0),
                       h_out_.stride(1),
                       WS_ ? ws_.data_ptr<T_>() : nullptr,
                       &prev_,
                       B_,
                       H_,
                       WS_,
                       p_.P,
                       xg_t0_,
                       xg_rows_};
  }

  SerialScope serial_;  // first: in force while the members below are built (the pack) and used
  const ForwardProblem& p_;
  at::Tensor output_, ws_;
  int64_t H_, B_, WS_;
  RecurrentGemm rec_;
  std::optional<RecurrentGemm> rec_n_, rec_in_;
  int64_t chunk_ = 1, xg_t0_ = 0;
  std::vector<int64_t> xg_row_of_;      // project_live's row offsets (its chunk's times)
  const int64_t* xg_rows_ = nullptr;    // xg_row_of_.data() while project_live's layout holds, else nullptr
  // A (rows, cols) tensor over buffer memory of this call (the ATen fallback's GEMM operands).
  at::Tensor rows_of(T_* ptr, int64_t rows, int64_t cols) const {
    return at::from_blob(ptr, {rows, cols}, p_.options());
  }
  // (B, G_rec*H) and (B, H) tensors of the step GEMMs' results, made on first use (the ATen fallback)
  at::Tensor& hg() {
    if (!hg_.defined()) hg_ = rows_of(hg_ptr_, B_, G_rec * H_);
    return hg_;
  }
  at::Tensor& hg1() {
    if (!hg1_.defined()) hg1_ = rows_of(hg1_ptr_, B_, H_);
    return hg1_;
  }

  at::Tensor work_, b_hn_, hg_, hg1_, h_out_, h_prev_;  // work_: the pool's buffer, if any (else the arena's)
  T_* xg_ptr_ = nullptr;    // the projection chunk (chunk_ * B, G*H),
  T_* bias_ptr_ = nullptr;  // the folded bias (G*H), the GEMM results hg (B, G_rec*H), hg1 (B, H)
  T_* hg_ptr_ = nullptr;
  T_* hg1_ptr_ = nullptr;
  const T_* b_hn_ptr_ = nullptr;  // the inner_bias_gate's rows of b_hh (b_hn_: zeros without b_hh)
  const int64_t* len_ = nullptr;
  bool zero_first_ = false;  // zero_first_recurrence: the first walked step skips its recurrent GEMM
  PrevState<T_> prev_{};
};

// The backward Backend (loop.h) of Cell over data of type T_.
template <class Cell, typename T_>
class CpuBackward {
 public:
  using Rows = cpu::Rows;
  static constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;

  // dG, dGh (T, B, G*H): filled; dh (B, P), dc (B, H): the carried grads, updated in place;
  // io.grad_h / io.dh: what the cell reads as grad_output and as its carried dL/dh.
  CpuBackward(const CpuContext&, const BackwardProblem& p, const at::Tensor& lengths, at::Tensor& dG, at::Tensor& dGh,
              at::Tensor& dh, at::Tensor& dc, const CellIo& io)
      : serial_(small_call<G>(p, 2)), p_(p), dG_(dG), dGh_(dGh), dh_(dh), H_(p.H), B_(p.B), WS_(p.ws.dim() == 3 ? p.ws.size(2) : 0),
        // dGh[t] W_hh[phase 0 gates] and (two-phase) dn W_hn, weights packed once for all steps
        rec_(phase0_weight<Cell>(p), /*transpose=*/false, p.B, p.T, batch_split_rows(p.B, phase0_weight_bytes<Cell>(p))) {
    if constexpr (Cell::traits.phases == 2) {
      drh_ = at::empty({p.B, p.H}, p.options());
      rec_n_.emplace(p.w_hh.narrow(0, G_rec * p.H, (G - G_rec) * p.H), /*transpose=*/false, p.B, p.T);
    }
    len_ = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
    accumulate_dh_ = Cell::traits.direct_dh || len_ != nullptr;  // see backward_rows
    ptr_.dy = io.grad_h.const_data_ptr<T_>();
    ptr_.dy_st = io.grad_h.stride(0);
    ptr_.dy_sb = io.grad_h.stride(1);
    ptr_.out = p.output.const_data_ptr<T_>();
    ptr_.ws = WS_ ? p.ws.const_data_ptr<T_>() : nullptr;
    ptr_.dg = dG.data_ptr<T_>();
    ptr_.dgh = dGh.data_ptr<T_>();
    ptr_.dh = io.dh.data_ptr<T_>();
    ptr_.dc = dc.defined() ? dc.data_ptr<T_>() : nullptr;
    ptr_.drh = drh_.defined() ? drh_.const_data_ptr<T_>() : nullptr;
    ptr_.B = p.B;
    ptr_.H = p.H;
    ptr_.P = p.P;
    ptr_.WS = WS_;
    ptr_.prev = prev_state<Cell>(p, ptr_.out, ptr_.ws, WS_, p.T);
  }

  template <class F>
  void walk(bool splittable, const F& f) {
    RECORD_FUNCTION("rnnfast::backward_recurrence", std::vector<c10::IValue>());  // profiler scope
    walk_rows<T_>(splittable, B_, rec_, f);
  }

  template <int P>
  void backward_step(const Rows& rows, const Step& st) {
    auto row = [&](int64_t b) { return ptr_.row(st, b); };
    if (rows.block) {
      backward_rows<Cell, P>(row, rows.b0, rows.b1, H_, st.t, len_);
    } else {
      for_rows(B_, G * H_, [&](int64_t b0, int64_t b1) { backward_rows<Cell, P>(row, b0, b1, H_, st.t, len_); });
    }
  }

  // d(gemm slot) = dG[t][phase 1 gates] W_hh[phase 1 gates] (GRU reset_before: d(r ⊙ h) = dn W_hn).
  // (Rows past live_end are frozen: their drh is never read, their dGh rows are zero.)
  void mid_gemm_backward(const Rows&, const Step& st) {
    const int64_t m = live_end(len_, st.t, 0, B_);
    if (m == 0) return;
    if constexpr (std::is_same_v<T_, float>) {
      const float* a = ptr_.dg + st.t * B_ * G * H_ + G_rec * H_;
      if (rec_n_->run_ptr(a, G * H_, drh_.data_ptr<float>(), H_, m, /*accumulate=*/false)) return;
    }
    at::Tensor c = drh_.narrow(0, 0, m);
    rec_n_->run(dG_.select(0, st.t).narrow(0, 0, m).narrow(1, G_rec * H_, (G - G_rec) * H_), c, /*accumulate=*/false);
  }

  // dh_{t-1} (+)= dGh[t] W_hh[phase 0 gates]
  // (With lengths it accumulates, so the frozen rows past live_end, whose dGh rows are zero, are
  // left out.)
  void recurrent_gemm_backward(const Rows& rows, const Step& st) {
    const int64_t b0 = rows.block ? rows.b0 : 0;
    const int64_t m = live_end(len_, st.t, b0, rows.block ? rows.b1 : B_) - b0;
    if (m == 0) return;
    if constexpr (std::is_same_v<T_, float>) {
      // packed (a batch-split block always is: batch_split_chunks) or gemm_small: raw pointers
      if (rec_.run_ptr(ptr_.dgh + (st.t * B_ + b0) * G * H_, G * H_, dh_.data_ptr<float>() + b0 * p_.P, p_.P, m,
                       accumulate_dh_)) {
        return;
      }
      TORCH_CHECK(!rows.block, "rnnfast: internal error: a batch-split block without a GEMM that takes it");
    }
    const at::Tensor dgh_t = G_rec == G ? dGh_.select(0, st.t) : dGh_.select(0, st.t).narrow(1, 0, G_rec * H_);
    if (m == B_) return rec_.run(dgh_t, dh_, accumulate_dh_);
    at::Tensor c = dh_.narrow(0, 0, m);
    rec_.run(dgh_t.narrow(0, 0, m), c, accumulate_dh_);
  }

 private:
  struct RowPointers {
    const T_* dy;
    int64_t dy_st, dy_sb;
    const T_* out;
    const T_* ws;
    T_* dg;
    T_* dgh;
    T_* dh;
    T_* dc;
    const T_* drh;
    int64_t B, H, P, WS;
    PrevState<T_> prev;

    BwdRow<T_> row(const Step& st, int64_t b) const {
      const int64_t tb = st.t * B + b;
      BwdRow<T_> r;
      r.dy = dy + st.t * dy_st + b * dy_sb;
      r.h = prev.h(st.s) + b * P;
      r.h_out = out + tb * P;
      r.c = Cell::traits.has_cell_state() ? prev.c(st.s) + b * prev.c_ld(st.s) : nullptr;
      r.ws = ws ? ws + tb * WS : nullptr;
      r.dg = dg + tb * G * H;
      r.dgh = dgh + tb * G * H;
      r.dh = dh + b * H;
      r.dc = dc ? dc + b * H : nullptr;
      r.drh = drh ? drh + b * H : nullptr;
      return r;
    }
  };

  SerialScope serial_;  // first: in force while the members below are built (the pack) and used
  const BackwardProblem& p_;
  at::Tensor dG_, dGh_, dh_, drh_;
  int64_t H_, B_, WS_;
  RecurrentGemm rec_;
  std::optional<RecurrentGemm> rec_n_;
  const int64_t* len_ = nullptr;
  bool accumulate_dh_ = false;
  RowPointers ptr_{};
};

// Column sums of a row-major (rows, n) block (ld): the bias gradients, into out (n).
template <typename T_>
void column_sums(const T_* src, int64_t rows, int64_t n, int64_t ld, T_* out) {
  std::memcpy(out, src, sizeof(T_) * n);
  for (int64_t r = 1; r < rows; ++r) {
    const T_* s = src + r * ld;
    for (int64_t j = 0; j < n; ++j) out[j] += s[j];
  }
}

// The weight gradients of a problem with few rows (weight_grads_separate's case: a cell's step, a
// short sequence) through raw BLAS calls on the buffers themselves (blas.h gemm_tn): the same GEMMs
// as weight_grads_separate, without its ~30 dispatcher calls of views and ATen GEMMs, which at a
// small cell's step cost more than the arithmetic (rnn_tanh backward at H = 16, B = 1: 21 us a
// call). Honours in.into the same way. False, having written nothing, where it does not apply: an
// empty dimension, or no BLAS. A variable-length batch's X is read as zero_padding gives it: in
// place where its rows at frozen positions are finite (a PackedSequence's padded batch has zeros
// there), else a copy with those rows zeroed; the same GEMMs either way, so the same bits whatever
// the padding holds. (RNN-tanh I = 512 H = 256 B = 100 T = 3, 2 layers, packed,
// 68% of the rows live, forward+backward, 1 thread, was 0.88x torch.nn in a random sweep with
// these on ATen GEMMs over a zeroed copy.)
template <class Cell, typename T_, class Padding>
bool weight_grads_raw(const WeightGradInputs<Padding>& in, WeightGrads& g) {
  constexpr int64_t G = Cell::traits.gates, G_rec = Cell::traits.phase0_gates;
  const int64_t T = in.T(), B = in.B(), I = in.I(), P = in.P(), rows = in.rows(), GH = in.gate_rows(), H = GH / G;
  constexpr int64_t kMax = INT32_MAX;  // BLAS's int sizes; checked here so no call below can refuse
  const int64_t WS = Cell::traits.slots * H;
  if (rows < 1 || I < 1 || P < 1 || GH < 1 || rows > kMax || I > kMax || P > kMax || GH > kMax || WS > kMax ||
      !fortran::gemm<T_>()) {
    return false;
  }
  const auto opts = in.dg.options();
  const bool into_ih = in.into.w_ih.defined(), into_hh = in.into.w_hh.defined();
  at::Tensor w_ih = into_ih ? in.into.w_ih : core::new_tensor({GH, I}, opts);
  at::Tensor w_hh = into_hh ? in.into.w_hh : core::new_tensor({GH, P}, opts);
  const T_* dg = in.dg.template const_data_ptr<T_>();
  const T_* dgh = in.dgh.template const_data_ptr<T_>();
  const at::Tensor x_read = zero_padding(in.input, in.lengths);  // (T, B, I) contiguous (make_problem)
  const T_* x = x_read.template const_data_ptr<T_>();
  const T_* hx = in.hx.template const_data_ptr<T_>();
  const T_* out = in.output.template const_data_ptr<T_>();
  T_* wi = w_ih.template data_ptr<T_>();
  T_* wh = w_hh.template data_ptr<T_>();
  const T_ beta_ih = into_ih ? 1 : 0, beta_hh = into_hh ? 1 : 0;
  const auto run = [](bool done) { TORCH_INTERNAL_ASSERT(done, "rnnfast: a weight-gradient GEMM was refused"); };
  // dW_ih (+)= dGᵀ X
  run(gemm_tn<T_>(GH, I, rows, dg, GH, x, I, beta_ih, wi, I));
  // dW_hh's phase-0 rows (+)= dGh[:, phase 0]ᵀ Hprev: the step walked first saw hx, the others the
  // output of the step before (a shifted block of output).
  const int64_t t_first = in.reverse ? T - 1 : 0;
  const int64_t n0 = G_rec * H;
  run(gemm_tn<T_>(n0, P, B, dgh + t_first * B * GH, GH, hx, P, beta_hh, wh, P));
  if (T > 1) {
    const T_* d_rest = dgh + (in.reverse ? 0 : B * GH);
    const T_* h_rest = out + (in.reverse ? B * P : 0);
    run(gemm_tn<T_>(n0, P, (T - 1) * B, d_rest, GH, h_rest, P, T_(1), wh, P));
  }
  if constexpr (Cell::traits.phases == 2) {
    // the mid-step GEMM's rows saw the workspace's gemm_slot (GRU reset_before: r h_{t-1})
    const T_* ws = in.ws.template const_data_ptr<T_>() + Cell::traits.gemm_slot * H;
    run(gemm_tn<T_>(GH - n0, H, rows, dg + n0, GH, ws, WS, beta_hh, wh + n0 * P, P));
  }
  g.b_ih = core::new_tensor({GH}, opts);
  column_sums(dg, rows, GH, GH, g.b_ih.template data_ptr<T_>());
  g.b_hh = core::new_tensor({GH}, opts);
  if (Cell::traits.split_grad) {
    column_sums(dgh, rows, GH, GH, g.b_hh.template data_ptr<T_>());
  } else {
    std::memcpy(g.b_hh.template data_ptr<T_>(), g.b_ih.template const_data_ptr<T_>(), sizeof(T_) * GH);
  }
  if (!into_ih) g.w_ih = w_ih;
  if (!into_hh) g.w_hh = w_hh;
  return true;
}

// The CPU backend family (loop.h's Family concept).
struct CpuFamily {
  using Context = CpuContext;
  // In force for each op call: opens the thread's call arena (core/scratch.h CallArena).
  struct Guard {
    explicit Guard(c10::Device) {}
    core::CallArena::Scope arena;
  };
  template <class Cell, typename T_>
  using Forward = CpuForward<Cell, T_>;
  template <class Cell, typename T_>
  using Backward = CpuBackward<Cell, T_>;

  static Context context() { return {}; }
  static void check_dtype(const char*, const at::Tensor&) {}  // check_forward: float32 and float64
  static at::Tensor check_lengths(const char* op, const c10::optional<at::Tensor>& lengths, int64_t T, int64_t B,
                                  const at::Tensor&) {
    return core::check_lengths(op, lengths, T, B);
  }

  template <class F>
  static void dispatch(at::ScalarType dtype, const F& f) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "rnnfast_recurrence", [&] { f(scalar_t(0)); });
  }
  static at::Tensor step_lengths(const at::Tensor& lengths, const at::Tensor&) { return lengths; }

  // grad_output is read one (t, b) row at a time: any strides along T and B are fine as long as a
  // row is contiguous; a grad broadcast along H too (out.sum() gives an expanded scalar) becomes
  // one materialized row read by every (t, b). Only other layouts are copied.
  static at::Tensor grad_output_rows(const at::Tensor& g) {
    if (g.numel() > 0 && g.size(2) > 1 && g.stride(2) != 1) {
      return g.stride(0) == 0 && g.stride(1) == 0 ? g.select(0, 0).select(0, 0).contiguous().expand_as(g)
                                                  : g.contiguous();
    }
    return g;
  }

  // dL/dx (rows, I) = dG (rows, G*H) W_ih, a fresh tensor: one BLAS call on the buffers (no
  // dispatcher: a cell's step), at::mm where BLAS cannot take them.
  static at::Tensor input_grad(const at::Tensor& dG, const at::Tensor& w_ih) {
    const int64_t rows = dG.size(0), GH = dG.size(1), I = w_ih.size(1);
    if (dG.is_contiguous() && w_ih.is_contiguous()) {
      at::Tensor out = core::new_tensor({rows, I}, dG.options());
      bool done = false;
      dispatch(dG.scalar_type(), [&](auto zero) {
        using T_ = decltype(zero);
        done = blas_gemm_nn<T_>(rows, I, GH, dG.const_data_ptr<T_>(), GH, w_ih.const_data_ptr<T_>(), I, T_(0),
                                out.data_ptr<T_>(), I);
      });
      if (done) return out;
    }
    return at::mm(dG, w_ih);
  }

  // dst = [dst +] a b on rnnfast's blocked AVX2 GEMM where blas.h blocked_gemm takes it (float32,
  // every operand a BLAS matrix, large: the weight gradients, core/weight_grads.h product_into);
  // false, having done nothing, otherwise (then ATen's GEMM).
  static bool gemm_into(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (dst.scalar_type() != at::kFloat || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) return false;
    const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
    if (m < 2 || n < 2 || k < 2 || dst.stride(1) != 1 || dst.stride(0) < n) return false;
    // (transposed, leading dimension) of a row-major matrix with `cols` columns, or none
    auto layout = [](const at::Tensor& t, int64_t cols) -> std::optional<std::pair<bool, int64_t>> {
      if (t.stride(1) == 1 && t.stride(0) >= cols) return std::make_pair(false, t.stride(0));
      if (t.stride(0) == 1 && t.stride(1) >= t.size(0)) return std::make_pair(true, t.stride(1));
      return std::nullopt;
    };
    const auto la = layout(a, k), lb = layout(b, n);
    if (!la || !lb) return false;
    return blocked_gemm(la->first, lb->first, m, n, k, a.const_data_ptr<float>(), la->second,
                        b.const_data_ptr<float>(), lb->second, accumulate ? 1.f : 0.f, dst.data_ptr<float>(),
                        dst.stride(0));
  }

  template <class Cell>
  static WeightGrads weight_grads(const WeightGradInputs<CpuFamily>& in) {
    if (!concatenation_repays(in)) {  // weight_grads_separate's case: its GEMMs without the dispatcher
      WeightGrads g;
      bool done = false;
      dispatch(in.dg.scalar_type(), [&](auto zero) { done = weight_grads_raw<Cell, decltype(zero)>(in, g); });
      if (done) return g;
    }
    return weight_grads_by_cell<Cell>(in);
  }
  // Padding policy (core/weight_grads.h), from the host-side lengths.
  static at::Tensor without_padding(const at::Tensor& input, const at::Tensor& lengths) {
    return zero_padding(input, lengths);
  }
  static void zero_rows(const at::Tensor& rows, const at::Tensor& lengths, int64_t T, int64_t B) {
    zero_frozen_rows(rows, lengths, T, B);
  }
};

}  // namespace cpu
}  // namespace rnnfast
