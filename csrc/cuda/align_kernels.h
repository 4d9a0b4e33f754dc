// CUDA alignment loss: the host-side entry point (toolkit only, no device code).
//
//   loss = mean_i ||x_i - y_i||^alpha        (double, one value)
//   grad = d loss / d x  in x's type          (when compute_grad; 0 where x_i == y_i)
// Rows are processed in parallel in the accumulation type (float32, float64 for
// float64); the per-row terms are summed in double in a fixed order (deterministic).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace pyhypersphere {
namespace cuda {

enum class AlignDtype { kBf16, kFp16, kFp32, kFp64 };

struct AlignProblem {
  const void* x = nullptr;  // [n, d] contiguous
  const void* y = nullptr;  // [n, d] contiguous, same type
  int64_t n = 0;
  int64_t d = 0;
  double alpha = 2.0;
  bool compute_grad = false;
  AlignDtype dtype = AlignDtype::kFp32;
};

// Bytes of workspace (one double per row).
size_t align_workspace_bytes(const AlignProblem& problem);

// loss: one double on the device; grad: [n, d] of the input type, or null.
cudaError_t launch_align_loss(const AlignProblem& problem, void* workspace, double* loss, void* grad,
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace pyhypersphere
