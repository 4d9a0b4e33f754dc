// CUDA uniformity kernels: the host-side entry points.  Toolkit only (raw device
// pointers, sizes, a stream), so the torch glue (uniform_cuda.cpp, a host-compiler
// translation unit) and the standalone benchmark share them.  No device code here.
//
// Contract (the CPU kernel's, csrc/uniform_math.h and csrc/ops.h): given rows
// z_0..z_{n+k-1} (x's n rows, then the queue's k) and the pairs of `part` of `num_parts`
// (disjoint slices of 64-row tiles, rowblock_plan.h; the Triton kernels' slicing),
//     lse  = log sum_P exp(-t ||z_i - z_j||^2)                  (-inf for an empty slice)
//     grad = d lse / d z   for x's rows (grad_x) and the queue's (grad_queue)
//
// Precision of the products (Gram matrix, weights times rows):
//   kBf16, kFp16   rows in that 16-bit type; mma.sync m16n8k16, float32 accumulation;
//                  the weights enter the second product rounded to the same type
//   kTf32          float32 rows, stored TF32-rounded (norms and weights too); m16n8k8
//   kFp32          float32 rows; 3xTF32 (big + small split, float32-level products)
//   kFp64          float64 rows; DMMA m8n8k4
// Everything else (exponents, exp2, sums, shifts, the gradient) is in the accumulation
// type: float32, or float64 for kFp64.  Needs compute capability 8.0+.
//
// Reproducibility: the work is cut by the shape alone (row blocks, column splits,
// feature slices), every item writes its own partials and every merge and reduction has
// a fixed order; there are no floating-point atomics.  Results are bitwise identical
// from run to run and for every grid size (UniformProblem::max_ctas).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace pyhypersphere {
namespace cuda {

enum class UniformPrecision { kBf16, kFp16, kTf32, kFp32, kFp64 };

struct UniformProblem {
  const void* rows = nullptr;  // [n + k, d], contiguous, element type set by `precision`
  int64_t n = 0;               // rows of x (>= 1)
  int64_t k = 0;               // rows of the queue (>= 0)
  int64_t d = 0;               // features (>= 1)
  double t = 2.0;
  bool intra_batch = true;
  int64_t part = 0;
  int64_t num_parts = 1;
  bool grad_x = false;         // d lse / d x into grad_rows [0, n)
  bool grad_queue = false;     // d lse / d queue into grad_rows [n, n + k) (needs k > 0)
  UniformPrecision precision = UniformPrecision::kFp32;
  // The static shift (every exponent is <= 0, so 0 bounds them): only where no weight can
  // underflow (rowblock_plan.h: static_shift_certified, from the rows' largest norm);
  // false keeps an online max per row, which is always right.
  bool static_shift = false;
  // Rows per CTA: 0 for uniform_block_rows(precision), or 64 where the device's shared
  // memory is short (uniform_block_rows_for).
  int64_t block_rows = 0;
  // Upper bound on the row kernel's CTAs (0: one per work item).  For tests: the results
  // are bitwise the same for every grid size.
  int64_t max_ctas = 0;
};

// Rows per CTA of the row kernel for a precision by default: 128, or 64 for kFp64.
int64_t uniform_block_rows(UniformPrecision precision);

// Dynamic shared memory per CTA of the row kernel with blocks of `block_rows` rows
// (0: the default): about 103 KiB at 128 rows, 70 KiB at 64 (53 KiB for kFp64).
size_t uniform_shared_memory_bytes(UniformPrecision precision, int64_t block_rows = 0);

// The block size to run with on a device whose opt-in shared memory per block is
// `smem_optin` bytes: the default where it fits (A100, H100), else 64 rows (sm_86, sm_89,
// sm_120: 99 KiB), else 0 (no kernel fits).  One rule for the glue and the tests.
int64_t uniform_block_rows_for(UniformPrecision precision, int64_t smem_optin);

// Bytes of device workspace launch_uniform_lse needs: O((n + k) * d): the padded rows
// and, per gradient asked for, one partial row of a_i per row and column split.
size_t uniform_workspace_bytes(const UniformProblem& problem);

// Computes lse (one double, whatever the precision) and,
// with grad_x / grad_queue, their rows of grad_rows ([n + k, d], contiguous,
// accumulation type; the other rows are left as they are), on `stream`
// and the current device.  `workspace` holds uniform_workspace_bytes(problem) bytes,
// 256-byte aligned.  Asynchronous; returns the first launch error, if any.
cudaError_t launch_uniform_lse(const UniformProblem& problem, void* workspace, void* lse,
                               void* grad_rows, cudaStream_t stream);

}  // namespace cuda
}  // namespace pyhypersphere
