// exp, sigmoid and tanh that gcc vectorizes inside `#pragma omp simd` loops (glibc's expf/tanhf
// are scalar calls; tanhf goes through expm1f and dominated the pointwise passes).
//
// float: exp by range reduction x = n ln2 + r, |r| <= ln2/2, and a degree-7 Taylor polynomial
// (truncation < 6e-9 relative), scaled by 2^n through the exponent bits; tanh from em = e^{2|x|} - 1
// (the same reduction, a polynomial without constant term: no cancellation near 0) as em/(em + 2)
// below |x| = 0.55 and 1 - 2/(em + 2) above: one exp-like evaluation and one division (it was an
// odd degree-19 Taylor polynomial plus exp and division, both evaluated for every lane; the LSTM's
// pointwise pass measured ~13% cheaper against its GEMMs). Checked against double-precision
// std::exp/std::tanh: max relative error 2.44e-7 for tanh (every 97th float with |x| <= 100, 23M
// values; the previous tanh: 1.8e-7 on every 16th), 1.6e-7 for sigmoid 1/(1+exp(-x)), i.e. a few
// ulp, well inside the 1e-6 budget. NaN propagates.
// Saturation is exact, as torch's: tanh is exactly +-1 from |x| = 9.0108404 (torch's first float
// tanh of 1; blended, not left to rounding), sigmoid exactly 1 for
// x > 16.6 and exactly 0 for x < -88.72 (tests/test_edges.py checks both against torch).
// tests/test_ops_cpu.py::test_fast_math_accuracy_through_ops re-checks it through the ops (with
// whatever ISA clone the CPU selects: AVX-512/AVX2 clones contract to FMA, which only helps).
// double: the same forms in double precision (the double overloads below): a degree-13
// polynomial for e^r, 2^n through the exponent bits with only 64-bit integer adds and shifts (so
// AVX2 vectorizes it too; glibc's exp and tanh are scalar calls, and they made the float64 LSTM
// 0.53x torch.nn at H = 64, B = 64). Within 2 ulp of the exact value on the values
// tests/test_double_math.py sweeps (against 50-digit mpmath; torch's own float64 tanh is within 1,
// its sigmoid 2), exact saturation (tanh exactly +-1 from the first double whose tanh rounds to 1),
// NaN and inf as std::exp / std::tanh. The bit helpers are overloaded for both widths.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "isa.h"  // RNNFAST_ALWAYS_INLINE: everything the pointwise loops call is force-inlined

