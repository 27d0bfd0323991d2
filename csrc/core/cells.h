// Every recurrent cell, defined once: its traits, its workspace layout as named slots, and its
// pointwise forward/backward math for one hidden unit j of one batch row at one time step.
// Backend-neutral: no ATen, no CUDA runtime. The same functions are compiled for the CPU (csrc/cpu
// rows.h: force-inlined into vectorized row loops, float32 and float64), for the device
// (csrc/kernels/step.cuh: one thread per unit) and for the host emulation of the CUDA path
// (tests/cuda_emulation.cpp).
//
// The math reads and writes through an accessor `s` that the backend provides, so a cell never
// indexes memory itself. An accessor defines `value_type` (float or double) and `Math` (static
// sigmoid and tanh: the CPU's vectorizable fastmath.h, or the device's expf/tanhf). Forward:
//   s.x(g)      input-side pre-activation of gate g (W_ih x_t + b_ih, with whatever biases the
//               backend folded in)
//   s.h(g)      recurrent-side pre-activation of gate g (W_hh h_{t-1} + b_hh); in a two-phase cell's
//               phase 1, the mid-step GEMM's row for the gates from traits.phase0_gates on
//   s.h_prev(), s.c_prev()   the state before the step
//   s.saved(k), s.save(k, v) workspace slot k of this step (Slot enums below); s.set_h(v) writes h_t
//   s.activated(g)  Cell::act(g) of gate g's pre-activation, s.x(g) + s.h(g), for a gate whose
//               activation depends on nothing else (an accessor may have computed it beforehand:
//               the CPU's row pass does, rows.h; the device computes it in place)
// Backward:
//   s.dh()      dL/dh_t in total (grad_output[t] + what flowed back from step t+1)
//   s.dc()      dL/dc_t carried from step t+1 (cells with a cell state)
//   s.saved(k), s.h_new(), s.h_prev(), s.c_prev()
//   s.drh()     two-phase cells, phase 1: the mid-step GEMM's row (GRU reset_before: dn_pre W_hn)
//   s.set_dg(g, v)       gradient of gate g's pre-activation (input and recurrent side alike)
//   s.set_dg(g, vx, vh)  ... when the two sides differ (traits.split_grad)
//   s.set_dh_prev(v), s.add_dh_prev(v)  the direct (non-GEMM) part of dL/dh_{t-1} (traits.direct_dh)
//   s.set_dc_prev(v)     dL/dc_{t-1}
// The GEMMs (input projection, recurrent product, dG W_hh, weight gradients) are the host loop's.
//
// Products are written in torch autograd's order (sigmoid' = (1 - y) y, tanh' = 1 - y^2): where a
// saturated gate gives an exact 0 factor, the overflow / inf * 0 cases come out as torch's.
//
// Adding a cell: a struct here (kind, name, Gate and Slot enums, traits, act, forward/backward per
// phase) and its entry in RNNFAST_CELLS. The CellKind enum, traits_of, for_cell, the op entry points
// and registrations (recurrent_ops.h) and the op schemas (csrc/ops.cpp) follow from that list; the
// loop, the backends and the kernels need no change.
#pragma once
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define RNNFAST_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define RNNFAST_HOST_DEVICE inline __attribute__((always_inline))
#else
#define RNNFAST_HOST_DEVICE inline
#endif

