// The tile order of tile_schedule.h in closed form, for kernels that cannot hold the
// tile list: N = 1M rows in blocks of 128 make 33.5M tiles, a list larger than the
// rows themselves.  Host and device code; no CUDA dependency, so the host test
// (csrc/cuda/tests/tile_order_test.cpp) holds it to make_tile_rounds tile by tile.
//
// Tiles are numbered f = 0, 1, ... in the order of make_tile_rounds(x_blocks,
// queue_blocks, intra_batch, 0, 1) flattened round after round.  A part of num_parts
// is the slice [size * part / num_parts, size * (part + 1) / num_parts) of that
// numbering, exactly the tiles make_tile_rounds keeps for that part.
//
//   tile(f)                    the blocks {a, b} of tile f (a <= b; a == b: diagonal)
//   previous_visit(block, f)   the largest f' < f whose tile holds `block` (f's tile
//                              must hold it), or -1: the tile whose update of the
//                              block's accumulators must land before f's.
//
// Rectangle tiles (x's blocks against the queue's): round r meets each block s of the
// side with fewer blocks (the small side) with block l = (s + r) mod large of the other.
// With G side groups the small side keeps one private state per residue l mod G, so that
// consecutive rounds update different states and one state's updates are G rounds apart:
//   rectangle_tile(f)                  {r, s, l} of rectangle tile f (in_rectangle(f))
//   previous_group_visit(f, G)         the largest rectangle tile f' < f of the same small
//                                      block whose large block has the same residue, or -1
#pragma once

#include "../uniform_math.h"  // PYHS_HOST_DEVICE

#include <cstdint>

namespace pyhypersphere {
namespace cuda {

struct TilePair {
  int64_t a;
  int64_t b;
};

class TileOrder {
 public:
  PYHS_HOST_DEVICE TileOrder(int64_t x_blocks, int64_t queue_blocks, bool intra_batch)
      : x_(x_blocks), q_(queue_blocks), intra_(intra_batch && x_blocks > 0) {
    // Round-robin rounds over x's blocks (tile_schedule.cpp): an odd count gets a dummy
    // block, so every round is a matching of n_ blocks with n_ / 2 pairs, one of which
    // (odd count) involves the dummy and is dropped.
    n_ = x_ + (x_ % 2);
    per_round_ = (x_ % 2 == 0) ? x_ / 2 : (x_ - 1) / 2;
    triangle_ = intra_ ? x_ + (n_ - 1) * per_round_ : 0;
    small_ = x_ < q_ ? x_ : q_;
    large_ = x_ < q_ ? q_ : x_;
    rectangle_ = x_ * q_;
  }

  PYHS_HOST_DEVICE int64_t size() const { return triangle_ + rectangle_; }

  PYHS_HOST_DEVICE TilePair tile(int64_t f) const {
    if (intra_) {
      if (f < x_) return {f, f};
      f -= x_;
      if (f < triangle_ - x_) return triangle_pair(f / per_round_, f % per_round_);
      f -= triangle_ - x_;
    }
    const int64_t r = f / small_, s = f % small_;
    const int64_t l = (s + r) % large_;
    const bool x_small = x_ <= q_;
    return {x_small ? s : l, x_ + (x_small ? l : s)};
  }

  struct RectangleTile {
    int64_t r, s, l;
  };
  PYHS_HOST_DEVICE bool in_rectangle(int64_t f) const { return f >= triangle_ && small_ > 0; }
  PYHS_HOST_DEVICE bool x_is_small() const { return x_ <= q_; }
  PYHS_HOST_DEVICE int64_t small_blocks() const { return small_; }
  PYHS_HOST_DEVICE int64_t large_blocks() const { return large_; }
  PYHS_HOST_DEVICE RectangleTile rectangle_tile(int64_t f) const {
    f -= triangle_;
    const int64_t r = f / small_, s = f % small_;
    return {r, s, (s + r) % large_};
  }
  PYHS_HOST_DEVICE int64_t previous_group_visit(int64_t f, int64_t groups) const {
    const RectangleTile t = rectangle_tile(f);
    // Block s meets l = s, s + 1, ..., large - 1, then 0, 1, ..., s - 1 in rounds 0, 1, ...
    // The last visit with the same residue: l - G, G rounds earlier, if it came before l
    // in that sequence; else, for l < s, the largest l' = l (mod G) in [s, large), met
    // in round l' - s.
    const int64_t floor = t.l >= t.s ? t.s : 0;
    if (t.l - groups >= floor) return f - groups * small_;
    if (t.l < t.s) {
      const int64_t last = t.l + (large_ - 1 - t.l) / groups * groups;
      if (last >= t.s) return triangle_ + (last - t.s) * small_ + t.s;
    }
    return -1;
  }

