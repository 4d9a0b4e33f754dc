// The row-block algorithm's arithmetic other than products: how the work is cut and the
// log-sum-exp state (log2 units), host + device for rowblock_plan_test's emulation.
#pragma once

#include "../uniform_math.h"
#include <cmath>
#include <cstdint>
#include <limits>

namespace pyhypersphere::cuda::plan {

constexpr double kLog2E = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;
// Parts are balanced ranges of 64 x 64 tiles numbered as the Triton kernels number them
// (docs/cuda.md, "Parts"); a part selects whole (warp, tile) pieces: no per-pair mask.
constexpr int64_t kPartRows = 64;
// Work items aimed for (a function of the shape only, as the results); a split keeps
// >= kMinSplitTiles tiles so that its partial a_i costs less than the tiles it sums.
constexpr int64_t kTargetItems = 512;
constexpr int64_t kMinSplitTiles = 8;

PYHS_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
PYHS_HOST_DEVICE int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

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
// Part-tile index of row block a (of x's or the queue's rows) against column block b.
PYHS_HOST_DEVICE int64_t pass_tile(const Parts& p, bool rows_are_x, bool cols_are_x, int64_t a, int64_t b) {
  if (!rows_are_x || !cols_are_x) return p.triangle + (rows_are_x ? a * p.queue_blocks + b : b * p.queue_blocks + a);
  const int64_t lo = a < b ? a : b, hi = a < b ? b : a;
  return lo * p.x_blocks - lo * (lo - 1) / 2 + hi - lo;
}
PYHS_HOST_DEVICE bool part_holds(const Parts& p, bool rows_are_x, bool cols_are_x, int64_t a, int64_t b) {
  const int64_t f = pass_tile(p, rows_are_x, cols_are_x, a, b);
  return p.hi < 0 || (f >= p.lo && f < p.hi);
}
// The column blocks of one region that this part holds against row block a: one range
// (the index grows with the column block), found by bisection once per warp and item.
struct BlockRange {
  int64_t lo = 0, hi = 0;
  PYHS_HOST_DEVICE bool holds(int64_t b) const { return b >= lo && b < hi; }
};
PYHS_HOST_DEVICE BlockRange held_blocks(const Parts& p, bool rows_are_x, bool cols_are_x, int64_t a, int64_t blocks) {
  if (p.hi < 0) return {0, blocks};
  auto first_at_least = [&](int64_t bound) {
    int64_t lo = 0, hi = blocks;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (pass_tile(p, rows_are_x, cols_are_x, a, mid) >= bound) hi = mid; else lo = mid + 1;
    }
    return lo;
  };
  return {first_at_least(p.lo), first_at_least(p.hi)};
}

// One pass (rows against column tiles) cut into items: row blocks x splits (column
// ranges, for few row blocks: about kTargetItems items, none empty) x slices (feature
// windows of a_i, 1 without it).
struct PassPlan {
  int64_t row_blocks = 0, col_tiles = 0, splits = 1, tiles_per_split = 0, slices = 1;
  PYHS_HOST_DEVICE int64_t items() const { return row_blocks * splits * slices; }
};
PYHS_HOST_DEVICE PassPlan make_pass_plan(int64_t row_blocks, int64_t col_tiles, int64_t slices) {
  const int64_t wanted = ceil_div(kTargetItems, row_blocks * slices > 0 ? row_blocks * slices : 1);
  const int64_t most = col_tiles / kMinSplitTiles;
  const int64_t splits = wanted < most ? wanted : (most < 1 ? 1 : most);
  const int64_t per_split = col_tiles > 0 ? ceil_div(col_tiles, splits) : 0;
  return {row_blocks, col_tiles, col_tiles > 0 ? ceil_div(col_tiles, per_split) : 1, per_split, slices};
}
struct WorkItem {
  int64_t row_block, split, slice, first_tile, end_tile;
};
// Slices of one row block's columns are neighbours, so they share their tiles in L2.
PYHS_HOST_DEVICE WorkItem work_item(const PassPlan& p, int64_t item) {
  const int64_t split = (item / p.slices) % p.splits, first = split * p.tiles_per_split;
  const int64_t end = first + p.tiles_per_split < p.col_tiles ? first + p.tiles_per_split : p.col_tiles;
  return {item / (p.slices * p.splits), split, item % p.slices, first, end};
}
// A tile's Gram product ends with the output's own window: the V of O += P V in shared memory.
PYHS_HOST_DEVICE int64_t window_at(int64_t slice, int64_t step, int64_t windows) { return (slice + 1 + step) % windows; }

// A pair's exponent -t log2(e) ||z_i - z_j||^2 = c2 gram + col_term + row_term (c2 = 2 t
// log2(e), terms -t log2(e) ||z||^2); weights exp2(partial + bias), bias = row_term - shift.
template <class T>
PYHS_HOST_DEVICE T partial_exponent2(T c2, T gram, T col_term) { return c2 * gram + col_term; }
template <class T>
PYHS_HOST_DEVICE T weight_bias(T row_term, T shift) { return row_term - shift; }
// The lazy online shift m moves only when a tile's max passes it by more than kLazyShift2
// (weights stay <= 2^8); the limit is on the tile's max partial exponent.
constexpr double kLazyShift2 = 8;
template <class T>
PYHS_HOST_DEVICE T shift_limit(T m, T row_term) { return m + T(kLazyShift2) - row_term; }
// Exponents are <= 0 (up to the policy's rounding budget), so a shift >= -(kLazyShift2 - 1)
// never moves again: the main loop takes a tile's exact max only while a row of the warp
// has a lower one.
template <class T>
PYHS_HOST_DEVICE bool needs_exact_max(T m) { return !(m >= -T(kLazyShift2 - 1)); }
// The finite shift the weights take under m: 0 while no pair was seen.
template <class T>
PYHS_HOST_DEVICE T shift_of(T m) { return m == -std::numeric_limits<T>::infinity() ? T(0) : m; }
// A move: the new m and shift, and the factor for what is held (0 if nothing was).
template <class T>
struct OnlineStep {
  T max, shift, scale;
};
template <class T>
PYHS_HOST_DEVICE OnlineStep<T> online_step(T old_max, T tile_max) {
  const T max = tile_max > old_max ? tile_max : old_max;
  return {max, shift_of(max), T(std::exp2(old_max - shift_of(max)))};
}
// Factor moving a sum from shift `from` to shift `to`; 0 for a partial without pairs.
template <class T>
PYHS_HOST_DEVICE T rescale2(T from, T to) {
  return from == -std::numeric_limits<T>::infinity() ? T(0) : std::exp2(from - to);
}
// The static shift 0 bounds every exponent; exact enough when the smallest weight,
// 2^-(t (2 max ||z||)^2 log2 e), stays a normal number.
PYHS_HOST_DEVICE bool static_shift_certified(double t, double max_sq_norm, bool double_accumulation) {
  return t * 4.0 * max_sq_norm * kLog2E <= (double_accumulation ? 1000.0 : 120.0);
}
// d lse / d z_i = coefficient (l_i z_i - a_i), coefficient = -2t 2^(m2 - lse2) with the
// row's shift m2 and lse2 = lse log2(e); 0 for an empty slice.
PYHS_HOST_DEVICE double gradient_coefficient(double t, double m2, double lse2) {
  return lse2 == -std::numeric_limits<double>::infinity() ? 0.0 : -2.0 * t * rescale2(m2, lse2);
}

}  // namespace pyhypersphere::cuda::plan
