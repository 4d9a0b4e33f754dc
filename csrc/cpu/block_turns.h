// Ordered turns on blocks of rows, for a dynamically scheduled tile loop.
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
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

namespace pyhypersphere {
namespace cpu {

class BlockTurns {
 public:
  explicit BlockTurns(int64_t blocks) : done_(new std::atomic<int64_t>[blocks]) {
    for (int64_t b = 0; b < blocks; ++b) done_[b].store(0, std::memory_order_relaxed);
  }

  // Waits until `turn` updates of `block` are done.  Returns false if abandoned.
  //
  // Spins briefly (a turn on a quiet machine comes within microseconds), then sleeps:
  // when the thread we wait for has been descheduled by a busy machine, a waiter that
  // spins or yields keeps its core busy and that thread waits for a time slice on its
  // own; a sleeping waiter frees the core, onto which the scheduler moves it at once.
  bool wait(int64_t block, int64_t turn) {
    for (int spins = 0; spins < kSpins; ++spins) {
      if (done_[block].load(std::memory_order_acquire) == turn) return true;
      if (abandoned_.load(std::memory_order_relaxed)) return false;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1);  // seq_cst with finish()'s increment: one of us sees the other
    wake_.wait(lock, [&] { return done_[block].load() == turn || abandoned_.load(); });
    sleepers_.fetch_sub(1);
    return !abandoned_.load();
  }

  // Marks this turn of `block` done, publishing the updates made during it.
  void finish(int64_t block) {
    done_[block].fetch_add(1);
    if (sleepers_.load() > 0) wake_all();
  }

  void abandon() {
    abandoned_.store(true);
    wake_all();
  }

 private:
  static constexpr int kSpins = 4096;  // about 10 us of loads

  void wake_all() {
    std::lock_guard<std::mutex> lock(mutex_);  // a waiter is either asleep or not yet checking
    wake_.notify_all();
  }

  std::unique_ptr<std::atomic<int64_t>[]> done_;
  std::atomic<bool> abandoned_{false};
  std::atomic<int64_t> sleepers_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace cpu
}  // namespace pyhypersphere
