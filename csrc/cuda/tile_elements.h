// Which elements of a B x B tile each thread of the uniformity tile kernel handles in its
// element passes (exponents, weights, row and column sums).  Host and device code: the
// host test csrc/cuda/tests/tile_elements_test.cpp checks the cover.
//
// Thread t owns kCols consecutive columns, col0(t) .. col0(t) + kCols - 1, in the rows
// row(t, k) = t / kLanesPerRow + k * kRowsPerPass, k = 0 .. kRowsPerThread - 1.  So
//   - a row's kLanesPerRow threads are consecutive lanes of one warp: its sum is a
//     shuffle reduction, and the warp's accesses to a row are contiguous (vectors of
//     kCols elements: the minimum wavefronts for 4- and 2-byte types; 8-byte types take
//     two 16-byte accesses per vector, a 2-way conflict);
//   - a thread's columns are fixed: their squared norms, validity and column sums stay
//     in registers, and the column sums are combined over the kRowsPerPass row groups
//     in a fixed order (deterministic).
// The exponents of a thread's kRowsPerThread * kCols elements are kept in registers
// between the two passes, so the tile is read once from shared memory.
#pragma once

#include "../uniform_math.h"  // PYHS_HOST_DEVICE

namespace pyhypersphere {
namespace cuda {

template <int B, int kThreads>
struct TileElements {
  static constexpr int kCols = 4;
  static constexpr int kLanesPerRow = B / kCols;
  static constexpr int kRowsPerPass = kThreads / kLanesPerRow;
  static constexpr int kRowsPerThread = B / kRowsPerPass;
  static_assert(B % kCols == 0, "whole column groups");
  static_assert(kLanesPerRow <= 32 && 32 % kLanesPerRow == 0, "a row's lanes lie in one warp");
  static_assert(kThreads % kLanesPerRow == 0 && B % kRowsPerPass == 0, "whole passes");

  static PYHS_HOST_DEVICE int col0(int thread) { return (thread % kLanesPerRow) * kCols; }
  static PYHS_HOST_DEVICE int row_group(int thread) { return thread / kLanesPerRow; }
  static PYHS_HOST_DEVICE int row(int thread, int k) { return row_group(thread) + k * kRowsPerPass; }
  // The thread that writes a row's sum (the row's first lane).
  static PYHS_HOST_DEVICE bool row_leader(int thread) { return thread % kLanesPerRow == 0; }
};

}  // namespace cuda
}  // namespace pyhypersphere
