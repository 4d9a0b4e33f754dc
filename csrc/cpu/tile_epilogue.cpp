#include "tile_epilogue.h"

#include "../uniform_math.h"

#include <cmath>
#include <cstring>
#include <limits>

// One clone per ISA, selected by the loader (ifunc): the extension is built for the
// baseline x86-64 but the exp loop is worth AVX2/AVX-512 where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYHS_MULTIVERSION \
  __attribute__((target_clones("default", "arch=haswell", "arch=skylake-avx512")))
#else
#define PYHS_MULTIVERSION
#endif
#define PYHS_INLINE inline __attribute__((always_inline))

namespace pyhypersphere {
namespace cpu {
namespace {

// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial
// (truncation < 6e-9 relative, below float's half-ulp) and 2^n built in the exponent
// bits.  Plain arithmetic, so the compiler vectorizes the loops that use it.  Inputs
// are clamped to [-87, 88]: e^-87 ~ 1.6e-38 is negligible next to the shifted weights
// (which are ~1 at the shift) and keeps 2^n a normal float.
PYHS_INLINE float exp_fast_inline(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + round_magic) - round_magic;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

PYHS_INLINE float exp_of(float x) { return exp_fast_inline(x); }
PYHS_INLINE double exp_of(double x) { return std::exp(x); }

// Max exponent over columns [j0, j1) of one row.
template <typename T>
PYHS_INLINE T row_max_exponent(const T* g, const T* sq_b, T t, T sq_i, int64_t j0, int64_t j1) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = j0; j < j1; ++j) {
    const T e = math::pair_exponent(t, sq_i, sq_b[j], g[j]);
    m = e > m ? e : m;
  }
  return m;
}

// Weights over columns [j0, j1) of one row; adds the row sum to *sum, the columns'
// to col_sum (if any), returns the max exponent.  omp simd lets the compiler split the
// reductions into vector lanes (a fixed order per ISA: reproducible on one machine).
template <typename T, bool kColSums>
PYHS_INLINE T row_weights(T* g, const T* sq_b, T t, T sq_i, T shift, T* col_sum, T* sum,
                          int64_t j0, int64_t j1) {
  T m = -std::numeric_limits<T>::infinity();
  T s = 0;
#pragma omp simd reduction(max : m) reduction(+ : s)
  for (int64_t j = j0; j < j1; ++j) {
    const T e = math::pair_exponent(t, sq_i, sq_b[j], g[j]);
    const T w = exp_of(e - shift);
    g[j] = w;
    s += w;
    if (kColSums) col_sum[j] += w;
    m = e > m ? e : m;
  }
  *sum += s;
  return m;
}

template <typename T>
PYHS_INLINE T max_exponent_impl(const T* tile, int64_t rows, int64_t cols, int64_t ld,
                                const T* sq_a, const T* sq_b, T t, bool diagonal) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < rows; ++i) {
    const T* g = tile + i * ld;
    T r = diagonal ? row_max_exponent(g, sq_b, t, sq_a[i], 0, i)
                   : -std::numeric_limits<T>::infinity();
    const T rest = row_max_exponent(g, sq_b, t, sq_a[i], diagonal ? i + 1 : 0, cols);
    r = rest > r ? rest : r;
    m = r > m ? r : m;
  }
  return m;
}

template <typename T, bool kColSums>
PYHS_INLINE T weights_impl(T* tile, int64_t rows, int64_t cols, int64_t ld, const T* sq_a,
                           const T* sq_b, T t, T shift, T* row_sum, T* col_sum, bool diagonal) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < rows; ++i) {
    T* g = tile + i * ld;
    T sum = 0, r;
    if (diagonal) {
      r = row_weights<T, kColSums>(g, sq_b, t, sq_a[i], shift, col_sum, &sum, 0, i);
      const T rest = row_weights<T, kColSums>(g, sq_b, t, sq_a[i], shift, col_sum, &sum, i + 1, cols);
      r = rest > r ? rest : r;
      g[i] = 0;
    } else {
      r = row_weights<T, kColSums>(g, sq_b, t, sq_a[i], shift, col_sum, &sum, 0, cols);
    }
    row_sum[i] += sum;
    m = r > m ? r : m;
  }
  return m;
}

template <typename T>
PYHS_INLINE T weights_dispatch(T* tile, int64_t rows, int64_t cols, int64_t ld, const T* sq_a,
                               const T* sq_b, T t, T shift, T* row_sum, T* col_sum,
                               bool diagonal) {
  return col_sum != nullptr
             ? weights_impl<T, true>(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum, diagonal)
             : weights_impl<T, false>(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, nullptr, diagonal);
}

}  // namespace

PYHS_MULTIVERSION float tile_max_exponent(const float* tile, int64_t rows, int64_t cols,
                                          int64_t ld, const float* sq_a, const float* sq_b,
                                          float t, bool diagonal) {
  return max_exponent_impl(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
}

double tile_max_exponent(const double* tile, int64_t rows, int64_t cols, int64_t ld,
                         const double* sq_a, const double* sq_b, double t, bool diagonal) {
  return max_exponent_impl(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
}

PYHS_MULTIVERSION float tile_weights(float* tile, int64_t rows, int64_t cols, int64_t ld,
                                     const float* sq_a, const float* sq_b, float t, float shift,
                                     float* row_sum, float* col_sum, bool diagonal) {
  return weights_dispatch(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum, diagonal);
}

double tile_weights(double* tile, int64_t rows, int64_t cols, int64_t ld, const double* sq_a,
                    const double* sq_b, double t, double shift, double* row_sum, double* col_sum,
                    bool diagonal) {
  return weights_dispatch(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum, diagonal);
}

float exp_fast(float x) { return exp_fast_inline(x); }

}  // namespace cpu
}  // namespace pyhypersphere
