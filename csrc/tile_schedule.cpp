#include "tile_schedule.h"

#include <algorithm>

namespace pyhypersphere {
namespace {

// Round-robin tournament (circle method): n_even - 1 rounds, each a perfect matching
// of the blocks; with an odd count a dummy block sits out one pair per round.
void append_triangle_rounds(int64_t blocks, TileRounds& rounds) {
  if (blocks <= 0) return;
  std::vector<BlockPair> diagonal;
  for (int64_t a = 0; a < blocks; ++a) diagonal.push_back({a, a});
  rounds.push_back(std::move(diagonal));
  const int64_t n = blocks + (blocks % 2);  // the last index is the dummy when odd
  for (int64_t r = 0; r + 1 < n; ++r) {
    std::vector<BlockPair> round;
    auto add = [&](int64_t u, int64_t v) {
      if (u < blocks && v < blocks) round.push_back({std::min(u, v), std::max(u, v)});
    };
    add(r, n - 1);
    for (int64_t k = 1; k < n / 2; ++k) {
      add((r + k) % (n - 1), (r - k + (n - 1)) % (n - 1));
    }
    if (!round.empty()) rounds.push_back(std::move(round));
  }
}

// Latin-square rounds over the x-by-queue rectangle: in round r the smaller side's
// block s meets the larger side's block (s + r) mod larger, a matching.
void append_rectangle_rounds(int64_t x_blocks, int64_t queue_blocks, TileRounds& rounds) {
  if (x_blocks <= 0 || queue_blocks <= 0) return;
  const int64_t small = std::min(x_blocks, queue_blocks);
  const int64_t large = std::max(x_blocks, queue_blocks);
  for (int64_t r = 0; r < large; ++r) {
    std::vector<BlockPair> round;
    for (int64_t s = 0; s < small; ++s) {
      const int64_t l = (s + r) % large;
      const int64_t xb = x_blocks <= queue_blocks ? s : l;
      const int64_t qb = x_blocks <= queue_blocks ? l : s;
      round.push_back({xb, x_blocks + qb});
    }
    rounds.push_back(std::move(round));
  }
}

}  // namespace

TileRounds make_tile_rounds(int64_t x_blocks, int64_t queue_blocks, bool intra_batch,
                            int64_t part, int64_t num_parts) {
  TileRounds all;
  if (intra_batch) append_triangle_rounds(x_blocks, all);
  append_rectangle_rounds(x_blocks, queue_blocks, all);
  if (num_parts == 1) return all;

  int64_t total = 0;
  for (const auto& round : all) total += static_cast<int64_t>(round.size());
  const int64_t begin = total * part / num_parts;
  const int64_t end = total * (part + 1) / num_parts;
  TileRounds mine;
  int64_t index = 0;
  for (const auto& round : all) {
    std::vector<BlockPair> kept;
    for (const auto& tile : round) {
      if (index >= begin && index < end) kept.push_back(tile);
      ++index;
    }
    if (!kept.empty()) mine.push_back(std::move(kept));
  }
  return mine;
}

}  // namespace pyhypersphere
