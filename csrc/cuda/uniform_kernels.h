// Host entry points of the CUDA uniformity kernels (toolkit only: raw device pointers,
// sizes, a stream), for the torch glue and the benchmark; contract and design: ops.h,
// docs/cuda.md.  Needs sm_80+; results are bitwise the same for every grid size.
#pragma once

#include <cuda_runtime_api.h>
#include <cstddef>
#include <cstdint>

namespace pyhypersphere::cuda {

enum class UniformPrecision { kBf16, kFp16, kTf32, kFp32, kFp64 };

struct UniformProblem {
  const void* rows = nullptr;  // [n + k, d], contiguous, of the precision's type
  int64_t n = 0, k = 0, d = 0;  // n >= 1, k >= 0, d >= 1
  double t = 2.0;
  bool intra_batch = true;
  int64_t part = 0, num_parts = 1;
  bool grad_x = false;      // into grad_rows [0, n)
  bool grad_queue = false;  // into grad_rows [n, n + k) (needs k > 0)
  UniformPrecision precision = UniformPrecision::kFp32;
  bool static_shift = false;  // shift 0, no online max: where plan::static_shift_certified
  int64_t block_rows = 0;  // 0: uniform_block_rows(precision); 64 for 99 KiB devices
  int64_t max_ctas = 0;    // cap on the row kernel's grid, for tests (0: none)
};

// 128 rows per CTA, 64 for kFp64.
int64_t uniform_block_rows(UniformPrecision precision);
// Dynamic shared memory per CTA (block_rows 0: the default).
size_t uniform_shared_memory_bytes(UniformPrecision precision, int64_t block_rows = 0);
// The block size that fits `smem_optin` bytes per block: the default, else 64, else 0.
int64_t uniform_block_rows_for(UniformPrecision precision, int64_t smem_optin);
// Device workspace of launch_uniform_lse, O((n + k) d).
size_t uniform_workspace_bytes(const UniformProblem& problem);
// lse (one double, whatever the precision: ops.h) and the asked rows of grad_rows ([n + k,
// d], the accumulation type), asynchronously on `stream`; `workspace`:
// uniform_workspace_bytes, 256-byte aligned.  Returns the first launch error.
cudaError_t launch_uniform_lse(const UniformProblem& problem, void* workspace, void* lse, void* grad_rows,
                               cudaStream_t stream);

}  // namespace pyhypersphere::cuda
