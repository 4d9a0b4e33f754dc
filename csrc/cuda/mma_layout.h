// Where each element of an mma.sync operand lives in a warp (lane, register), and which
// shared-memory row each lane hands to ldmatrix: the index arithmetic of the row-block
// kernel (uniform_kernels.cu), host + device so that mma_layout_test checks it on the
// host against the PTX ISA's documented layouts.
//
// Notation of the PTX ISA: lane = 4 * group + thread_in_group, g = group (0..7),
// t = thread_in_group (0..3).  A warp's 16 rows are rows g and g + 8 of each thread.
//
// A row-major [rows][cols] tile in shared memory, as the kernel keeps the rows z:
//   Gram      S = Q K^T:   A = Q rows, B[k][n] = K[n][k]  (ldmatrix, no transpose)
//   product   O = P V:     A = P (the weights, from S's accumulator registers),
//                          B[k][n] = V[k][n]   (16-bit: ldmatrix.trans; 32/64-bit: the
//                          k order permuted so that each thread's accumulators are its
//                          A registers, and V read with plain loads, below)
#pragma once

#include "../uniform_math.h"  // PYHS_HOST_DEVICE

namespace pyhypersphere {
namespace cuda {
namespace layout {

struct Coord {
  int row;
  int col;
};

PYHS_HOST_DEVICE int group_of(int lane) { return lane >> 2; }
PYHS_HOST_DEVICE int thread_in_group(int lane) { return lane & 3; }

// Accumulator of m16n8 (f32, any k): element i in 0..3 of a lane.
PYHS_HOST_DEVICE Coord acc16x8(int lane, int i) {
  return {group_of(lane) + (i >= 2 ? 8 : 0), 2 * thread_in_group(lane) + (i & 1)};
}

// Accumulator of m8n8k4 (f64): element i in 0..1.
PYHS_HOST_DEVICE Coord acc8x8(int lane, int i) {
  return {group_of(lane), 2 * thread_in_group(lane) + i};
}

// ldmatrix .x4 (b16): lane L gives the address of row L % 8 of matrix L / 8.  The
// kernel's four matrices of a 16 x 16-half (or 16 x 8-word) A block: matrix q covers
// rows 8 (q % 2) .. +8 and 16-bit columns 8 (q / 2) .. +8.
PYHS_HOST_DEVICE Coord ldmatrix_a_row(int lane) {
  const int q = lane >> 3;
  return {(q & 1) * 8 + (lane & 7), (q >> 1) * 8};
}
// Two n8 tiles of B = K^T at once (ldmatrix .x4, no transpose): matrix q covers K rows
// (n) 8 (q / 2) .. +8 and 16-bit columns (k) 8 (q % 2) .. +8.
PYHS_HOST_DEVICE Coord ldmatrix_bt_row(int lane) {
  const int q = lane >> 3;
  return {(q >> 1) * 8 + (lane & 7), (q & 1) * 8};
}
// Two n8 tiles of B = V (ldmatrix .x4.trans): matrix q covers V rows (k) 8 (q % 2) ..
// +8 and columns (n) 8 (q / 2) .. +8.
PYHS_HOST_DEVICE Coord ldmatrix_v_row(int lane) {
  const int q = lane >> 3;
  return {(q & 1) * 8 + (lane & 7), (q >> 1) * 8};
}

// What ldmatrix delivers (PTX ISA, "warp-level matrix load"): register q of lane L holds
// the two 16-bit elements (row L / 4, columns 2 (L % 4), +1) of matrix q; with .trans,
// those of the transposed matrix, i.e. (rows 2 (L % 4), +1, column L / 4).
PYHS_HOST_DEVICE Coord ldmatrix_element(int lane, int half, bool trans) {
  const int r = group_of(lane), c = 2 * thread_in_group(lane) + half;
  return trans ? Coord{c, r} : Coord{r, c};
}

// The k position each 32-bit (TF32) or 64-bit A register of the P V product stands for:
// the accumulator of an n8 column tile holds columns 2t and 2t + 1 of its rows, and the
// kernel feeds them as A registers unchanged, so k position t means column 2t and
// position t + 4 (TF32; the second of two k4 steps for f64) column 2t + 1.  V's rows
// are read in the same order (the sum over k does not care which k is which).
PYHS_HOST_DEVICE int permuted_k_column(int k_position) {
  return k_position < 4 ? 2 * k_position : 2 * (k_position - 4) + 1;
}

// The A registers of P V built from the accumulators of S (no data movement):
//   16-bit: A register r (two halves) of k16 step kk = elements 2 (r % 2), +1 of column
//           tile 2 kk + r / 2 (acc16x8's rows g / g + 8 and columns 2t, 2t + 1, +8);
//   TF32:   A register r of k8 step c = element acc_of_tf32_a(r) of column tile c
//           (k positions t, t + 4 stand for columns 2t, 2t + 1: permuted_k_column).
PYHS_HOST_DEVICE int acc_tile_of_a16(int r) { return r >> 1; }
PYHS_HOST_DEVICE int acc_first_of_a16(int r) { return 2 * (r & 1); }
PYHS_HOST_DEVICE int acc_of_tf32_a(int r) { return ((r & 1) << 1) | (r >> 1); }

}  // namespace layout
}  // namespace cuda
}  // namespace pyhypersphere
