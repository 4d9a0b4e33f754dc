// Building blocks of the CPU tile epilogues (tile_epilogue.cpp, logit_epilogue.cpp):
// a vectorizable float exp and explicit 16-lane float vectors.
//
// Everything here is always_inline: the epilogues are compiled once per x86 ISA level
// (cpu_isa.h), and GCC inlines a function into a clone with other target options only
// when it is always_inline; a call per element would stop the vectorization.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define PYHS_INLINE inline __attribute__((always_inline))

namespace pyhypersphere {
namespace cpu {
namespace vec {

// exp for the float tiles.  Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7
// Taylor polynomial (truncation < 6e-9 relative, below float's half-ulp) and 2^n built
// in the exponent bits.  For x <= 88 (the kernels pass x <= 0); inputs below -87 are
// clamped: e^-87 ~ 1.6e-38 is negligible next to the shifted weights (the largest is 1)
// and keeps 2^n a normal float.  Written for a scalar or a GCC vector of 16 floats.
template <typename F, typename I>
PYHS_INLINE F exp_fast_generic(F x) {
  const F lowest = F{} + -87.0f;
  x = x > lowest ? x : lowest;
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const F n = (x * 1.44269504088896341f + round_magic) - round_magic;
  const F r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  F p = F{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  I bits;
  if constexpr (std::is_same_v<F, float>) {
    bits = (static_cast<int32_t>(n) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(n, I) + 127) << 23;
  }
  F scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// The epilogues' exp: the polynomial for float, std::exp for double (accuracy first).
PYHS_INLINE float exp_of(float x) { return exp_fast_generic<float, int32_t>(x); }
PYHS_INLINE double exp_of(double x) { return std::exp(x); }

// The float rows in explicit 16-lane vectors (GCC vector extensions, lowered to one
// AVX-512, two AVX2 or four SSE registers by the function's target): the loops do not
// depend on the auto-vectorizer's if-conversion, and the lanes are summed in a fixed
// order, so results are reproducible.  Tails go through scalar loops.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

PYHS_INLINE f32x16 exp16(f32x16 x) { return exp_fast_generic<f32x16, i32x16>(x); }
PYHS_INLINE f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
PYHS_INLINE void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof(v)); }
PYHS_INLINE float max_lanes(f32x16 v) {
  float m = v[0];
  for (int l = 1; l < kLanes; ++l) m = v[l] > m ? v[l] : m;
  return m;
}
PYHS_INLINE float sum_lanes(f32x16 v) {
  float s = 0;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

}  // namespace vec
}  // namespace cpu
}  // namespace pyhypersphere