namespace rnnfast {
namespace core {

// Every cell, once: X(KIND, CELL) with KIND its CellKind value and CELL its struct (below), in
// CellKind order. Everything that enumerates the cells is generated from this list: the CellKind
// enum, traits_of, for_cell and for_each_cell here, and through them the op entry points and their
// registrations (csrc/core/recurrent_ops.h) and the op schemas (csrc/ops.cpp).
//
// One spelling per cell: the op name (`CELL::name`: "rnn_tanh" -> rnn_tanh_forward/_backward) and
// the CellKind value are the same word. A cell that is another cell's `Alternative` (below: the
// value false of that cell's op `option`) has no op of its own: gru_reset_before is the `gru` op
// with reset_after=false.
#define RNNFAST_CELLS(X)                  \
  X(rnn_tanh, RnnTanhCell)                \
  X(rnn_relu, RnnReluCell)                \
  X(gru, GruCell)                         \
  X(gru_reset_before, GruResetBeforeCell) \
  X(lstm, LstmCell)

#define RNNFAST_CELL_KIND(KIND, CELL) KIND,
enum class CellKind : int { RNNFAST_CELLS(RNNFAST_CELL_KIND) };
#undef RNNFAST_CELL_KIND

// What a host loop needs to know about a cell: the one vocabulary of traits.
struct CellTraits {
  int gates;           // G: gate blocks of H rows in w_ih / w_hh (torch's order)
  int slots;           // workspace slots of width H per (t, b): the workspace is (T, B, slots*H)
  int phases;          // pointwise passes per step: 2 when a GEMM sits between them
  int phase0_gates;    // leading gates whose recurrent product phase 0 reads (the rest: phase 1's GEMM)
  int gemm_slot;       // two-phase cells: the slot that feeds the mid-step GEMM; else -1
  int state_slot;      // the slot holding the cell state c_t (LSTM); else -1
  int inner_bias_gate; // the gate whose b_hh the math applies inside a product (GRU's n: r (W_hn h +
                       // b_hn)), so it cannot be folded into the input projection; else -1
  bool split_grad;     // input-side and recurrent-side pre-activation grads differ for some gate
  bool direct_dh;      // backward writes a direct (non-GEMM) part of dh_{t-1}; else the GEMM overwrites dh
  constexpr bool has_cell_state() const { return state_slot >= 0; }
};

template <int P>
struct Phase {};  // phase tag of a pointwise pass

// A gate's activation when it is a function of that gate's own pre-activation x(g) + h(g) alone
// (Cell::act(g)); none for a gate the cell combines otherwise (the GRU's candidate: tanh(x + r hn)).
// Cells read such gates through s.activated(g), so a backend may evaluate them apart from the rest
// of the cell (the CPU does, one gate at a time over a block of units: rows.h).
enum class Act : int { none, sigmoid, tanh };

template <class M, class T>
RNNFAST_HOST_DEVICE T activate(Act a, T v) {
  return a == Act::sigmoid ? M::sigmoid(v) : a == Act::tanh ? M::tanh(v) : v;
}

// ---- Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu ------------------------
// Backward needs only h_t (the output): tanh' = 1 - h'^2, relu' = [h' > 0]. No workspace.
template <bool Relu>
struct RnnCell {
  static constexpr CellKind kind = Relu ? CellKind::rnn_relu : CellKind::rnn_tanh;
  static constexpr const char* name = Relu ? "rnn_relu" : "rnn_tanh";
  enum Gate : int { kGateA };
  enum Slot : int { kNumSlots };
  static constexpr CellTraits traits{/*gates=*/1, kNumSlots, /*phases=*/1, /*phase0_gates=*/1,
                                     /*gemm_slot=*/-1, /*state_slot=*/-1, /*inner_bias_gate=*/-1,
                                     /*split_grad=*/false, /*direct_dh=*/false};
  RNNFAST_HOST_DEVICE static constexpr Act act(int) { return Relu ? Act::none : Act::tanh; }

  template <class S>
  RNNFAST_HOST_DEVICE static void forward(S& s, Phase<0>) {
    using T = typename S::value_type;
    if constexpr (Relu) {
      const T a = s.x(kGateA) + s.h(kGateA);
      s.set_h(a < T(0) ? T(0) : a);  // relu keeps NaN, as torch.relu
    } else {
      s.set_h(s.activated(kGateA));
    }
  }
  template <class S>
  RNNFAST_HOST_DEVICE static void backward(S& s, Phase<0>) {
    using T = typename S::value_type;
    const T d = s.dh();
    const T y = s.h_new();
    s.set_dg(kGateA, Relu ? (y <= T(0) ? T(0) : d) : d * (T(1) - y * y));  // relu: NaN passes d, as torch
  }
};
using RnnTanhCell = RnnCell<false>;
using RnnReluCell = RnnCell<true>;

// ---- LSTM: i, f, o = σ(...), g = tanh(...); c' = f c + i g; h' = o tanh(c') --------------------------
struct LstmCell {
  static constexpr CellKind kind = CellKind::lstm;
  static constexpr const char* name = "lstm";
  enum Gate : int { kGateI, kGateF, kGateG, kGateO };
  enum Slot : int { kSlotI, kSlotF, kSlotG, kSlotO, kSlotC, kNumSlots };
  static constexpr CellTraits traits{/*gates=*/4, kNumSlots, /*phases=*/1, /*phase0_gates=*/4,
                                     /*gemm_slot=*/-1, /*state_slot=*/kSlotC, /*inner_bias_gate=*/-1,
                                     /*split_grad=*/false, /*direct_dh=*/false};
  RNNFAST_HOST_DEVICE static constexpr Act act(int g) { return g == kGateG ? Act::tanh : Act::sigmoid; }

