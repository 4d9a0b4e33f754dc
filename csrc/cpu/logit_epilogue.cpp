#include "logit_epilogue.h"

#include "cpu_isa.h"
#include "float_vec.h"

#include <cmath>
#include <limits>
#include <type_traits>

namespace pyhypersphere {
namespace cpu {
namespace {

using namespace vec;  // NOLINT: the vector helpers are this file's vocabulary


template <typename T>
constexpr T kMinusInf = -std::numeric_limits<T>::infinity();

// Each *_range function handles columns [j0, j1) of one row: float rows in 16-lane
// vectors then a scalar tail, double rows scalar.

template <typename T, bool kCols>
PYHS_INLINE T max_range(const T* s, T* col_max, int64_t j0, int64_t j1) {
  T m = kMinusInf<T>;
  int64_t j = j0;
  if constexpr (std::is_same_v<T, float>) {
    f32x16 vm = f32x16{} + kMinusInf<float>;
    for (; j + kLanes <= j1; j += kLanes) {
      const f32x16 v = load16(s + j);
      vm = v > vm ? v : vm;
      if (kCols) {
        const f32x16 c = load16(col_max + j);
        store16(col_max + j, v > c ? v : c);
      }
    }
    m = max_lanes(vm);
  }
  for (; j < j1; ++j) {
    const T v = s[j];
    m = v > m ? v : m;
    if (kCols) col_max[j] = v > col_max[j] ? v : col_max[j];
  }
  return m;
}

template <typename T, bool kCols>
PYHS_INLINE T exp_sum_range(const T* s, T row_max, const T* col_max, T* col_sum, int64_t j0,
                            int64_t j1) {
  T sum = 0;
  int64_t j = j0;
  if constexpr (std::is_same_v<T, float>) {
    const f32x16 vr = f32x16{} + row_max;
    f32x16 vs = f32x16{};
    for (; j + kLanes <= j1; j += kLanes) {
      const f32x16 v = load16(s + j);
      vs += exp16(v - vr);
      if (kCols) store16(col_sum + j, load16(col_sum + j) + exp16(v - load16(col_max + j)));
    }
    sum = sum_lanes(vs);
  }
  for (; j < j1; ++j) {
    sum += exp_of(s[j] - row_max);
    if (kCols) col_sum[j] += exp_of(s[j] - col_max[j]);
  }
  return sum;
}

// s_j <- exp(s_j - shift) over [0, cols); returns their sum.
template <typename T>
PYHS_INLINE T exp_store_range(T* s, T shift, int64_t cols) {
  T sum = 0;
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    const f32x16 vr = f32x16{} + shift;
    f32x16 vs = f32x16{};
    for (; j + kLanes <= cols; j += kLanes) {
      const f32x16 e = exp16(load16(s + j) - vr);
      store16(s + j, e);
      vs += e;
    }
    sum = sum_lanes(vs);
  }
  for (; j < cols; ++j) {
    s[j] = exp_of(s[j] - shift);
    sum += s[j];
  }
  return sum;
}

template <typename T>
PYHS_INLINE void scale_range(T* s, T factor, int64_t cols) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    const f32x16 vf = f32x16{} + factor;
    for (; j + kLanes <= cols; j += kLanes) store16(s + j, load16(s + j) * vf);
  }
  for (; j < cols; ++j) s[j] *= factor;
}

template <typename T>
PYHS_INLINE void exp_store_impl(T* tile, int64_t rows, int64_t cols, int64_t ld, const T* row_max,
                                T* row_sum) {
  for (int64_t i = 0; i < rows; ++i) row_sum[i] = exp_store_range(tile + i * ld, row_max[i], cols);
}

template <typename T>
PYHS_INLINE void scale_rows_impl(T* tile, int64_t rows, int64_t cols, int64_t ld, const T* factor) {
  for (int64_t i = 0; i < rows; ++i) scale_range(tile + i * ld, factor[i], cols);
}

template <typename T, bool kCols>
PYHS_INLINE void grad_weight_range(T* s, T lse_i, T g_i, const T* lse_col, const T* g_col,
                                   int64_t j0, int64_t j1) {
  int64_t j = j0;
  if constexpr (std::is_same_v<T, float>) {
    const f32x16 vl = f32x16{} + lse_i, vg = f32x16{} + g_i;
    for (; j + kLanes <= j1; j += kLanes) {
      const f32x16 v = load16(s + j);
      f32x16 w = vg * exp16(v - vl);
      if (kCols) w += load16(g_col + j) * exp16(v - load16(lse_col + j));
      store16(s + j, w);
    }
  }
  for (; j < j1; ++j) {
    T w = g_i * exp_of(s[j] - lse_i);
    if (kCols) w += g_col[j] * exp_of(s[j] - lse_col[j]);
    s[j] = w;
  }
}

