#include "tile_epilogue.h"

#include "../uniform_math.h"
#include "cpu_isa.h"
#include "float_vec.h"

#include <cmath>
#include <limits>
#include <type_traits>

namespace pyhypersphere {
namespace cpu {
namespace {

using vec::exp_of;
using vec::f32x16;
using vec::kLanes;
using vec::load16;
using vec::max_lanes;
using vec::store16;
using vec::sum_lanes;


// Max exponent over columns [j0, j1) of one row.
template <typename T>
PYHS_INLINE T row_max_exponent(const T* g, const T* sq_b, T t, T sq_i, int64_t j0, int64_t j1) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = j0; j < j1; ++j) {
    const T e = math::pair_exponent(t, sq_i, sq_b[j], g[j]);
    m = e > m ? e : m;
  }
  return m;
}

// Weights over columns [j0, j1) of one row; adds the row sum to *sum, the columns'
// to col_sum (if any), returns the max exponent.
template <typename T, bool kColSums>
PYHS_INLINE T row_weights(T* g, const T* sq_b, T t, T sq_i, T shift, T* col_sum, T* sum,
                          int64_t j0, int64_t j1) {
  T m = -std::numeric_limits<T>::infinity();
  T s = 0;
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

template <>
PYHS_INLINE float row_max_exponent<float>(const float* g, const float* sq_b, float t, float sq_i,
                                          int64_t j0, int64_t j1) {
  const f32x16 vt = f32x16{} + t, vsq = f32x16{} + sq_i;
  f32x16 vm = f32x16{} - std::numeric_limits<float>::infinity();
  int64_t j = j0;
  for (; j + kLanes <= j1; j += kLanes) {
    const f32x16 e = math::pair_exponent(vt, vsq, load16(sq_b + j), load16(g + j));
    vm = e > vm ? e : vm;
  }
  const float head = max_lanes(vm);
  float tail = -std::numeric_limits<float>::infinity();
  for (; j < j1; ++j) {
    const float e = math::pair_exponent(t, sq_i, sq_b[j], g[j]);
    tail = e > tail ? e : tail;
  }
  return head > tail ? head : tail;
}

template <bool kColSums>
PYHS_INLINE float row_weights_f32(float* g, const float* sq_b, float t, float sq_i, float shift,
                                  float* col_sum, float* sum, int64_t j0, int64_t j1) {
  const f32x16 vt = f32x16{} + t, vsq = f32x16{} + sq_i, vshift = f32x16{} + shift;
  f32x16 vm = f32x16{} - std::numeric_limits<float>::infinity();
  f32x16 vs = f32x16{};
  int64_t j = j0;
  for (; j + kLanes <= j1; j += kLanes) {
    const f32x16 e = math::pair_exponent(vt, vsq, load16(sq_b + j), load16(g + j));
    const f32x16 w = vec::exp16(e - vshift);
    store16(g + j, w);
    vs += w;
    if (kColSums) store16(col_sum + j, load16(col_sum + j) + w);
    vm = e > vm ? e : vm;
  }
  float s = sum_lanes(vs);
  const float head = max_lanes(vm);
  const float tail = row_weights<float, kColSums>(g, sq_b, t, sq_i, shift, col_sum, &s, j, j1);
  *sum += s;
  return head > tail ? head : tail;
}

// Float rows through the vector loop, double rows through the scalar one.
template <typename T, bool kColSums>
PYHS_INLINE T row_weights_best(T* g, const T* sq_b, T t, T sq_i, T shift, T* col_sum, T* sum,
                               int64_t j0, int64_t j1) {
  if constexpr (std::is_same_v<T, float>) {
    return row_weights_f32<kColSums>(g, sq_b, t, sq_i, shift, col_sum, sum, j0, j1);
  } else {
    return row_weights<T, kColSums>(g, sq_b, t, sq_i, shift, col_sum, sum, j0, j1);
  }
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
      r = row_weights_best<T, kColSums>(g, sq_b, t, sq_a[i], shift, col_sum, &sum, 0, i);
      const T rest = row_weights_best<T, kColSums>(g, sq_b, t, sq_a[i], shift, col_sum, &sum, i + 1, cols);
      r = rest > r ? rest : r;
      g[i] = 0;
    } else {
      r = row_weights_best<T, kColSums>(g, sq_b, t, sq_a[i], shift, col_sum, &sum, 0, cols);
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

// The float loops once per x86 ISA level (cpu_isa.h).
#define PYHS_FLOAT_TILE_FUNCTIONS(suffix, target_attribute)                                   \
  target_attribute float max_exponent_##suffix(const float* tile, int64_t rows, int64_t cols, \
                                               int64_t ld, const float* sq_a,                 \
                                               const float* sq_b, float t, bool diagonal) {  \
    return max_exponent_impl(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);                 \
  }                                                                                           \
  target_attribute float weights_##suffix(float* tile, int64_t rows, int64_t cols, int64_t ld, \
                                          const float* sq_a, const float* sq_b, float t,      \
                                          float shift, float* row_sum, float* col_sum,        \
                                          bool diagonal) {                                    \
    return weights_dispatch(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum,     \
                            diagonal);                                                        \
  }

namespace {
PYHS_FLOAT_TILE_FUNCTIONS(baseline, )
#ifdef PYHS_X86_DISPATCH
PYHS_FLOAT_TILE_FUNCTIONS(avx2, PYHS_TARGET_AVX2)
PYHS_FLOAT_TILE_FUNCTIONS(avx512, PYHS_TARGET_AVX512)
#endif
}  // namespace

float tile_max_exponent(const float* tile, int64_t rows, int64_t cols, int64_t ld,
                        const float* sq_a, const float* sq_b, float t, bool diagonal) {
  switch (float_loop_isa()) {
#ifdef PYHS_X86_DISPATCH
    case Isa::kAvx512: return max_exponent_avx512(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
    case Isa::kAvx2: return max_exponent_avx2(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
#endif
    default: return max_exponent_baseline(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
  }
}

float tile_weights(float* tile, int64_t rows, int64_t cols, int64_t ld, const float* sq_a,
                   const float* sq_b, float t, float shift, float* row_sum, float* col_sum,
                   bool diagonal) {
  switch (float_loop_isa()) {
#ifdef PYHS_X86_DISPATCH
    case Isa::kAvx512:
      return weights_avx512(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum, diagonal);
    case Isa::kAvx2:
      return weights_avx2(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum, diagonal);
#endif
    default:
      return weights_baseline(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum, diagonal);
  }
}

double tile_max_exponent(const double* tile, int64_t rows, int64_t cols, int64_t ld,
                         const double* sq_a, const double* sq_b, double t, bool diagonal) {
  return max_exponent_impl(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
}

double tile_weights(double* tile, int64_t rows, int64_t cols, int64_t ld, const double* sq_a,
                    const double* sq_b, double t, double shift, double* row_sum, double* col_sum,
                    bool diagonal) {
  return weights_dispatch(tile, rows, cols, ld, sq_a, sq_b, t, shift, row_sum, col_sum, diagonal);
}

float exp_fast(float x) { return exp_of(x); }

}  // namespace cpu
}  // namespace pyhypersphere
