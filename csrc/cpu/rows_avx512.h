// The forward row pass written with AVX-512 vectors (rows_avx512.cpp, vec512.h): float32, every
// cell with an activated gate (all but the ReLU RNN). Chosen per call at run time, when
// the CPU has AVX-512F; everything else runs the portable row loops (rows.h), compiled for
// AVX-512, AVX2 and the baseline ISA.
#pragma once
#include <cstdint>

#include "isa.h"
#include "rows.h"

#define RNNFAST_VECTOR_ROWS RNNFAST_GCC_X86

namespace rnnfast {
namespace cpu {

// Whether the path runs: isa.h vector_rows() / set_vector_rows().

// The cells the vector path runs: those with an activated gate (Cell::act), which is what it speeds
// up. The one without (the ReLU RNN) selects with `a < 0 ? 0 : a`, which a vector type cannot spell.
template <class Cell>
constexpr bool kVectorRowCell = activated_gates<Cell, 0>() > 0;

// Phase `phase` of the forward of cell `kind` over the H units of one row, 16 units per AVX-512
// vector (a masked vector for the last H mod 16); keep = false: an inference call of a one-phase
// cell (rows.h ForwardUnit's Keep). Only after vector_rows() said yes; defined only where
// RNNFAST_VECTOR_ROWS (callers branch on it at compile time).
void forward_row_avx512(core::CellKind kind, int phase, bool keep, const FwdRow<float>& r, int64_t H);

}  // namespace cpu
}  // namespace rnnfast
