// Holds the closed-form tile order used by the CUDA kernels (csrc/cuda/tile_order.h)
// to the reference schedule (csrc/tile_schedule.cpp), tile by tile: the same tiles in
// the same order, the same slices per part, and previous_visit equal to a brute-force
// scan.  Host only; built and run by cmake/cuda_kernels.cmake (.ci/cuda_compile_check.sh).
#include "../tile_order.h"
#include "../../tile_schedule.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

using pyhypersphere::BlockPair;
using pyhypersphere::make_tile_rounds;
using pyhypersphere::cuda::TileOrder;

int failures = 0;

void fail(const char* what, int64_t x, int64_t q, bool intra, int64_t f, int64_t got, int64_t want) {
  if (++failures <= 20) {
    std::printf("FAIL %s: x_blocks=%lld queue_blocks=%lld intra=%d f=%lld got %lld want %lld\n", what,
                (long long)x, (long long)q, (int)intra, (long long)f, (long long)got, (long long)want);
  }
}

std::vector<BlockPair> flatten(const pyhypersphere::TileRounds& rounds) {
  std::vector<BlockPair> tiles;
  for (const auto& round : rounds) tiles.insert(tiles.end(), round.begin(), round.end());
  return tiles;
}

void check(int64_t x, int64_t q, bool intra) {
  const std::vector<BlockPair> tiles = flatten(make_tile_rounds(x, q, intra, 0, 1));
  const TileOrder order(x, q, intra);
  const int64_t size = static_cast<int64_t>(tiles.size());
  if (order.size() != size) {
    fail("size", x, q, intra, -1, order.size(), size);
    return;
  }
  std::vector<int64_t> last(static_cast<size_t>(x + q), -1);  // brute-force previous visit
  for (int64_t f = 0; f < size; ++f) {
    const auto tile = order.tile(f);
    if (tile.a != tiles[f].a) fail("tile.a", x, q, intra, f, tile.a, tiles[f].a);
    if (tile.b != tiles[f].b) fail("tile.b", x, q, intra, f, tile.b, tiles[f].b);
    const int64_t pa = order.previous_visit(tiles[f].a, f);
    if (pa != last[tiles[f].a]) fail("previous_visit(a)", x, q, intra, f, pa, last[tiles[f].a]);
    if (tiles[f].b != tiles[f].a) {
      const int64_t pb = order.previous_visit(tiles[f].b, f);
      if (pb != last[tiles[f].b]) fail("previous_visit(b)", x, q, intra, f, pb, last[tiles[f].b]);
    }
    last[tiles[f].a] = f;
    last[tiles[f].b] = f;
  }
  // Side groups: the previous rectangle tile of the same small-side block whose large-side
  // block has the same residue mod G, by brute force, for several G.
  if (order.small_blocks() > 0) {
    for (int64_t groups : {int64_t(1), int64_t(2), int64_t(3), int64_t(5), order.large_blocks()}) {
      std::vector<int64_t> last_in_group(static_cast<size_t>(x + q) * static_cast<size_t>(x + q + 1), -1);
      for (int64_t f = 0; f < size; ++f) {
        if (!order.in_rectangle(f)) continue;
        const auto t = order.rectangle_tile(f);
        const int64_t small = order.x_is_small() ? tiles[f].a : tiles[f].b - x;
        const int64_t large = order.x_is_small() ? tiles[f].b - x : tiles[f].a;
        if (t.s != small || t.l != large) fail("rectangle_tile", x, q, intra, f, t.s * 1000 + t.l, small * 1000 + large);
        const size_t key = static_cast<size_t>(small) * static_cast<size_t>(x + q + 1) + static_cast<size_t>(large % groups);
        const int64_t got = order.previous_group_visit(f, groups);
        if (got != last_in_group[key]) fail("previous_group_visit", x, q, intra, f, got, last_in_group[key]);
        last_in_group[key] = f;
      }
    }
  }
  // Parts: make_tile_rounds keeps the slice [size*p/np, size*(p+1)/np) of the numbering.
  for (int64_t parts : {2, 3, 7}) {
    for (int64_t p = 0; p < parts; ++p) {
      const std::vector<BlockPair> mine = flatten(make_tile_rounds(x, q, intra, p, parts));
      const int64_t begin = size * p / parts, end = size * (p + 1) / parts;
      if (static_cast<int64_t>(mine.size()) != end - begin) {
        fail("part size", x, q, intra, p, static_cast<int64_t>(mine.size()), end - begin);
        continue;
      }
      for (int64_t f = begin; f < end; ++f) {
        const auto tile = order.tile(f);
        if (tile.a != mine[f - begin].a || tile.b != mine[f - begin].b) {
          fail("part tile", x, q, intra, f, tile.a * 1000000 + tile.b,
               mine[f - begin].a * 1000000 + mine[f - begin].b);
        }
      }
    }
  }
}

}  // namespace

int main() {
  int64_t cases = 0;
  for (int64_t x = 1; x <= 14; ++x) {
    for (int64_t q = 0; q <= 14; ++q) {
      for (bool intra : {true, false}) {
        if (!intra && q == 0) continue;  // no pairs: the op rejects it
        check(x, q, intra);
        ++cases;
      }
    }
  }
  const int64_t larger[][2] = {{37, 0}, {64, 0}, {63, 64}, {64, 63}, {5, 37}, {37, 5}, {100, 3}, {3, 100}};
  for (const auto& xq : larger) {
    check(xq[0], xq[1], true);
    if (xq[1] > 0) check(xq[0], xq[1], false);
    cases += xq[1] > 0 ? 2 : 1;
  }
  if (failures != 0) {
    std::printf("tile_order_test: %d failures\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("tile_order_test: %lld schedules match make_tile_rounds\n", (long long)cases);
  return EXIT_SUCCESS;
}