  PYHS_HOST_DEVICE int64_t previous_visit(int64_t block, int64_t f) const {
    if (intra_) {
      if (f < x_) return -1;  // the diagonal round comes first
      if (f < triangle_) return triangle_visit_before(block, (f - x_) / per_round_);
      f -= triangle_;
    }
    const int64_t r = f / small_;
    const bool x_small = x_ <= q_;
    const bool on_small_side = (block < x_) == x_small;
    const int64_t side_index = block < x_ ? block : block - x_;
    if (on_small_side) {
      // The small side's blocks meet one large block in every rectangle round.
      if (r >= 1) return triangle_ + (r - 1) * small_ + side_index;
      return before_rectangle(block);
    }
    // Large-side block l meets small block s = (l - r) mod large in round r when s < small.
    const int64_t s = (side_index - r % large_ + large_) % large_;
    int64_t r_prev, s_prev;
    if (s + 1 < small_) {
      r_prev = r - 1;
      s_prev = s + 1;
    } else {
      r_prev = r - (large_ - s);  // the last round with (l - r') mod large == 0
      s_prev = 0;
    }
    if (r_prev >= 0) return triangle_ + r_prev * small_ + s_prev;
    return before_rectangle(block);
  }

 private:
  // Pair p of triangle round rr (tile_schedule.cpp's append_triangle_rounds).
  PYHS_HOST_DEVICE TilePair triangle_pair(int64_t rr, int64_t p) const {
    const int64_t m = n_ - 1;
    const bool even = x_ % 2 == 0;
    if (even && p == 0) return {rr, m};  // the pair (rr, n - 1); rr < m
    const int64_t k = even ? p : p + 1;
    const int64_t u = (rr + k) % m;
    const int64_t v = (rr - k + m) % m;
    return {u < v ? u : v, u < v ? v : u};
  }

  // Position of x block c in triangle round rr, or -1 when it sits out (odd count).
  PYHS_HOST_DEVICE int64_t triangle_position(int64_t c, int64_t rr) const {
    const int64_t m = n_ - 1;
    const bool even = x_ % 2 == 0;
    if (c == m) return 0;  // only with an even count: block n - 1 meets rr at position 0
    if (c == rr) return even ? 0 : -1;
    const int64_t k1 = (c - rr + m) % m;  // c == rr + k1 (mod m), 1 <= k1 <= m - 1
    const int64_t k = k1 <= n_ / 2 - 1 ? k1 : m - k1;
    return even ? k : k - 1;
  }

  // Latest tile of x block c in a triangle round before rr, else its diagonal tile.
  // A block sits out at most one round, so this looks back at most two rounds.
  PYHS_HOST_DEVICE int64_t triangle_visit_before(int64_t c, int64_t rr) const {
    for (int64_t q = rr - 1; q >= 0; --q) {
      const int64_t p = triangle_position(c, q);
      if (p >= 0) return x_ + q * per_round_ + p;
    }
    return c;
  }

  // Latest tile of `block` before the rectangle rounds: only x blocks have one.
  PYHS_HOST_DEVICE int64_t before_rectangle(int64_t block) const {
    if (!intra_ || block >= x_) return -1;
    return triangle_visit_before(block, n_ - 1);
  }

  int64_t x_, q_;
  bool intra_;
  int64_t n_ = 0, per_round_ = 0, triangle_ = 0, small_ = 0, large_ = 0, rectangle_ = 0;
};

}  // namespace cuda
}  // namespace pyhypersphere
