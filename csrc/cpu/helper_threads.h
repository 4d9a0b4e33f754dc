// How the CPU kernels use threads without waiting on a descheduled one (issue 26, item 8).
//
// An OpenMP parallel region ends in a barrier: when another process holds the cores, the
// calling thread finishes its share and then waits, for a scheduler time slice or more,
// for a team thread that has not even started (measured: uniform_loss at N = 256, 2
// threads under one competing process, 124 ms against 0.82 ms with one thread).  So the
// kernels open no parallel region.  The calling thread claims and runs the work itself,
// and posts helper tasks to torch's inter-op pool (sleeping threads, no spinning); a
// helper that starts while work is left joins in, one that starts later finds the work
// closed and returns, as does one that starts late (the machine is busy: it would be
// descheduled again while holding a tile) or one that gets descheduled while working
// (SchedulingWatch).  The caller waits only for helpers that joined, asleep on a
// condition variable.  Results never depend on who ran what (the kernels order their
// updates: block_turns.h), so a helper that never runs (a forked data-loader worker
// whose pool has no threads) costs speed, never correctness.
//
// SerialScope: inside an op call, every ATen op the kernel makes on its O(N d) buffers
// runs inline (one thread: no parallel region), and every BLAS call (MKL) runs on one
// thread, on the caller and on the helpers alike, so the tile GEMMs are the same
// single-threaded calls whatever the thread count (bitwise reproducible results).
#pragma once

#include <cstdint>
#include <functional>

namespace pyhypersphere {
namespace cpu {

class SerialScope {
 public:
  SerialScope();
  ~SerialScope();
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  int omp_threads_;  // this thread's OpenMP thread count before the scope
  int blas_threads_;  // MKL's thread-local setting before the scope (0: its global one)
  bool outermost_;
};

// torch's intra-op thread count as the user set it (at::get_num_threads()), also inside a
// SerialScope, where at::get_num_threads() says 1.
int64_t intra_op_threads();

// Calls work(0) on the calling thread and work(1..helpers) on helper tasks that start
// while work(0) is running, each inside a SerialScope; returns once work(0) and every
// helper that started have returned, rethrowing the first exception any of them threw.
// work(p) must claim its share itself and return when nothing is left to claim.
void run_with_helpers(int64_t helpers, const std::function<void(int64_t participant)>& work);

// For a helper's claim loop: whether the helper has run undisturbed since the watch
// started.  A helper that the scheduler has descheduled for a while (a busy machine)
// stops claiming work: holding a tile the caller waits for would cost the call a time
// slice each time, and the caller finishes the rest alone.
class SchedulingWatch {
 public:
  SchedulingWatch();
  bool undisturbed() const;

 private:
  double wall_, cpu_;  // seconds at the start: wall clock, this thread's CPU time
};

// Statistics of this thread's latest run_with_helpers call (tests: no timing).
struct HelperRun {
  int64_t helpers_posted = 0;
  int64_t helpers_joined = 0;
};
HelperRun last_helper_run();

// Tests only: while held, a helper task waits before joining, as one whose thread the
// scheduler does not run.  A kernel must then finish on the calling thread alone.
void hold_helpers(bool held);

}  // namespace cpu
}  // namespace pyhypersphere
