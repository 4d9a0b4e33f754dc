// CUDA uniformity kernels: the host-side entry points.  Toolkit only (raw device
// pointers, sizes, a stream), so the torch glue (uniform_cuda.cpp, a host-compiler
// translation unit) and the standalone benchmark share them.  No device code here.
//
// Contract (the CPU kernel's, csrc/uniform_math.h and csrc/ops.h): given rows
// z_0..z_{n+k-1} (x's n rows, then the queue's k), already centered, and the pair set of
// the tiles of `part` of `num_parts` (csrc/tile_schedule.h, blocks of
// uniform_block_rows(precision) rows),
//     lse  = log sum_P exp(-t ||z_i - z_j||^2)                  (-inf for an empty slice)
//     grad = d lse / d z   over the n + k rows                  (when compute_grad)
//
// Precision of the tile products (Gram matrix, weights times rows):
//   kBf16, kFp16   rows in that 16-bit type; tensor cores, float32 accumulation; the
//                  weights enter the second product rounded to the same type
//   kTf32          float32 rows, stored TF32-rounded (norms and weights too); TF32 tensor cores
//   kFp32          float32 rows; 3xTF32 (big + small split, float32-level products)
//   kFp64          float64 rows; FP64 tensor cores (DMMA)
// Everything else (exponents, exp, sums, shifts, the gradient assembly) is in the
// accumulation type: float32, or float64 for kFp64.  Needs compute capability 8.0+.
//
// Reproducibility: every state (a block's accumulators, a side group's, a chain of tile
// totals without the gradient) is updated by its tiles in the schedule's order (a
// ticket per state, see uniform_kernels.cu), and every reduction has a fixed order;
// there are no floating-point atomics.  Results are bitwise identical
// from run to run on the same GPU model, whatever the thread-block timing.
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
  bool compute_grad = false;
  UniformPrecision precision = UniformPrecision::kFp32;
  // Rows per schedule block: 0 for uniform_block_rows(precision), or half of it where
  // the device's shared memory is short (uniform_block_rows_for).
  int64_t block_rows = 0;
  // Upper bound on the tile kernel's CTAs (0: as many as fit).  A debug knob: results
  // are bitwise the same for every grid size.
  int64_t max_ctas = 0;
  // Side groups for queue shapes (x's blocks against the queue's), with compute_grad:
  // the side with fewer blocks keeps private states per group of the other side's
  // blocks, merged in a fixed order after the tiles, so that its updates do not form one
  // chain over every round (MoCo: 2 x blocks against 512 queue blocks, 514 updates each).
  // -1: automatic (the default; a function of the shape only); 0: off; n > 0: n groups.
  // Results are deterministic for every setting and differ between settings by
  // rounding only.  Without the gradient there are no per-block states to group.
  int64_t side_groups = -1;
  // Products first (an experiment, off by default until timed on a GPU): with
  // compute_grad, each tile computes W Z_b and W^T Z_a before its turn, into staging rows
  // of its CTA (2 B x ld accumulators each, in the workspace), so that the turn holds
  // only the read-modify-write of the accumulators.  0: off (the products run in the
  // turn); n > 0: staging for n CTAs, which also caps the grid (uniform_resident_tile_ctas
  // gives the count that loses nothing).  The same bits either way.
  int64_t products_first_ctas = 0;
};

// Rows per schedule block (the tile edge) for a precision by default: 128, or 64 for kFp64.
int64_t uniform_block_rows(UniformPrecision precision);

// Dynamic shared memory per CTA of the tile kernel with blocks of `block_rows` rows
// (0: the default): about 140 KiB at 128 rows (90 KiB for kFp64 at 64), about 55 KiB
// for the float and 16-bit kernels at 64 rows.
size_t uniform_shared_memory_bytes(UniformPrecision precision, int64_t block_rows = 0);

// The block size to run with on a device whose opt-in shared memory per block is
// `smem_optin` bytes: the default where it fits (A100, H100), else 64 rows (sm_86, sm_89,
// sm_120: 99 KiB), else 0 (no kernel fits).  One rule for the glue and the tests.
int64_t uniform_block_rows_for(UniformPrecision precision, int64_t smem_optin);

// CTAs of the tile kernel resident at once on the current device (SMs x what shared
// memory and registers allow per SM), for blocks of `block_rows` rows (0: the default),
// with or without products first: the staging UniformProblem::products_first_ctas asks
// for.  Needs a device; cudaErrorInvalidValue for a block size without a kernel.
cudaError_t uniform_resident_tile_ctas(UniformPrecision precision, int64_t block_rows, bool products_first,
                                      int64_t* ctas);

// Bytes of device workspace launch_uniform_lse needs: O((n + k) * d), padded copies of
// the rows plus, with compute_grad, one accumulator row per row.
size_t uniform_workspace_bytes(const UniformProblem& problem);

// Computes lse (one double, whatever the precision) and,
// with compute_grad, grad_rows ([n + k, d], contiguous, accumulation type), on `stream`
// and the current device.  `workspace` holds uniform_workspace_bytes(problem) bytes,
// 256-byte aligned.  Asynchronous; returns the first launch error, if any.
cudaError_t launch_uniform_lse(const UniformProblem& problem, void* workspace, void* lse,
                               void* grad_rows, cudaStream_t stream);

}  // namespace cuda
}  // namespace pyhypersphere
