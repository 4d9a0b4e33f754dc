// Row-major GEMM on tiles for the CPU kernel: C = alpha * op(A) * op(B) + beta * C.
//
// Two backends, chosen once per process:
//   "blas": the Fortran BLAS symbols (sgemm_/dgemm_) that libtorch already links
//           (MKL on x86 wheels, OpenBLAS elsewhere), called directly: no tensor or
//           dispatcher overhead per tile.  Verified by a small self-test before use.
//   "aten": at::mm_out / at::addmm_out on views of the tile buffers.
// PYHYPERSPHERE_CPU_GEMM=blas|aten forces one (for benchmarking); otherwise "blas"
// when its self-test passes, else "aten".
#pragma once

#include <cstdint>
#include <string>

namespace pyhypersphere {
namespace cpu {

template <typename T>
void gemm_row_major(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                    const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// "blas" or "aten": the backend gemm_row_major uses.
std::string tile_gemm_backend();

}  // namespace cpu
}  // namespace pyhypersphere
