// Where each mma.sync operand element lives in a warp (lane, register) and which shared
// row each lane hands to ldmatrix; host + device, for mma_layout_test against the PTX
// ISA's layouts.  Lane = 4 g + t (group g, thread_in_group t); tiles are row-major.
#pragma once

#include "../uniform_math.h"  // PYHS_HOST_DEVICE

namespace pyhypersphere::cuda::layout {

struct Coord {
  int row, col;
};

PYHS_HOST_DEVICE int group_of(int lane) { return lane >> 2; }
PYHS_HOST_DEVICE int thread_in_group(int lane) { return lane & 3; }

// Accumulator element i of a lane: m16n8 f32 (0..3), m8n8k4 f64 (0..1).
PYHS_HOST_DEVICE Coord acc16x8(int lane, int i) {
  return {group_of(lane) + (i >= 2 ? 8 : 0), 2 * thread_in_group(lane) + (i & 1)};
}
PYHS_HOST_DEVICE Coord acc8x8(int lane, int i) { return {group_of(lane), 2 * thread_in_group(lane) + i}; }

// ldmatrix .x4: lane L addresses row L % 8 of matrix L / 8, of a 16 x 16-half A block (or
// V, .trans) or of two n8 tiles of B = K^T.
PYHS_HOST_DEVICE Coord ldmatrix_a_row(int lane) { return {((lane >> 3) & 1) * 8 + (lane & 7), (lane >> 4) * 8}; }
PYHS_HOST_DEVICE Coord ldmatrix_bt_row(int lane) { return {(lane >> 4) * 8 + (lane & 7), ((lane >> 3) & 1) * 8}; }

// The diagonal mask: a warp's rows start `offset` columns after a tile's first; element
// (row g + r, column 2t + c) is a self pair iff c - r == offset + g - 2t, a key constant
// per element; as g - 2t is in [-6, 7], keys of 8 or 9 mod 16 never match (skipped).
PYHS_HOST_DEVICE bool diagonal_tile(int offset, int tile_cols) { return offset >= 0 && offset < tile_cols; }
constexpr int kNeverSelf = -(1 << 30);
PYHS_HOST_DEVICE int self_pair_key(int r, int c) {
  const int key = c - r, low = key & 15;
  return low == 8 || low == 9 ? kNeverSelf : key;
}

// TF32 / f64 P V: S's accumulators (columns 2t, 2t + 1) are fed as they lie, so k position
// t stands for column 2t and t + 4 for 2t + 1; V's rows are read in that order.
PYHS_HOST_DEVICE int permuted_k_column(int k_position) { return k_position < 4 ? 2 * k_position : 2 * k_position - 7; }

// TF32's O^T = V^T P^T: rows g, g + 8 of m tile i are features tf32_v_feature(i, g, 0 / 1)
// (one 8-byte load, bank-conflict free at the 68-float pitch); output and sums element e
// ([m tile][row tile][4]) is of row tf32_out_row.
PYHS_HOST_DEVICE int tf32_v_feature(int tile, int g, int h) { return 16 * tile + 2 * g + h; }
PYHS_HOST_DEVICE int tf32_out_row(int lane, int e) { return 8 * ((e >> 2) & 1) + 2 * thread_in_group(lane) + (e & 1); }
// Its sums l^T = A P^T: [1 w] (one: 1 for g = 0, w for g = 1) in A's rows 0, 1 at k 0..3
// and rows 8, 9 at k 4..7, so that A's registers differ (ptxas copies a repeated one into
// place per use); l = rows 0 + 8, lw = 1 + 9 (tf32_sum_col; >= 2 once added in).
template <class T>
PYHS_HOST_DEVICE T tf32_sums_a(int g, T one, int r) { return r == 0 ? one : g < 2 ? (r == 3 ? one : T(0)) : T(r); }
PYHS_HOST_DEVICE int tf32_sum_col(int lane, int e) { return group_of(lane) + 8 * ((e >> 1) & 1); }

// 16-bit P V: A register r of k16 step kk = S's elements acc_first_of_a16(r), + 1 of
// column tile 2 kk + acc_tile_of_a16(r).
PYHS_HOST_DEVICE int acc_tile_of_a16(int r) { return r >> 1; }
PYHS_HOST_DEVICE int acc_first_of_a16(int r) { return 2 * (r & 1); }

}  // namespace pyhypersphere::cuda::layout
