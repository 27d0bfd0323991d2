// Sixteen float lanes in one AVX-512 register, with the arithmetic the cells use (core/cells.h) and
// the activations written with the instructions AVX-512 has for them. Included only by
// rows_avx512.cpp, which compiles it for AVX-512F; nothing else may include it.
//
// Why: the portable activations (fastmath.h) are plain float code that gcc vectorizes inside `omp
// simd` loops. That code has no way to say "clamp" or "scale by 2^n" but with integer compares,
// blends and exponent arithmetic: ~33 vector instructions per sigmoid, and the pointwise pass is
// bound by the two AVX-512 ports (measured: 0.51 ns per sigmoid, 0.42 of it the exp). Here the
// clamp is vmaxps/vminps (2 instructions, NaN kept by the operand order), 2^n is vscalefps (1, exact,
// overflow to inf and underflow to 0 built in) and exp(-x) folds the negation into the polynomial's
// signs: 0.38 ns per sigmoid.
//
// The arithmetic is fastmath.h's, operation for operation (the same Cody–Waite reduction, the same
// degree-7 Taylor polynomial, the same tanh forms and saturation points): only how 2^n is applied
// and how the clamp is spelled differ, and both are exact, so results are those of the portable
// path up to the FMA contraction gcc chose there (tests/test_vector_rows.py compares the two).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "fastmath.h"  // RNNFAST_ALWAYS_INLINE

namespace rnnfast {
namespace cpu {
namespace avx512 {

struct Vf {
  __m512 v;
  Vf() = default;
  Vf(__m512 x) : v(x) {}
  Vf(float s) : v(_mm512_set1_ps(s)) {}  // T(1), T(0) in the cells
};
RNNFAST_ALWAYS_INLINE Vf operator+(Vf a, Vf b) { return _mm512_add_ps(a.v, b.v); }
RNNFAST_ALWAYS_INLINE Vf operator-(Vf a, Vf b) { return _mm512_sub_ps(a.v, b.v); }
RNNFAST_ALWAYS_INLINE Vf operator*(Vf a, Vf b) { return _mm512_mul_ps(a.v, b.v); }
RNNFAST_ALWAYS_INLINE Vf operator/(Vf a, Vf b) { return _mm512_div_ps(a.v, b.v); }
RNNFAST_ALWAYS_INLINE Vf operator-(Vf a) {
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN)));
}

RNNFAST_ALWAYS_INLINE __m512i bits(__m512 x) { return _mm512_castps_si512(x); }

// One Horner step p r + c. Neg: the caller holds s = -r and the step is fnmadd(p, s, c) = -(p s) + c,
// the same product and the same rounding, so the same value as with r itself.
template <bool Neg>
RNNFAST_ALWAYS_INLINE __m512 horner(__m512 p, __m512 r, float c) {
  return Neg ? _mm512_fnmadd_ps(p, r, _mm512_set1_ps(c)) : _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
}

// (e^r - 1) / r by fastmath.h's degree-7 Taylor polynomial (expm1_over_r), Horner; at r = -s when
// Neg (the argument is then s).
template <bool Neg>
RNNFAST_ALWAYS_INLINE __m512 expm1_over_r(__m512 r) {
  constexpr float kCoef[] = {1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f};
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  for (const float c : kCoef) p = horner<Neg>(p, r, c);
  return p;
}

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;            // exact in float (Cody–Waite)
constexpr float kLn2Lo = 1.42860682030941723212e-6f;
// n = round(z) as fastmath.h's reduce_ln2 does it: z + 1.5*2^23 (one rounding, in the FMA that
// forms z) minus 1.5*2^23.
constexpr float kShift = 12582912.f;
RNNFAST_ALWAYS_INLINE __m512 round_nearest(__m512 shifted) { return _mm512_sub_ps(shifted, _mm512_set1_ps(kShift)); }

