#include "tile_epilogue.h"

#include "../uniform_math.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#define PYHS_INLINE inline __attribute__((always_inline))

namespace pyhypersphere {
namespace cpu {
namespace {

// exp for the float tiles.  Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7
// Taylor polynomial (truncation < 6e-9 relative, below float's half-ulp) and 2^n built
// in the exponent bits.  For x <= 88 (the kernel passes x <= 0); inputs below -87 are
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

PYHS_INLINE float exp_of(float x) { return exp_fast_generic<float, int32_t>(x); }
PYHS_INLINE double exp_of(double x) { return std::exp(x); }

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

// The float rows in explicit 16-lane vectors (GCC vector extensions, lowered to one
// AVX-512, two AVX2 or four SSE registers by the function's target): the loops do not
// depend on the auto-vectorizer's if-conversion, and the lanes are summed in a fixed
// order, so results are reproducible.  Tails go through the scalar loops above.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

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
    const f32x16 w = exp_fast_generic<f32x16, i32x16>(e - vshift);
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

// The float loops are compiled once per x86 ISA level and picked at run time by what
// the CPU supports: the extension is built for baseline x86-64, but the exp loop is
// worth AVX2+FMA / AVX-512 where present.  (Not target_clones: its "arch=" clones test
// the CPU model, not its features, and miss newer CPUs.)
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
#if defined(__x86_64__) && defined(__GNUC__)
PYHS_FLOAT_TILE_FUNCTIONS(avx2, __attribute__((target("avx2,fma"))))
PYHS_FLOAT_TILE_FUNCTIONS(avx512, __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))))
#endif

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa detect_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// PYHYPERSPHERE_CPU_ISA=baseline|avx2 caps the ISA below what the CPU supports, so the
// tests can run every variant of the float loops on one machine.  Read once per process;
// any other non-empty value is an error (a typo must not silently test the default),
// raised by every call since a throwing static initializer is retried.
Isa choose_isa() {
  const Isa detected = detect_isa();
  const char* forced = std::getenv("PYHYPERSPHERE_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0') return detected;
  TORCH_CHECK_VALUE(std::strcmp(forced, "baseline") == 0 || std::strcmp(forced, "avx2") == 0,
                    "PYHYPERSPHERE_CPU_ISA=", forced, " is not a valid value: expected baseline "
                    "or avx2 (or unset for the best the CPU supports)");
  if (std::strcmp(forced, "baseline") == 0) return Isa::kBaseline;
  if (std::strcmp(forced, "avx2") == 0 && detected != Isa::kBaseline) return Isa::kAvx2;
  return detected;
}

Isa isa() {
  static const Isa chosen = choose_isa();
  return chosen;
}
}  // namespace

float tile_max_exponent(const float* tile, int64_t rows, int64_t cols, int64_t ld,
                        const float* sq_a, const float* sq_b, float t, bool diagonal) {
  switch (isa()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Isa::kAvx512: return max_exponent_avx512(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
    case Isa::kAvx2: return max_exponent_avx2(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
#endif
    default: return max_exponent_baseline(tile, rows, cols, ld, sq_a, sq_b, t, diagonal);
  }
}

float tile_weights(float* tile, int64_t rows, int64_t cols, int64_t ld, const float* sq_a,
                   const float* sq_b, float t, float shift, float* row_sum, float* col_sum,
                   bool diagonal) {
  switch (isa()) {
#if defined(__x86_64__) && defined(__GNUC__)
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

std::string tile_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

float exp_fast(float x) { return exp_of(x); }

}  // namespace cpu
}  // namespace pyhypersphere
