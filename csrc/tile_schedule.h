// Which tiles of the pair matrix a uniformity kernel visits, and in what order.
//
// Rows are cut into blocks: x's rows into `x_blocks` blocks, then the queue's rows
// into `queue_blocks` blocks (a block never straddles x and the queue).  A tile is an
// unordered pair of blocks {a, b}; a == b is a diagonal tile (pairs i < j inside it).
// The tiles are:
//   - every {a, b} with a <= b among x's blocks when intra_batch (upper triangle), and
//   - every {a, q} with a in x and q in the queue.
// Each unordered pair of rows is thus covered exactly once.
//
// The tiles are grouped in rounds; within a round no block occurs twice, so the tiles
// of a round can run in parallel and each write both of its blocks' accumulators
// without locks or atomics.  Rounds run one after another, so each accumulator is
// updated in a fixed order whatever the thread count: results are bitwise
// reproducible.  Splitting into parts (one per process in distributed training)
// keeps a contiguous, balanced slice of the tiles, in the same order.
#pragma once

#include <cstdint>
#include <vector>

namespace pyhypersphere {

struct BlockPair {
  int64_t a;
  int64_t b;  // a == b: a diagonal tile
};

using TileRounds = std::vector<std::vector<BlockPair>>;

TileRounds make_tile_rounds(int64_t x_blocks, int64_t queue_blocks, bool intra_batch,
                            int64_t part, int64_t num_parts);

// Number of blocks of `block_rows` rows needed for `rows` rows.
inline int64_t blocks_for(int64_t rows, int64_t block_rows) {
  return (rows + block_rows - 1) / block_rows;
}

}  // namespace pyhypersphere
