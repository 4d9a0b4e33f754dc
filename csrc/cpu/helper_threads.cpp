#include "helper_threads.h"

#include <ATen/Parallel.h>

#include <dlfcn.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyhypersphere {
namespace cpu {
namespace {

// MKL's per-thread thread count (returns the previous one; 0 means "the global
// setting"), looked up in the loaded libraries: libtorch links MKL on x86 wheels.  The C
// entry point (mkl.h's mkl_set_num_threads_local is a macro for it; the lower-case symbol
// is the Fortran one, which takes a pointer).  Absent (OpenBLAS builds), BLAS keeps its
// own threading.
using blas_threads_fn = int (*)(int);
blas_threads_fn blas_local_threads() {
  static const auto fn =
      reinterpret_cast<blas_threads_fn>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
  return fn;
}

using Clock = std::chrono::steady_clock;

// A helper that starts this long after it was posted is on a busy machine (an idle pool
// thread wakes within tens of microseconds): it would likely be descheduled again while
// holding a tile that the caller then waits for, so it does not join.
constexpr auto kMaxStartDelay = std::chrono::microseconds(500);

// A helper that has lost more than this much of its wall time to other threads since it
// joined (and at least kDisturbedFraction of it) stops claiming tiles, for the same reason.
constexpr double kDisturbedSeconds = 200e-6;
constexpr double kDisturbedFraction = 0.25;

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double wall_seconds() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

thread_local int64_t threads_outside_scope = 0;  // 0: not inside a SerialScope
thread_local HelperRun latest_run;
std::atomic<bool> helpers_held{false};

// What a run shares with its helper tasks, which may start after the run has returned:
// they then read `open` only.
struct SharedRun {
  const std::function<void(int64_t)>* work = nullptr;
  std::mutex mutex;
  std::condition_variable joined_done;
  bool open = true;
  int64_t joined = 0, running = 0;
  std::exception_ptr error;
};

}  // namespace

SerialScope::SerialScope() : omp_threads_(1), blas_threads_(0), outermost_(threads_outside_scope == 0) {
  if (outermost_) threads_outside_scope = at::get_num_threads();
#ifdef _OPENMP
  omp_threads_ = omp_get_max_threads();
  omp_set_num_threads(1);  // this thread's setting only: ATen's at::parallel_for runs inline
#endif
  if (auto fn = blas_local_threads()) blas_threads_ = fn(1);
}

SerialScope::~SerialScope() {
  if (auto fn = blas_local_threads()) fn(blas_threads_);
#ifdef _OPENMP
  omp_set_num_threads(omp_threads_);
#endif
  if (outermost_) threads_outside_scope = 0;
}

int64_t intra_op_threads() {
  return threads_outside_scope > 0 ? threads_outside_scope : at::get_num_threads();
}

void run_with_helpers(int64_t helpers, const std::function<void(int64_t)>& work) {
  auto shared = std::make_shared<SharedRun>();
  shared->work = &work;
  const auto posted = Clock::now();
  for (int64_t h = 0; h < helpers; ++h) {
    at::launch([shared, posted] {
      while (helpers_held.load(std::memory_order_relaxed)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (Clock::now() - posted > kMaxStartDelay) return;
      int64_t participant;
      {
        std::lock_guard<std::mutex> lock(shared->mutex);
        if (!shared->open) return;  // the caller finished without us
        participant = ++shared->joined;
        ++shared->running;
      }
      std::exception_ptr error;
      try {
        SerialScope serial;
        (*shared->work)(participant);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(shared->mutex);
      if (error && !shared->error) shared->error = error;
      if (--shared->running == 0) shared->joined_done.notify_all();
    });
  }
  std::exception_ptr error;
  try {
    SerialScope serial;
    work(0);
  } catch (...) {
    error = std::current_exception();
  }
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->open = false;
  shared->joined_done.wait(lock, [&] { return shared->running == 0; });
  latest_run = {helpers, shared->joined};
  if (!error) error = shared->error;
  lock.unlock();
  if (error) std::rethrow_exception(error);
}

SchedulingWatch::SchedulingWatch() : wall_(wall_seconds()), cpu_(thread_cpu_seconds()) {}

bool SchedulingWatch::undisturbed() const {
  const double wall = wall_seconds() - wall_, lost = wall - (thread_cpu_seconds() - cpu_);
  return !(lost > kDisturbedSeconds && lost > kDisturbedFraction * wall);
}

HelperRun last_helper_run() { return latest_run; }

void hold_helpers(bool held) { helpers_held.store(held, std::memory_order_relaxed); }

}  // namespace cpu
}  // namespace pyhypersphere