// sigmoid(x) = 1 / (1 + exp(-x)), exp(-x) as fastmath.h's exp_approx(-x): -x clamped to
// [-86.6, 88.8] (here x to [-88.8, 86.6]; NaN passes: vmaxps/vminps return their second operand
// when either is NaN), -x = n ln2 + r. Above -x = 88.72 the scaling overflows to inf and sigmoid is
// exactly 0, as torch's; sigmoid is exactly 1 where exp(-x) < 2^-24 (1 + e rounds to 1).
RNNFAST_ALWAYS_INLINE Vf sigmoid(Vf xv) {
  __m512 x = _mm512_max_ps(_mm512_set1_ps(-88.8f), xv.v);
  x = _mm512_min_ps(_mm512_set1_ps(86.6f), x);
  const __m512 n = round_nearest(_mm512_fmadd_ps(x, _mm512_set1_ps(-kLog2e), _mm512_set1_ps(kShift)));  // round(-x log2e)
  // s = -r = x + n ln2 (the negation of fastmath's (-x - n ln2_hi) - n ln2_lo, exactly)
  __m512 s = _mm512_fmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  s = _mm512_fmadd_ps(n, _mm512_set1_ps(kLn2Lo), s);
  const __m512 er = horner<true>(expm1_over_r<true>(s), s, 1.f);  // e^r = p r + 1
  const __m512 e = _mm512_scalef_ps(er, n);                                          // e^-x
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, e));
}

// tanh as fastmath.h's tanh_approx: em = e^{2|x|} - 1 with |x| clamped at 10, tanh(|x|) = em/(em+2)
// below |x| = 0.55 and 1 - 2/(em+2) above, exactly 1 from |x| = 9.0108404 (torch's first float
// tanh of 1), the sign put back; NaN passes.
RNNFAST_ALWAYS_INLINE Vf tanh(Vf xv) {
  const __m512i xb = bits(xv.v);
  const __m512i ab = _mm512_and_si512(xb, _mm512_set1_epi32(0x7fffffff));
  const __m512 a = _mm512_min_ps(_mm512_set1_ps(10.f), _mm512_castsi512_ps(ab));
  const __m512 y = _mm512_add_ps(a, a);
  const __m512 n = round_nearest(_mm512_fmadd_ps(y, _mm512_set1_ps(kLog2e), _mm512_set1_ps(kShift)));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), y);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  const __m512 q = _mm512_mul_ps(expm1_over_r<false>(r), r);                  // e^r - 1
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 scale = _mm512_scalef_ps(one, n);                       // 2^n, n in [0, 29]
  const __m512 em = _mm512_fmadd_ps(scale, q, _mm512_sub_ps(scale, one));
  const __m512 d = _mm512_div_ps(one, _mm512_add_ps(em, _mm512_set1_ps(2.f)));
  const __m512 small = _mm512_mul_ps(em, d);
  const __m512 large = _mm512_fnmadd_ps(_mm512_set1_ps(2.f), d, one);
  const __mmask16 is_small = _mm512_cmplt_epi32_mask(ab, _mm512_set1_epi32(0x3f0ccccd));  // 0.55f
  __m512 t = _mm512_mask_blend_ps(is_small, large, small);
  const __mmask16 saturated = _mm512_cmpge_epi32_mask(ab, _mm512_set1_epi32(0x41102c67)) &
                              _mm512_cmple_epi32_mask(ab, _mm512_set1_epi32(0x7f800000));
  t = _mm512_mask_blend_ps(saturated, t, one);
  // tanh is odd: put x's sign back
  return _mm512_castsi512_ps(
      _mm512_or_si512(bits(t), _mm512_and_si512(xb, _mm512_set1_epi32(INT32_MIN))));
}

// The activations as a cell's accessor offers them (core/cells.h `Math`).
struct VecMath {
  RNNFAST_ALWAYS_INLINE static Vf sigmoid(Vf x) { return avx512::sigmoid(x); }
  RNNFAST_ALWAYS_INLINE static Vf tanh(Vf x) { return avx512::tanh(x); }
};


}  // namespace avx512
}  // namespace cpu
}  // namespace rnnfast