  template <class S>
  RNNFAST_HOST_DEVICE static void forward(S& s, Phase<0>) {
    using T = typename S::value_type;
    using M = typename S::Math;
    const T i = s.activated(kGateI);
    const T f = s.activated(kGateF);
    const T g = s.activated(kGateG);
    const T o = s.activated(kGateO);
    const T c = f * s.c_prev() + i * g;
    s.save(kSlotI, i);
    s.save(kSlotF, f);
    s.save(kSlotG, g);
    s.save(kSlotO, o);
    s.save(kSlotC, c);
    s.set_h(o * M::tanh(c));
  }
  template <class S>
  RNNFAST_HOST_DEVICE static void backward(S& s, Phase<0>) {
    using T = typename S::value_type;
    using M = typename S::Math;
    const T i = s.saved(kSlotI), f = s.saved(kSlotF), g = s.saved(kSlotG), o = s.saved(kSlotO);
    const T tc = M::tanh(s.saved(kSlotC));  // recomputed: cheaper than saving tanh(c) too
    const T dh = s.dh();
    const T dc = s.dc() + (dh * o) * (T(1) - tc * tc);
    s.set_dg(kGateI, ((dc * g) * (T(1) - i)) * i);
    s.set_dg(kGateF, ((dc * s.c_prev()) * (T(1) - f)) * f);
    s.set_dg(kGateG, (dc * i) * (T(1) - g * g));
    s.set_dg(kGateO, ((dh * tc) * (T(1) - o)) * o);
    s.set_dc_prev(dc * f);
  }
};

// ---- GRU: r, z = σ(...); h' = (1 - z) n + z h = n + z (h - n) ---------------------------------------
// The part both variants share: gates r, z, n (torch's order), slots [r, z, n, hn], and the update.
struct GruBase {
  enum Gate : int { kGateR, kGateZ, kGateN };
  enum Slot : int { kSlotR, kSlotZ, kSlotN, kSlotHn, kNumSlots };

  template <class T>
  RNNFAST_HOST_DEVICE static T update(T n, T z, T h_prev) { return n + z * (h_prev - n); }
  // dL/dz_pre and dL/dn_pre from dL/dh' (the update's and the activations' derivatives).
  template <class T>
  RNNFAST_HOST_DEVICE static T dz_pre(T dh, T z, T n, T h_prev) { return dh * (h_prev - n) * z * (T(1) - z); }
  template <class T>
  RNNFAST_HOST_DEVICE static T dn_pre(T dh, T z, T n) { return dh * (T(1) - z) * (T(1) - n * n); }
  template <class T>
  RNNFAST_HOST_DEVICE static T dr_pre(T d_rhn, T r) { return d_rhn * r * (T(1) - r); }
};

struct GruResetBeforeCell;

// torch.nn.GRU / cuDNN form (reset_after): hn = W_hn h + b_hn; n = tanh(W_in x + b_in + r hn).
// hn is saved; d(W_hn h) = dn_pre r, not dn_pre (split_grad); dh_{t-1} gets dh z directly.
struct GruCell : GruBase {
  static constexpr CellKind kind = CellKind::gru;
  static constexpr const char* name = "gru";
  // The gru op's bool argument after `reverse`: true runs this cell, false the Alternative.
  static constexpr const char* option = "reset_after";
  using Alternative = GruResetBeforeCell;
  static constexpr CellTraits traits{/*gates=*/3, kNumSlots, /*phases=*/1, /*phase0_gates=*/3,
                                     /*gemm_slot=*/-1, /*state_slot=*/-1, /*inner_bias_gate=*/kGateN,
                                     /*split_grad=*/true, /*direct_dh=*/true};
  RNNFAST_HOST_DEVICE static constexpr Act act(int g) { return g == kGateN ? Act::none : Act::sigmoid; }

