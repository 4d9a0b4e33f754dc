// The row-block algorithm's arithmetic that is not a tensor-core product: how the work
// is cut (row blocks, column splits, feature windows, parts) and the log-sum-exp state
// (online shift, merge of partials, the gradient's coefficient).  Host + device: the
// kernels (uniform_kernels.cu) and the host tests (tests/rowblock_plan_test.cpp, which
// also runs the whole algorithm on the host with these functions) share it.
//
// Exponents and shifts are in log2 units (e2 = e * log2(e)): the kernel's exp is exp2.
#pragma once

#include "../uniform_math.h"

#include <cmath>
#include <cstdint>
#include <limits>

namespace pyhypersphere {
namespace cuda {
namespace plan {

constexpr double kLog2E = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

// Rows of one part-slicing block: `part` / `num_parts` keep a contiguous, balanced range
// of the tiles of 64 x 64 rows numbered as the Triton kernels number them (x's upper
// triangle row by row, then x by queue), so both GPU backends cut the same slices.  A
// warp's 16 rows and a column tile (64 or 32 columns) lie in one such block, so a part
// selects whole (warp, tile) pieces: no per-pair mask.
constexpr int64_t kPartRows = 64;
// Work items the launcher aims for (row blocks x column splits x feature slices): a
// function of the shape only, never of the device, so the results are too.  A split
// keeps at least kMinSplitTiles column tiles, so its partial a_i (d floats per row)
// costs less than the tiles it sums.
constexpr int64_t kTargetItems = 512;
constexpr int64_t kMinSplitTiles = 8;

PYHS_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
PYHS_HOST_DEVICE int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Part-tile index of a pair of 64-row blocks: both in x (a, b: x block indices), or x
// block a against queue block b.
PYHS_HOST_DEVICE int64_t part_tile(bool both_x, int64_t a, int64_t b, int64_t x_blocks,
                                   int64_t queue_blocks, int64_t triangle) {
  if (!both_x) return triangle + a * queue_blocks + b;
  const int64_t lo = a < b ? a : b, hi = a < b ? b : a;
  return lo * x_blocks - lo * (lo - 1) / 2 + hi - lo;
}

struct Parts {
  int64_t lo = 0, hi = 0;  // this part's tiles [lo, hi); hi < 0: one part, no selection
  int64_t x_blocks = 0, queue_blocks = 0, triangle = 0;
};

PYHS_HOST_DEVICE Parts make_parts(int64_t n, int64_t k, bool intra_batch, int64_t part, int64_t num_parts) {
  Parts p;
  p.x_blocks = ceil_div(n, kPartRows);
  p.queue_blocks = ceil_div(k, kPartRows);
  p.triangle = intra_batch ? p.x_blocks * (p.x_blocks + 1) / 2 : 0;
  const int64_t total = p.triangle + p.x_blocks * p.queue_blocks;
  p.lo = num_parts == 1 ? 0 : total * part / num_parts;
  p.hi = num_parts == 1 ? -1 : total * (part + 1) / num_parts;
  return p;
}

// Whether this part holds the pairs of row block `a` (its pass's own numbering: x rows,
// or queue rows in the queue pass) against column block `b`.
PYHS_HOST_DEVICE bool part_holds(const Parts& p, bool rows_are_x, bool cols_are_x, int64_t a, int64_t b) {
  if (p.hi < 0) return true;
  const bool both_x = rows_are_x && cols_are_x;
  const int64_t f = both_x ? part_tile(true, a, b, p.x_blocks, p.queue_blocks, p.triangle)
                    : rows_are_x ? part_tile(false, a, b, p.x_blocks, p.queue_blocks, p.triangle)
                                 : part_tile(false, b, a, p.x_blocks, p.queue_blocks, p.triangle);
  return f >= p.lo && f < p.hi;
}

// The column blocks [lo, hi) of one region (x's columns, or the queue's) that this part
// holds against row block `a`: for a fixed row block the part-tile index grows with the
// column block in each region (x's triangle is numbered row by row, and a column block
// below `a` sits in an earlier row), so the held ones are one range, found by bisection.
// The kernel computes it once per warp and work item instead of a tile index per tile.
struct BlockRange {
  int64_t lo = 0, hi = 0;
  PYHS_HOST_DEVICE bool holds(int64_t b) const { return b >= lo && b < hi; }
};
PYHS_HOST_DEVICE BlockRange held_blocks(const Parts& p, bool rows_are_x, bool cols_are_x, int64_t a, int64_t blocks) {
  BlockRange r;
  if (p.hi < 0) {
    r.hi = blocks;
    return r;
  }
  auto tile = [&](int64_t b) {
    const bool both_x = rows_are_x && cols_are_x;
    return both_x ? part_tile(true, a, b, p.x_blocks, p.queue_blocks, p.triangle)
           : rows_are_x ? part_tile(false, a, b, p.x_blocks, p.queue_blocks, p.triangle)
                        : part_tile(false, b, a, p.x_blocks, p.queue_blocks, p.triangle);
  };
  auto first_at_least = [&](int64_t bound) {  // the first b with tile(b) >= bound
    int64_t lo = 0, hi = blocks;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (tile(mid) >= bound) hi = mid; else lo = mid + 1;
    }
    return lo;
  };
  r.lo = first_at_least(p.lo);
  r.hi = first_at_least(p.hi);
  return r;
}

// How one pass (rows against a range of column tiles) is cut into work items.
struct PassPlan {
  int64_t row_blocks = 0;
  int64_t col_tiles = 0;
  int64_t splits = 1;           // column ranges per row block
  int64_t tiles_per_split = 0;
  int64_t slices = 1;           // feature windows of the output sum a_i (1 without it)
  PYHS_HOST_DEVICE int64_t items() const { return row_blocks * splits * slices; }
};

// Splits for few row blocks (queue shapes), so that about kTargetItems items exist;
// each split gets whole tiles, the last possibly fewer; none is empty.
PYHS_HOST_DEVICE PassPlan make_pass_plan(int64_t row_blocks, int64_t col_tiles, int64_t slices) {
  PassPlan p;
  p.row_blocks = row_blocks;
  p.col_tiles = col_tiles;
  p.slices = slices;
  const int64_t per_split = row_blocks * slices > 0 ? row_blocks * slices : 1;
  int64_t splits = ceil_div(kTargetItems, per_split);
  const int64_t most = col_tiles / kMinSplitTiles;
  splits = splits < most ? splits : most;
  splits = splits < 1 ? 1 : splits;
  p.tiles_per_split = col_tiles > 0 ? ceil_div(col_tiles, splits) : 0;
  p.splits = col_tiles > 0 ? ceil_div(col_tiles, p.tiles_per_split) : 1;
  return p;
}

struct WorkItem {
  int64_t row_block, split, slice;
  int64_t first_tile, end_tile;
};

// Items in the order row block, split, slice (the slices of one row block's columns are
// neighbours, so they share their column tiles in L2).
PYHS_HOST_DEVICE WorkItem work_item(const PassPlan& p, int64_t item) {
  WorkItem w;
  w.slice = item % p.slices;
  w.split = (item / p.slices) % p.splits;
  w.row_block = item / (p.slices * p.splits);
  w.first_tile = w.split * p.tiles_per_split;
  const int64_t end = w.first_tile + p.tiles_per_split;
  w.end_tile = end < p.col_tiles ? end : p.col_tiles;
  return w;
}

// The Gram product of a tile runs over the feature windows ending with the output's own
// slice, so that the column tile's last window in shared memory is the V of O += P V.
PYHS_HOST_DEVICE int64_t window_at(int64_t slice, int64_t step, int64_t windows) {
  return (slice + 1 + step) % windows;
}

// ---------------------------------------------------------------- log-sum-exp state

// Exponent of a pair in log2 units, -t log2(e) ||z_i - z_j||^2 = v + row_term, from the
// Gram entry: v = c2 gram + col_term with c2 = 2 t log2(e) and the norm terms
// -t log2(e) ||z||^2 of the column (col_term) and the row (row_term).  The kernel
// takes a row's weights as exp2(v + bias) with bias = row_term - shift (weight_bias).
// No clamp at 0 (pair_exponent's): rounding can make a near-duplicate's distance
// negative by at most the policy's budget, so a weight exceeds 1 by at most ~0.1%.
template <class T>
PYHS_HOST_DEVICE T partial_exponent2(T c2, T gram, T col_term) {
  return c2 * gram + col_term;
}
template <class T>
PYHS_HOST_DEVICE T weight_bias(T row_term, T shift) {
  return row_term - shift;
}

// One tile's step of the online shift: the new running max, the finite shift the weights
// are taken under (0 while no pair was seen), and the factor for what is held.
template <class T>
struct OnlineStep {
  T max;
  T shift;
  T scale;
};
template <class T>
PYHS_HOST_DEVICE OnlineStep<T> online_step(T old_max, T tile_max) {
  OnlineStep<T> s;
  s.max = tile_max > old_max ? tile_max : old_max;
  s.shift = s.max == -std::numeric_limits<T>::infinity() ? T(0) : s.max;
  s.scale = std::exp2(old_max - s.shift);  // 0 for a row without pairs yet (old_max -inf)
  return s;
}

// Factor moving a sum held under shift `from` to shift `to` (log2 units); 0 for a
// partial that saw no pair (-inf).
template <class T>
PYHS_HOST_DEVICE T rescale2(T from, T to) {
  return from == -std::numeric_limits<T>::infinity() ? T(0) : std::exp2(from - to);
}

// The static shift: every exponent is <= 0 (distances are >= 0), so 0 bounds them all;
// it is exact enough when no pair's weight can underflow, i.e. when
// t ||z_i - z_j||^2 <= t (2 max ||z||)^2 stays within the accumulation type's normal range.
// Otherwise, or without the norms (CUDA-graph capture), the kernel keeps an online max.
PYHS_HOST_DEVICE bool static_shift_certified(double t, double max_sq_norm, bool double_accumulation) {
  const double worst = t * 4.0 * max_sq_norm * kLog2E;  // the smallest weight is 2^-worst
  return worst <= (double_accumulation ? 1000.0 : 120.0);
}

// d lse / d z_i = coefficient * (l_i z_i - a_i): -2t exp(m_i - lse) with the row's
// shift m2 and lse2 = lse * log2(e); 0 for an empty slice (lse = -inf).
PYHS_HOST_DEVICE double gradient_coefficient(double t, double m2, double lse2) {
  if (lse2 == -std::numeric_limits<double>::infinity()) return 0.0;
  return -2.0 * t * rescale2(m2, lse2);
}

}  // namespace plan
}  // namespace cuda
}  // namespace pyhypersphere
