// The AVX-512 forward row pass (rows_avx512.h): the cells of core/cells.h run on 16-lane vectors
// (vec512.h) through an accessor that loads and stores whole vectors, blocked as rows.h's
// forward_row (one activation loop per gate into a stack block, then the cell).
//
// Everything after RNNFAST_BEGIN_AVX512 (`#pragma GCC target`, isa.h) is compiled for AVX-512F;
// only this file and gemm_avx512.cpp are, and this one is entered only after vector_rows() said the
// CPU has it. The standard headers are included before
// the pragma, so no out-of-line copy of a library function is compiled for AVX-512 here; what this
// file instantiates from rows.h and cells.h is force-inlined or instantiated only here (on the
// vector accessor), so no AVX-512 copy of a function other files also use can reach the link.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <immintrin.h>

#include "isa.h"  // RNNFAST_GCC_X86, decided before rows_avx512.h is read (it is read for AVX-512)

#if RNNFAST_GCC_X86
// From here on everything is compiled for AVX-512F, the cells (core/cells.h, through rows.h) too:
// gcc inlines a function only into one compiled for a superset of its ISA, so the cells' forward
// functions must be AVX-512 functions here to take the vector accessor's inlined intrinsics.
RNNFAST_BEGIN_AVX512

#include "rows_avx512.h"
#include "vec512.h"

namespace rnnfast {
namespace cpu {

namespace {

using avx512::Vf;

// core/cells.h's forward accessor for units [j, j + 16) of a row (lanes outside `m` neither loaded
// nor stored), in phase P. Keep = false stores only the state slot, as rows.h's ForwardUnit.
template <class Cell, int P, bool Keep>
struct VecUnit {
  using value_type = Vf;
  using Math = avx512::VecMath;
  static constexpr int kFirstGate = kPhaseFirstGate<Cell, P>;
  const FwdRow<float>& r;
  const int64_t H, j;
  const __mmask16 m;

  RNNFAST_ALWAYS_INLINE Vf load(const float* p) const { return _mm512_maskz_loadu_ps(m, p + j); }
  RNNFAST_ALWAYS_INLINE void store(float* p, Vf v) const { _mm512_mask_storeu_ps(p + j, m, v.v); }

  RNNFAST_ALWAYS_INLINE Vf x(int g) const { return load(r.xg + g * H) + load(r.bias + g * H); }
  RNNFAST_ALWAYS_INLINE Vf h(int g) const {
    const Vf v = load(r.hg + (g - kFirstGate) * H);
    return g == Cell::traits.inner_bias_gate ? v + load(r.b_hn) : v;
  }
  RNNFAST_ALWAYS_INLINE Vf activated(int g) const { return core::activate<Math>(Cell::act(g), x(g) + h(g)); }
  RNNFAST_ALWAYS_INLINE Vf h_prev() const { return load(r.h); }
  RNNFAST_ALWAYS_INLINE Vf c_prev() const { return load(r.c); }
  RNNFAST_ALWAYS_INLINE Vf saved(int k) const { return load(r.ws + k * H); }
  RNNFAST_ALWAYS_INLINE void save(int k, Vf v) const {
    static_assert(Keep || Cell::traits.phases == 1, "a two-phase cell reads its saved slots within the step");
    if (Keep || k == Cell::traits.state_slot) store(r.ws + k * H, v);
  }
  RNNFAST_ALWAYS_INLINE void set_h(Vf v) const { store(r.h_out, v); }
};

// The combine step's accessor: activated(g) reads what the activation pass stored.
template <class Cell, int P, bool Keep>
struct VecPreActivatedUnit : VecUnit<Cell, P, Keep> {
  const float* act;  // gate g of these units at act[(g - first gate of P) * kActBlock]
  RNNFAST_ALWAYS_INLINE Vf activated(int g) const {
    return _mm512_maskz_loadu_ps(this->m, act + (g - kPhaseFirstGate<Cell, P>) * kActBlock);
  }
};

RNNFAST_ALWAYS_INLINE __mmask16 lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
}

// One activation pass: gates G.. of phase P with an activation of their own, over units
// [j0, j0 + n), into act (rows.h activate_gates, on vectors).
template <class Cell, int P, bool Keep, int G>
RNNFAST_ALWAYS_INLINE void activate_gates_vec(const FwdRow<float>& r, int64_t H, int64_t j0, int64_t n, float* act) {
  if constexpr (G < kPhaseEndGate<Cell, P>) {
    if constexpr (Cell::act(G) != core::Act::none) {
      float* out = act + (G - kPhaseFirstGate<Cell, P>) * kActBlock;
      for (int64_t i = 0; i < n; i += 16) {
        const VecUnit<Cell, P, Keep> s{r, H, j0 + i, lanes(n - i)};
        _mm512_store_ps(out + i, s.activated(G).v);
      }
    }
    activate_gates_vec<Cell, P, Keep, G + 1>(r, H, j0, n, act);
  }
}

// Phase P over the H units of a row. As rows.h's forward_row: with two or more gates that have an
// activation of their own, blocks of kActBlock units go through one pass per such gate first and
// then the cell (all four LSTM activations of a vector in one body measured no faster at H = 64
// and 2-3% slower at H = 256); else the cell runs on each vector directly.
template <class Cell, int P, bool Keep>
void row_pass(const FwdRow<float>& r, int64_t H) {
  if constexpr (activated_gates<Cell, P>() >= 2) {
    for_activation_blocks<Cell, P, float>(H, [&](int64_t j0, int64_t n, float* act) RNNFAST_ALWAYS_INLINE_LAMBDA {
      activate_gates_vec<Cell, P, Keep, kPhaseFirstGate<Cell, P>>(r, H, j0, n, act);
      for (int64_t i = 0; i < n; i += 16) {
        VecPreActivatedUnit<Cell, P, Keep> s{{r, H, j0 + i, lanes(n - i)}, act + i};
        Cell::forward(s, core::Phase<P>{});
      }
    });
  } else {
    for (int64_t j = 0; j < H; j += 16) {
      VecUnit<Cell, P, Keep> s{r, H, j, lanes(H - j)};
      Cell::forward(s, core::Phase<P>{});
    }
  }
}

// The row pass of the cell for_cell() maps `kind` to: phase 0 or 1 of a two-phase cell (always
// keeping its workspace), or a one-phase cell keeping its workspace or not.
struct RowPass {
  int phase;
  bool keep;
  const FwdRow<float>& r;
  int64_t H;
  template <class Cell>
  void run() const {
    if constexpr (!kVectorRowCell<Cell>) {
      return;  // never called for such a cell (backend.h checks kVectorRowCell first)
    } else if constexpr (Cell::traits.phases == 2) {
      phase == 0 ? row_pass<Cell, 0, true>(r, H) : row_pass<Cell, 1, true>(r, H);
    } else {
      keep ? row_pass<Cell, 0, true>(r, H) : row_pass<Cell, 0, false>(r, H);
    }
  }
};

}  // namespace

void forward_row_avx512(core::CellKind kind, int phase, bool keep, const FwdRow<float>& r, int64_t H) {
  core::for_cell(kind, RowPass{phase, keep, r, H});
}

}  // namespace cpu
}  // namespace rnnfast

RNNFAST_END_AVX512
#endif  // RNNFAST_GCC_X86