  template <class S>
  RNNFAST_HOST_DEVICE static void forward(S& s, Phase<0>) {
    using T = typename S::value_type;
    using M = typename S::Math;
    const T r = s.activated(kGateR);
    const T z = s.activated(kGateZ);
    const T hn = s.h(kGateN);
    const T n = M::tanh(s.x(kGateN) + r * hn);
    s.save(kSlotR, r);
    s.save(kSlotZ, z);
    s.save(kSlotN, n);
    s.save(kSlotHn, hn);
    s.set_h(update(n, z, s.h_prev()));
  }
  template <class S>
  RNNFAST_HOST_DEVICE static void backward(S& s, Phase<0>) {
    using T = typename S::value_type;
    const T r = s.saved(kSlotR), z = s.saved(kSlotZ), n = s.saved(kSlotN), hn = s.saved(kSlotHn);
    const T dh = s.dh();
    const T dn = dn_pre(dh, z, n);
    s.set_dg(kGateR, dr_pre(dn * hn, r));
    s.set_dg(kGateZ, dz_pre(dh, z, n, s.h_prev()));
    s.set_dg(kGateN, dn, dn * r);  // the input side sees n_pre directly, the recurrent side through r hn
    s.set_dh_prev(dh * z);
  }
};

// The textbook form (reset_before; Cho et al. 2014, d2l): n = tanh(W_in x + b_in + W_hn (r h) + b_hn).
// The candidate's recurrent GEMM needs r first, so a step is two phases around that GEMM; slot hn
// holds r h_{t-1}, the GEMM's input:
//   forward:  h(r,z) = h W_hrzᵀ -> phase 0 (r, z, r h) -> h(n) = (r h) W_hnᵀ -> phase 1 (n, h')
//   backward: phase 0 (dz, dn, dh z) -> drh = dn W_hn -> phase 1 (dr, dh += drh r) -> dh += [dr dz] W_hrz
struct GruResetBeforeCell : GruBase {
  static constexpr CellKind kind = CellKind::gru_reset_before;
  static constexpr const char* name = "gru";
  static constexpr CellTraits traits{/*gates=*/3, kNumSlots, /*phases=*/2, /*phase0_gates=*/2,
                                     /*gemm_slot=*/kSlotHn, /*state_slot=*/-1, /*inner_bias_gate=*/-1,
                                     /*split_grad=*/false, /*direct_dh=*/true};
  RNNFAST_HOST_DEVICE static constexpr Act act(int g) { return g == kGateN ? Act::tanh : Act::sigmoid; }