// Calls f(j0, j1) for the columns of row i, around (i, i) on a diagonal tile (which
// need not be square: a positive pairs' tile at a ragged edge).
template <typename F>
PYHS_INLINE void for_row_columns(int64_t i, int64_t cols, bool diagonal, F f) {
  if (diagonal && i < cols) {
    f(0, i);
    f(i + 1, cols);
  } else {
    f(0, cols);
  }
}

template <typename T, bool kCols>
PYHS_INLINE void max_impl(const T* tile, int64_t rows, int64_t cols, int64_t ld, T* row_max,
                          T* col_max, bool diagonal) {
  if (kCols) {
    for (int64_t j = 0; j < cols; ++j) col_max[j] = kMinusInf<T>;
  }
  for (int64_t i = 0; i < rows; ++i) {
    const T* s = tile + i * ld;
    T m = kMinusInf<T>;
    for_row_columns(i, cols, diagonal, [&](int64_t j0, int64_t j1) __attribute__((always_inline)) {
      const T r = max_range<T, kCols>(s, col_max, j0, j1);
      m = r > m ? r : m;
    });
    row_max[i] = m;
  }
}

template <typename T, bool kCols>
PYHS_INLINE void exp_sums_impl(const T* tile, int64_t rows, int64_t cols, int64_t ld,
                               const T* row_max, T* row_sum, const T* col_max, T* col_sum,
                               bool diagonal) {
  if (kCols) {
    for (int64_t j = 0; j < cols; ++j) col_sum[j] = 0;
  }
  for (int64_t i = 0; i < rows; ++i) {
    const T* s = tile + i * ld;
    T sum = 0;
    for_row_columns(i, cols, diagonal, [&](int64_t j0, int64_t j1) __attribute__((always_inline)) {
      sum += exp_sum_range<T, kCols>(s, row_max[i], col_max, col_sum, j0, j1);
    });
    row_sum[i] = sum;
  }
}

template <typename T, bool kCols>
PYHS_INLINE void grad_weights_impl(T* tile, int64_t rows, int64_t cols, int64_t ld,
                                   const T* lse_row, const T* g_row, const T* lse_col,
                                   const T* g_col, bool diagonal) {
  for (int64_t i = 0; i < rows; ++i) {
    T* s = tile + i * ld;
    for_row_columns(i, cols, diagonal, [&](int64_t j0, int64_t j1) __attribute__((always_inline)) {
      grad_weight_range<T, kCols>(s, lse_row[i], g_row[i], lse_col, g_col, j0, j1);
    });
    if (diagonal && i < cols) s[i] = 0;
  }
}

template <typename T>
PYHS_INLINE void max_dispatch(const T* s, int64_t rows, int64_t cols, int64_t ld, T* row_max,
                              T* col_max, bool diagonal) {
  if (col_max != nullptr) {
    max_impl<T, true>(s, rows, cols, ld, row_max, col_max, diagonal);
  } else {
    max_impl<T, false>(s, rows, cols, ld, row_max, nullptr, diagonal);
  }
}

template <typename T>
PYHS_INLINE void exp_sums_dispatch(const T* s, int64_t rows, int64_t cols, int64_t ld,
                                   const T* row_max, T* row_sum, const T* col_max, T* col_sum,
                                   bool diagonal) {
  if (col_sum != nullptr) {
    exp_sums_impl<T, true>(s, rows, cols, ld, row_max, row_sum, col_max, col_sum, diagonal);
  } else {
    exp_sums_impl<T, false>(s, rows, cols, ld, row_max, row_sum, nullptr, nullptr, diagonal);
  }
}

template <typename T>
PYHS_INLINE void grad_weights_dispatch(T* s, int64_t rows, int64_t cols, int64_t ld,
                                       const T* lse_row, const T* g_row, const T* lse_col,
                                       const T* g_col, bool diagonal) {
  if (lse_col != nullptr) {
    grad_weights_impl<T, true>(s, rows, cols, ld, lse_row, g_row, lse_col, g_col, diagonal);
  } else {
    grad_weights_impl<T, false>(s, rows, cols, ld, lse_row, g_row, nullptr, nullptr, diagonal);
  }
}

}  // namespace

