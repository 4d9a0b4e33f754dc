// Running a tile schedule (tile_schedule.h) on the CPU threads, each block's
// accumulators updated in schedule order (block_turns.h): the loop shared by the CPU
// kernels (uniform_cpu.cpp, contrastive_cpu.cpp).
#pragma once

#include "../tile_schedule.h"
#include "block_turns.h"
#include "helper_threads.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace pyhypersphere {
namespace cpu {

// Rows per block: large enough for efficient tile GEMMs and L2-resident tiles,
// small enough that small problems still have tiles for every thread.
inline int64_t cpu_block_rows(int64_t rows) {
  if (rows >= 8192) return 256;
  if (rows >= 2048) return 128;
  return 64;
}

// A tile and, for each of its two blocks, how many earlier tiles of the schedule update
// that block (-1: this tile does not update it).
struct ScheduledTile {
  BlockPair blocks;
  int64_t turn_a;
  int64_t turn_b;
};

// Numbers the tiles of `rounds` in order.  writes_a(pair) / writes_b(pair) say whether a
// tile updates the accumulators of its first / second block.
template <typename WritesA, typename WritesB>
std::vector<ScheduledTile> number_tiles(const TileRounds& rounds, int64_t blocks,
                                        WritesA writes_a, WritesB writes_b) {
  std::vector<int64_t> seen(blocks, 0);
  std::vector<ScheduledTile> tiles;
  for (const auto& round : rounds) {
    for (const auto& pair : round) {
      const int64_t turn_a = writes_a(pair) ? seen[pair.a]++ : -1;
      const int64_t turn_b = writes_b(pair) ? seen[pair.b]++ : -1;
      tiles.push_back({pair, turn_a, turn_b});
    }
  }
  return tiles;
}

// A helper takes tens of microseconds to start (a time slice on a busy machine), and the
// caller may then wait for the tile it holds: with fewer than two tiles each it costs more
// than it saves (uniform N = 128, 3 tiles, 2 threads, load average 15-19: forward+backward
// 0.55 ms with a helper, 0.15-0.31 ms without; docs/results/cpu.md, issue 26 item 7).
constexpr int64_t kMinTilesPerParticipant = 2;

// Calls visit(tile, workspace) for every tile, the calling thread and helper threads
// (helper_threads.h: at most one participant per intra-op thread, per
// kMinTilesPerParticipant tiles and `max_workers` in all) claiming tiles in schedule
// order (dynamic load balance); `workspace` is that participant's slice of
// `workspace_per_worker` elements.  visit brackets each update of
// a block with turns.wait(block, turn) / turns.finish(block) and returns false when wait
// does (another participant failed: stop).  An exception in one participant releases
// the others and propagates.  The results do not depend on who runs which tile (the
// turns order every update), so `max_workers` only bounds the workspace's memory.
template <typename T, typename Visit>
void run_ordered_tiles(const std::vector<ScheduledTile>& tiles, BlockTurns& turns,
                       int64_t workspace_per_worker, Visit visit,
                       int64_t max_workers = std::numeric_limits<int64_t>::max()) {
  const int64_t total = static_cast<int64_t>(tiles.size());
  if (total == 0) return;
  const int64_t workers = std::max<int64_t>(
      1, std::min({intra_op_threads(), total / kMinTilesPerParticipant, max_workers}));
  std::vector<T> workspace(static_cast<size_t>(workers) * workspace_per_worker, T(0));
  std::atomic<int64_t> next{0};
  run_with_helpers(workers - 1, [&](int64_t participant) {
    T* ws = workspace.data() + static_cast<size_t>(participant) * workspace_per_worker;
    // Helpers only: the watch reads this thread's CPU time, a system call, and there
    // (Linux 6.18, EEVDF: the read updates the task's accounting) a preemption that is
    // due happens at once.  Started by the caller, it put a scheduler period (6-21 ms on
    // a busy machine) inside most one-thread calls (issue 26, item 8; docs/results/cpu.md).
    std::optional<SchedulingWatch> watch;
    if (participant != 0) watch.emplace();
    try {
      // A helper leaves the rest to the caller once it has been descheduled.
      for (int64_t k; (participant == 0 || watch->undisturbed()) && (k = next.fetch_add(1)) < total;) {
        if (!visit(tiles[k], ws)) return;
      }
    } catch (...) {
      turns.abandon();
      throw;
    }
  });
}

}  // namespace cpu
}  // namespace pyhypersphere
