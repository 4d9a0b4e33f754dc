#include "tile_gemm.h"

#include <ATen/ATen.h>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace pyhypersphere {
namespace cpu {
namespace {

// Fortran BLAS, LP64 (32-bit integers), column-major.
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const float*, const float*, const int*, const float*, const int*,
                          const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const double*, const double*, const int*, const double*, const int*,
                          const double*, double*, const int*);

template <typename T>
struct BlasSymbol;
template <>
struct BlasSymbol<float> {
  using fn = sgemm_fn;
  static constexpr const char* name = "sgemm_";
};
template <>
struct BlasSymbol<double> {
  using fn = dgemm_fn;
  static constexpr const char* name = "dgemm_";
};

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
template <typename T>
void blas_row_major(typename BlasSymbol<T>::fn gemm, bool trans_a, bool trans_b, int64_t m,
                    int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                    int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N';
  const char tb = trans_b ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb),
            ildc = static_cast<int>(ldc);
  gemm(&tb, &ta, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
}

template <typename T>
void aten_row_major(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                    const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<T*>(p), {trans ? cols : rows, trans ? rows : cols},
                                 {ld, 1}, options);
    return trans ? t.t() : t;
  };
  at::Tensor ta = view(a, m, k, lda, trans_a);
  at::Tensor tb = view(b, k, n, ldb, trans_b);
  at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, options);
  if (beta == T(0)) {
    at::mm_out(tc, ta, tb);
    if (alpha != T(1)) tc.mul_(alpha);
  } else {
    at::addmm_out(tc, tc, ta, tb, beta, alpha);
  }
}

template <typename T>
typename BlasSymbol<T>::fn find_blas() {
  return reinterpret_cast<typename BlasSymbol<T>::fn>(dlsym(RTLD_DEFAULT, BlasSymbol<T>::name));
}

// A 2x3 times 3x2 product with known result, through the row-major wrapper.
template <typename T>
bool blas_self_test(typename BlasSymbol<T>::fn gemm) {
  const T a[6] = {1, 2, 3, 4, 5, 6};    // 2x3
  const T b[6] = {7, 8, 9, 10, 11, 12};  // 3x2
  T c[4] = {1, 1, 1, 1};
  blas_row_major<T>(gemm, false, false, 2, 2, 3, T(1), a, 3, b, 2, T(1), c, 2);
  const T expect[4] = {59, 65, 140, 155};
  for (int i = 0; i < 4; ++i) {
    if (std::abs(c[i] - expect[i]) > T(1e-3)) return false;
  }
  return true;
}

enum class Backend { kBlas, kAten };

// PYHYPERSPHERE_CPU_GEMM=blas|aten; unset or empty: blas when it works.  Any other value
// is an error (a typo must not silently time the default).  Not cached when it throws,
// so every call raises.
Backend choose_backend() {
  const char* forced = std::getenv("PYHYPERSPHERE_CPU_GEMM");
  if (forced != nullptr && forced[0] == '\0') forced = nullptr;
  TORCH_CHECK_VALUE(forced == nullptr || std::strcmp(forced, "blas") == 0 ||
                        std::strcmp(forced, "aten") == 0,
                    "PYHYPERSPHERE_CPU_GEMM=", forced, " is not a valid value: expected blas or "
                    "aten (or unset)");
  if (forced != nullptr && std::strcmp(forced, "aten") == 0) return Backend::kAten;
  auto s = find_blas<float>();
  auto d = find_blas<double>();
  const bool usable = s != nullptr && d != nullptr && blas_self_test<float>(s) &&
                      blas_self_test<double>(d);
  if (forced != nullptr && std::strcmp(forced, "blas") == 0) {
    TORCH_CHECK(usable, "PYHYPERSPHERE_CPU_GEMM=blas, but no working sgemm_/dgemm_ symbol "
                        "was found in the loaded libraries");
  }
  return usable ? Backend::kBlas : Backend::kAten;
}

Backend backend() {
  static const Backend chosen = choose_backend();
  return chosen;
}

}  // namespace

template <typename T>
void gemm_row_major(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                    const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  // The Fortran BLAS takes 32-bit sizes; the leading dimension is d, which may exceed them.
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const bool fits_lp64 = std::max({m, n, k, lda, ldb, ldc}) <= kIntMax;
  if (backend() == Backend::kBlas && fits_lp64) {
    static const auto gemm = find_blas<T>();
    blas_row_major<T>(gemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    aten_row_major<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

std::string tile_gemm_backend() { return backend() == Backend::kBlas ? "blas" : "aten"; }

template void gemm_row_major<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*,
                                    int64_t, const float*, int64_t, float, float*, int64_t);
template void gemm_row_major<double>(bool, bool, int64_t, int64_t, int64_t, double,
                                     const double*, int64_t, const double*, int64_t, double,
                                     double*, int64_t);

}  // namespace cpu
}  // namespace pyhypersphere
