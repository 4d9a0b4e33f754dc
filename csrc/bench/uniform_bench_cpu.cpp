// Times the CPU uniformity kernel without Python: forward (loss only) and forward with
// gradient, median of repeated runs (std::chrono), next to at::mm on the same flops.
//
//   uniform_bench_cpu [N=16384] [d=128] [repeats=5]
#include "ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

namespace {

double median_seconds(const std::function<void()>& fn, int repeats) {
  fn();  // warm-up
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 16384;
  const int64_t d = argc > 2 ? std::atoll(argv[2]) : 128;
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  if (n < 2 || d < 1 || repeats < 1) {
    std::fprintf(stderr, "usage: %s [N >= 2] [d >= 1] [repeats >= 1]\n", argv[0]);
    return 2;
  }
  at::manual_seed(0);
  at::Tensor x = at::randn({n, d});
  x = x / x.norm(2, {1}, /*keepdim=*/true);  // unit rows, as an encoder's normalized features
  double lse = 0;
  const double fwd = median_seconds([&] {
    lse = std::get<0>(pyhypersphere::uniform_lse_cpu(x, std::nullopt, 2.0, true, 0, 1, false, false)).item<double>();
  }, repeats);
  const double fwd_grad = median_seconds([&] {
    pyhypersphere::uniform_lse_cpu(x, std::nullopt, 2.0, true, 0, 1, true, false);
  }, repeats);
  // The roofline: at::mm [N, d] x [d, N] in column blocks into a reused buffer, as a tiled
  // Gram works (a whole N x N output would measure memory bandwidth instead).
  const int64_t columns = std::min<int64_t>(n, 4096);
  const at::Tensor xt = x.t().contiguous();
  at::Tensor out = at::empty({n, columns});
  const double mm = median_seconds([&] {
    for (int64_t c = 0; c < n; c += columns) {
      const int64_t w = std::min(columns, n - c);
      at::Tensor o = out.narrow(1, 0, w);
      at::mm_out(o, x, xt.narrow(1, c, w));
    }
  }, repeats);

  // Flops: the forward is one Gram product over the N(N-1)/2 pairs (2d flops each); the
  // gradient adds two more such products.  at::mm of [N, d] x [d, N] is 2 N^2 d flops.
  const double pair_flops = double(n) * double(n - 1) / 2 * 2 * double(d);
  const double mm_rate = 2.0 * n * n * d / mm;
  std::printf("threads %d, N %lld, d %lld, float32, uniformity loss %.7f\n", at::get_num_threads(),
              static_cast<long long>(n), static_cast<long long>(d),
              lse - std::log(double(n) * double(n - 1) / 2));
  std::printf("%-22s %10s %12s %14s\n", "", "median s", "GFLOP/s", "of at::mm");
  std::printf("%-22s %10.4f %12.1f %13.0f%%\n", "forward", fwd, pair_flops / fwd / 1e9,
              100 * pair_flops / fwd / mm_rate);
  std::printf("%-22s %10.4f %12.1f %13.0f%%\n", "forward + gradient", fwd_grad,
              3 * pair_flops / fwd_grad / 1e9, 100 * 3 * pair_flops / fwd_grad / mm_rate);
  std::printf("%-22s %10.4f %12.1f %13s\n", "at::mm [N,d]x[d,N]", mm, mm_rate / 1e9, "100%");
  return 0;
}