// The float loops once per x86 ISA level (cpu_isa.h).
#define PYHS_FLOAT_LOGIT_FUNCTIONS(suffix, target_attribute)                                   \
  target_attribute void max_##suffix(const float* s, int64_t rows, int64_t cols, int64_t ld,   \
                                     float* row_max, float* col_max, bool diagonal) {          \
    max_dispatch(s, rows, cols, ld, row_max, col_max, diagonal);                               \
  }                                                                                            \
  target_attribute void exp_sums_##suffix(const float* s, int64_t rows, int64_t cols,          \
                                          int64_t ld, const float* row_max, float* row_sum,    \
                                          const float* col_max, float* col_sum,                \
                                          bool diagonal) {                                     \
    exp_sums_dispatch(s, rows, cols, ld, row_max, row_sum, col_max, col_sum, diagonal);        \
  }                                                                                            \
  target_attribute void grad_weights_##suffix(float* s, int64_t rows, int64_t cols,            \
                                              int64_t ld, const float* lse_row,                \
                                              const float* g_row, const float* lse_col,        \
                                              const float* g_col, bool diagonal) {             \
    grad_weights_dispatch(s, rows, cols, ld, lse_row, g_row, lse_col, g_col, diagonal);        \
  }                                                                                            \
  target_attribute void exp_store_##suffix(float* s, int64_t rows, int64_t cols, int64_t ld,   \
                                           const float* row_max, float* row_sum) {             \
    exp_store_impl(s, rows, cols, ld, row_max, row_sum);                                       \
  }                                                                                            \
  target_attribute void scale_rows_##suffix(float* s, int64_t rows, int64_t cols, int64_t ld,  \
                                            const float* factor) {                             \
    scale_rows_impl(s, rows, cols, ld, factor);                                                \
  }

namespace {
PYHS_FLOAT_LOGIT_FUNCTIONS(baseline, )
#ifdef PYHS_X86_DISPATCH
PYHS_FLOAT_LOGIT_FUNCTIONS(avx2, PYHS_TARGET_AVX2)
PYHS_FLOAT_LOGIT_FUNCTIONS(avx512, PYHS_TARGET_AVX512)
#endif
}  // namespace

// Picks the float variant for the running CPU.
#ifdef PYHS_X86_DISPATCH
#define PYHS_FLOAT_LOGIT_CALL(name, ...)                                \
  switch (float_loop_isa()) {                                           \
    case Isa::kAvx512: return name##_avx512(__VA_ARGS__);               \
    case Isa::kAvx2: return name##_avx2(__VA_ARGS__);                   \
    default: return name##_baseline(__VA_ARGS__);                       \
  }
#else
#define PYHS_FLOAT_LOGIT_CALL(name, ...) return name##_baseline(__VA_ARGS__);
#endif

void logit_max(const float* s, int64_t rows, int64_t cols, int64_t ld, float* row_max,
               float* col_max, bool diagonal) {
  PYHS_FLOAT_LOGIT_CALL(max, s, rows, cols, ld, row_max, col_max, diagonal)
}

void logit_max(const double* s, int64_t rows, int64_t cols, int64_t ld, double* row_max,
               double* col_max, bool diagonal) {
  max_dispatch(s, rows, cols, ld, row_max, col_max, diagonal);
}

void logit_exp_sums(const float* s, int64_t rows, int64_t cols, int64_t ld, const float* row_max,
                    float* row_sum, const float* col_max, float* col_sum, bool diagonal) {
  PYHS_FLOAT_LOGIT_CALL(exp_sums, s, rows, cols, ld, row_max, row_sum, col_max, col_sum, diagonal)
}

void logit_exp_sums(const double* s, int64_t rows, int64_t cols, int64_t ld,
                    const double* row_max, double* row_sum, const double* col_max,
                    double* col_sum, bool diagonal) {
  exp_sums_dispatch(s, rows, cols, ld, row_max, row_sum, col_max, col_sum, diagonal);
}

void logit_grad_weights(float* s, int64_t rows, int64_t cols, int64_t ld, const float* lse_row,
                        const float* g_row, const float* lse_col, const float* g_col,
                        bool diagonal) {
  PYHS_FLOAT_LOGIT_CALL(grad_weights, s, rows, cols, ld, lse_row, g_row, lse_col, g_col, diagonal)
}

void logit_grad_weights(double* s, int64_t rows, int64_t cols, int64_t ld, const double* lse_row,
                        const double* g_row, const double* lse_col, const double* g_col,
                        bool diagonal) {
  grad_weights_dispatch(s, rows, cols, ld, lse_row, g_row, lse_col, g_col, diagonal);
}

void logit_exp_store(float* s, int64_t rows, int64_t cols, int64_t ld, const float* row_max,
                     float* row_sum) {
  PYHS_FLOAT_LOGIT_CALL(exp_store, s, rows, cols, ld, row_max, row_sum)
}

void logit_exp_store(double* s, int64_t rows, int64_t cols, int64_t ld, const double* row_max,
                     double* row_sum) {
  exp_store_impl(s, rows, cols, ld, row_max, row_sum);
}

void logit_scale_rows(float* s, int64_t rows, int64_t cols, int64_t ld, const float* factor) {
  PYHS_FLOAT_LOGIT_CALL(scale_rows, s, rows, cols, ld, factor)
}

void logit_scale_rows(double* s, int64_t rows, int64_t cols, int64_t ld, const double* factor) {
  scale_rows_impl(s, rows, cols, ld, factor);
}

}  // namespace cpu
}  // namespace pyhypersphere