  template <class S>
  RNNFAST_HOST_DEVICE static void forward(S& s, Phase<0>) {  // gates r, z and the GEMM input r h
    using T = typename S::value_type;
    const T r = s.activated(kGateR);
    s.save(kSlotR, r);
    s.save(kSlotZ, s.activated(kGateZ));
    s.save(kSlotHn, r * s.h_prev());
  }
  template <class S>
  RNNFAST_HOST_DEVICE static void forward(S& s, Phase<1>) {  // candidate and state update
    using T = typename S::value_type;
    const T n = s.activated(kGateN);
    s.save(kSlotN, n);
    s.set_h(update(n, T(s.saved(kSlotZ)), s.h_prev()));
  }
  template <class S>
  RNNFAST_HOST_DEVICE static void backward(S& s, Phase<0>) {  // z, n; the host then runs drh = dn_pre W_hn
    using T = typename S::value_type;
    const T z = s.saved(kSlotZ), n = s.saved(kSlotN);
    const T dh = s.dh();
    s.set_dg(kGateZ, dz_pre(dh, z, n, s.h_prev()));
    s.set_dg(kGateN, dn_pre(dh, z, n));
    s.set_dh_prev(dh * z);
  }
  template <class S>
  RNNFAST_HOST_DEVICE static void backward(S& s, Phase<1>) {  // r, from d(r h) = dn_pre W_hn
    using T = typename S::value_type;
    const T r = s.saved(kSlotR), drh = s.drh();
    s.set_dg(kGateR, dr_pre(drh * s.h_prev(), r));
    s.add_dh_prev(drh * r);
  }
};

// ---- Generated from RNNFAST_CELLS --------------------------------------------------------------------

// The traits of a runtime CellKind (the CUDA launchers take the cell as a value).
constexpr CellTraits traits_of(CellKind kind) {
  switch (kind) {
#define RNNFAST_TRAITS_CASE(KIND, CELL) \
  case CellKind::KIND:                  \
    return CELL::traits;
    RNNFAST_CELLS(RNNFAST_TRAITS_CASE)
#undef RNNFAST_TRAITS_CASE
  }
  return CellTraits{0, 0, 0, 0, -1, -1, -1, false, false};
}

// Calls f.template run<Cell>() for a runtime CellKind (the one place that maps kinds to types).
template <class F>
inline auto for_cell(CellKind kind, const F& f) -> decltype(f.template run<LstmCell>()) {
  switch (kind) {
#define RNNFAST_RUN_CASE(KIND, CELL) \
  case CellKind::KIND:               \
    return f.template run<CELL>();
    RNNFAST_CELLS(RNNFAST_RUN_CASE)
#undef RNNFAST_RUN_CASE
  }
  return f.template run<LstmCell>();  // unreachable for a valid kind; callers check the kind first
}

// Calls f(CellTag<Cell>{}) for every cell, in list order (compile-time enumeration: the op
// registrations and schemas are built from it).
template <class Cell>
struct CellTag {
  using type = Cell;
};
template <class F>
inline void for_each_cell(const F& f) {
#define RNNFAST_VISIT(KIND, CELL) f(CellTag<CELL>{});
  RNNFAST_CELLS(RNNFAST_VISIT)
#undef RNNFAST_VISIT
}

// The cell an op's `option` selects when false (GruCell::Alternative), void for a cell without one.
template <class Cell, class = void>
struct AlternativeOf {
  using type = void;
};
template <class Cell>
struct AlternativeOf<Cell, std::void_t<typename Cell::Alternative>> {
  using type = typename Cell::Alternative;
};
template <class Cell>
constexpr bool has_option() {
  return !std::is_void<typename AlternativeOf<Cell>::type>::value;
}

// Whether the cell has ops of its own (<name>_forward, <name>_backward): every cell but another's
// Alternative, which runs through that cell's ops.
template <class Cell>
constexpr bool has_own_op() {
#define RNNFAST_IS_ALTERNATIVE_OF(KIND, CELL) std::is_same<Cell, typename AlternativeOf<CELL>::type>::value ||
  return !(RNNFAST_CELLS(RNNFAST_IS_ALTERNATIVE_OF) false);
#undef RNNFAST_IS_ALTERNATIVE_OF
}

// Sanity of every definition, at compile time (tests/test_core_cells.py checks the slot counts
// against the workspace widths the Python layer allocates).
template <class Cell>
constexpr bool traits_consistent() {
  constexpr CellTraits t = Cell::traits;
  return t.slots == Cell::kNumSlots && t.phases >= 1 && t.phases <= 2 && t.phase0_gates <= t.gates &&
         (t.phases == 2) == (t.gemm_slot >= 0) && t.gemm_slot < t.slots && t.state_slot < t.slots &&
         t.inner_bias_gate < t.gates;
}
constexpr bool same_name(const char* a, const char* b) {
  while (*a != '\0' && *a == *b) ++a, ++b;
  return *a == *b;
}
template <class Cell>
constexpr bool option_consistent() {  // the alternative shares the op: same name, gates, state
  using A = typename AlternativeOf<Cell>::type;
  if constexpr (std::is_void<A>::value) {
    return true;
  } else {
    return !has_option<A>() && same_name(A::name, Cell::name) && A::traits.gates == Cell::traits.gates &&
           A::traits.has_cell_state() == Cell::traits.has_cell_state();
  }
}
#define RNNFAST_CHECK_CELL(KIND, CELL)                                                                 \
  static_assert(CELL::kind == CellKind::KIND, #CELL "::kind is not its RNNFAST_CELLS entry");          \
  static_assert(traits_consistent<CELL>(), #CELL "::traits are inconsistent");                        \
  static_assert(option_consistent<CELL>(), #CELL "::Alternative does not share its op");              \
  static_assert(!(has_option<CELL>() && CELL::traits.has_cell_state()),                                \
                #CELL ": an option on a cell-state op needs its own entry points and schema templates");
RNNFAST_CELLS(RNNFAST_CHECK_CELL)
#undef RNNFAST_CHECK_CELL

}  // namespace core
}  // namespace rnnfast