namespace rnnfast {
namespace cpu {

// Bit views of a float. Every branch below is a bitwise blend under an integer mask: with the
// default -ftrapping-math gcc turns `c ? a : b` on floats into real branches (sinking the float
// work into them) and then refuses to vectorize the loop; masks keep the code straight-line.
RNNFAST_ALWAYS_INLINE int32_t bits_of(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
RNNFAST_ALWAYS_INLINE float float_of(int32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}
constexpr int32_t kSign = INT32_MIN;
constexpr int32_t kMagnitude = 0x7fffffff;
constexpr int32_t kInfBits = 0x7f800000;

// all ones where `cond`, else zero (Bits: the float's or the double's integer)
template <typename Bits = int32_t>
RNNFAST_ALWAYS_INLINE Bits mask_of(bool cond) {
  return -static_cast<Bits>(cond);
}
template <typename Bits>
RNNFAST_ALWAYS_INLINE Bits blend(Bits mask, Bits if_set, Bits if_clear) {
  return (mask & if_set) | (~mask & if_clear);
}

// |x| clamped to `limit` (given as bits of a positive value); NaN passes through unchanged.
template <typename Bits>
RNNFAST_ALWAYS_INLINE Bits clamp_magnitude(Bits abs_bits, Bits limit, Bits inf_bits) {
  return blend(mask_of<Bits>((abs_bits > limit) & (abs_bits <= inf_bits)), limit, abs_bits);
}
RNNFAST_ALWAYS_INLINE int32_t clamp_magnitude(int32_t abs_bits, int32_t limit) {
  return clamp_magnitude(abs_bits, limit, kInfBits);
}

// The range reduction both exp_approx and expm1_nonneg use: x = n ln2 + r, |r| <= ln2/2.
struct Ln2Reduced {
  float n, r;
};
RNNFAST_ALWAYS_INLINE Ln2Reduced reduce_ln2(float x) {
  // round to nearest by adding and removing 1.5*2^23 (vectorizes on plain SSE2, nearbyint does not)
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  // Cody–Waite: ln2 split in a part exact in float and the remainder
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  return {n, r};
}

// (e^r - 1) / r by the degree-7 Taylor polynomial: 1 + r/2! + ... + r^6/7!, Horner.
RNNFAST_ALWAYS_INLINE float expm1_over_r(float r) {
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  return p * r + 1.f;
}

RNNFAST_ALWAYS_INLINE float exp_approx(float x) {
  // x is clamped to [-86.6, 88.8]. Below, the result stays at exp(-86.6) ~ 2.3e-38 (the callers
  // only ever add it to 1). Above 88.72 the true exp overflows and so does this one, to +inf (2^n
  // is applied as 2^(n-1) * 2, n reaching 128 there): sigmoid(x) = 1/(1+exp(-x)) is then exactly 0
  // for x < -88.72 and a correctly tiny (subnormal) value just above, as torch's sigmoid.
  const int32_t xb = bits_of(x);
  const int32_t limit = blend(mask_of(xb < 0), 0x42ad3333 /* 86.6f */, 0x42b1999a /* 88.8f */);
  x = float_of((xb & kSign) | clamp_magnitude(xb & kMagnitude, limit));
  const Ln2Reduced red = reduce_ln2(x);
  const float p = expm1_over_r(red.r) * red.r + 1.f;  // e^r
  return (p * float_of((static_cast<int32_t>(red.n) + 126) << 23)) * 2.f;
}

// e^y - 1 for y in [0, 20] (the caller clamps; NaN passes through): y = n ln2 + r, |r| <= ln2/2,
// e^y - 1 = 2^n q + (2^n - 1) with q = e^r - 1 = r + r^2/2! + ... + r^7/7! (truncation < 2e-8
// relative to q). No constant term in q: for small y (n = 0) the result is q itself, with no
// cancellation, so tanh keeps its relative accuracy near 0 without a separate polynomial.
RNNFAST_ALWAYS_INLINE float expm1_nonneg(float y) {
  const Ln2Reduced red = reduce_ln2(y);
  const float q = expm1_over_r(red.r) * red.r;                                // e^r - 1
  const float scale = float_of((static_cast<int32_t>(red.n) + 127) << 23);  // 2^n, n in [0, 29]
  return scale * q + (scale - 1.f);
}

// tanh(|x|) = em / (em + 2) = 1 - 2 / (em + 2), em = e^{2|x|} - 1: one exp-like evaluation and one
// division for every x (the quotient form below 0.55, where 1 - 2/(em+2) would cancel; the
// difference form above), exactly 1 where torch's float tanh is.
RNNFAST_ALWAYS_INLINE float tanh_approx(float x) {
  const int32_t xb = bits_of(x);
  const int32_t ab = xb & kMagnitude;
  // |x| clamped at 10 (well past saturation: keeps em finite); NaN passes through
  const float a = float_of(clamp_magnitude(ab, 0x41200000 /* 10.f */));
  const float em = expm1_nonneg(2.f * a);
  const float d = 1.f / (em + 2.f);
  const float small = em * d;
  const float large = 1.f - 2.f * d;
  int32_t y = blend(mask_of(ab < 0x3f0ccccd /* 0.55f */), bits_of(small), bits_of(large));
  // exactly 1 from the first float where torch's float tanh is 1 (9.0108404; below it, torch's and
  // this one are 1 - 2^-24 or less)
  y = blend(mask_of((ab >= 0x41102c67) & (ab <= kInfBits)), 0x3f800000, y);
  return float_of(y | (xb & kSign));  // tanh is odd
}

// ---- double ----------------------------------------------------------------------------------
RNNFAST_ALWAYS_INLINE int64_t bits_of(double x) {
  int64_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
RNNFAST_ALWAYS_INLINE double double_of(int64_t i) {
  double x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}
constexpr int64_t kSign64 = INT64_MIN;
constexpr int64_t kMagnitude64 = INT64_MAX;
constexpr int64_t kInfBits64 = 0x7ff0000000000000;
constexpr int64_t kTanhOneBits64 = 0x40330fc1931f09ca;  // 19.061547465398498
RNNFAST_ALWAYS_INLINE int64_t clamp_magnitude(int64_t abs_bits, int64_t limit) {
  return clamp_magnitude(abs_bits, limit, kInfBits64);
}

// x = n ln2 + r, |r| <= ln2/2, n as an integer: rounded by adding and removing 1.5 * 2^52, whose
// low mantissa bits then hold n (no double -> int64 conversion, which AVX2 lacks).
struct Ln2ReducedD {
  double r;
  int64_t n;
};
RNNFAST_ALWAYS_INLINE Ln2ReducedD reduce_ln2(double x) {
  constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52
  const double k = x * 1.4426950408889634074 + kShifter;
  const double n = k - kShifter;
  // Cody–Waite: ln2's leading bits (exact times any |n| < 2^20) and the remainder
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  return {r, bits_of(k) - bits_of(kShifter)};
}

// (e^r - 1) / r for |r| <= ln2/2: the Taylor polynomial 1 + r/2! + ... + r^12/13! (truncation
// below 2e-17 relative), Horner.
RNNFAST_ALWAYS_INLINE double expm1_over_r(double r) {
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  return p * r + 1.0;
}

RNNFAST_ALWAYS_INLINE double exp_approx(double x) {
  // x clamped to [-708, 709.9]: below, the result stays at e^-708 ~ 3.3e-308 (the callers only add
  // it to 1); above 709.78 the true exp overflows and so does this one (2^n applied as 2^(n-1) * 2,
  // n reaching 1024).
  const int64_t xb = bits_of(x);
  const int64_t limit = blend<int64_t>(mask_of<int64_t>(xb < 0), 0x4086200000000000 /* 708.0 */,
                                       0x40862f3333333333 /* 709.9 */);
  x = double_of((xb & kSign64) | clamp_magnitude(xb & kMagnitude64, limit));
  const Ln2ReducedD red = reduce_ln2(x);
  const double p = expm1_over_r(red.r) * red.r + 1.0;  // e^r
  return (p * double_of((red.n + 1022) << 52)) * 2.0;
}

// e^y - 1 for y in [0, 40] (NaN passes through): 2^n q + (2^n - 1), q = e^r - 1 (no constant term:
// relative accuracy near 0).
RNNFAST_ALWAYS_INLINE double expm1_nonneg(double y) {
  const Ln2ReducedD red = reduce_ln2(y);
  const double q = expm1_over_r(red.r) * red.r;
  const double scale = double_of((red.n + 1023) << 52);  // 2^n, n in [0, 58]
  return scale * q + (scale - 1.0);
}

// tanh as tanh_approx: em / (em + 2) below |x| = 0.55, 1 - 2 / (em + 2) above, em = e^{2|x|} - 1;
// exactly 1 from |x| = 19.06154746539849 (the first double whose tanh rounds to 1).
RNNFAST_ALWAYS_INLINE double tanh_approx(double x) {
  const int64_t xb = bits_of(x);
  const int64_t ab = xb & kMagnitude64;
  const double a = double_of(clamp_magnitude(ab, int64_t(0x4034000000000000) /* 20.0 */));
  const double em = expm1_nonneg(2.0 * a);
  const double d = 1.0 / (em + 2.0);
  const double small = em * d;
  const double large = 1.0 - 2.0 * d;
  int64_t y = blend<int64_t>(mask_of<int64_t>(ab < 0x3fe199999999999a /* 0.55 */), bits_of(small), bits_of(large));
  y = blend<int64_t>(mask_of<int64_t>((ab >= kTanhOneBits64) & (ab <= kInfBits64)), 0x3ff0000000000000, y);
  return double_of(y | (xb & kSign64));
}

// The activations' entry points (rows.h), float and double.
RNNFAST_ALWAYS_INLINE float fast_exp(float x) { return exp_approx(x); }
RNNFAST_ALWAYS_INLINE double fast_exp(double x) { return exp_approx(x); }
RNNFAST_ALWAYS_INLINE float fast_tanh(float x) { return tanh_approx(x); }
RNNFAST_ALWAYS_INLINE double fast_tanh(double x) { return tanh_approx(x); }

}  // namespace cpu
}  // namespace rnnfast
