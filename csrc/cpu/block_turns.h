// Ordered, lock-free turns on blocks of rows, for a dynamically scheduled tile loop.
//
// The tiles are numbered in schedule order and claimed by threads in that order.  A
// tile's expensive, independent work (Gram product, exps) runs at once; its updates of
// a block's accumulators wait for that block's previous tile in the schedule.  Every
// block is therefore updated in the schedule's order whatever the thread count or
// timing (results are bitwise reproducible), with no barrier between rounds: a thread
// descheduled by a busy machine holds up only the tiles that share its blocks.
//
// No deadlock: a tile only waits for tiles with smaller numbers, all already claimed,
// so the smallest unfinished tile never waits.  If a thread fails, `abandon()` releases
// every waiter.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

namespace pyhypersphere {
namespace cpu {

class BlockTurns {
 public:
  explicit BlockTurns(int64_t blocks) : done_(new std::atomic<int64_t>[blocks]) {
    for (int64_t b = 0; b < blocks; ++b) done_[b].store(0, std::memory_order_relaxed);
  }

  // Waits until `turn` updates of `block` are done.  Returns false if abandoned.
  bool wait(int64_t block, int64_t turn) const {
    for (int spins = 0; done_[block].load(std::memory_order_acquire) != turn; ++spins) {
      if (abandoned_.load(std::memory_order_relaxed)) return false;
      // Yield rather than spin: on an oversubscribed machine the thread we wait for
      // may need this core.
      if (spins > 64) std::this_thread::yield();
    }
    return true;
  }

  // Marks this turn of `block` done, publishing the updates made during it.
  void finish(int64_t block) { done_[block].fetch_add(1, std::memory_order_release); }

  void abandon() { abandoned_.store(true, std::memory_order_relaxed); }

 private:
  std::unique_ptr<std::atomic<int64_t>[]> done_;
  std::atomic<bool> abandoned_{false};
};

}  // namespace cpu
}  // namespace pyhypersphere
