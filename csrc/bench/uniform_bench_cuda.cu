// Standalone smoke test and benchmark of the CUDA uniformity kernels (no torch).
//
//   uniform_bench_cuda [--d D] [--reps R] [--t T] [--skip-check] [--skip-timing] [N ...]
//
// 1. Smoke test (first, unless --skip-check): every precision, on problems whose sizes
//    are not multiples of the tile (odd d, a queue, queue-only pairs, 3 parts combined),
//    lse and gradient against a float64 host reference computed on the same operand
//    values; exits with status 1 if an error exceeds its precision's tolerance.
// 2. Timings: random unit-norm rows, d = 128 (--d), N = 8192 32768 65536 131072 (or the
//    N given), TF32 / FP32 (3xTF32) / BF16; each call is the whole op (workspace
//    initialization, packing, tiles, finish, gradient), timed with CUDA events, median
//    of R (--reps, default 5) after 2 warm-up calls.  --skip-timing: the smoke test only
//    (the compute-sanitizer run of docs/cuda.md).
//    TFLOP/s count the Gram products of an exact triangle: N(N-1)/2 pairs x 2d flops
//    for the forward, three such products (Gram, W Z, W^T Z) with the gradient.
#include "cuda/uniform_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using pyhypersphere::cuda::UniformPrecision;
using pyhypersphere::cuda::UniformProblem;

namespace {

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    const cudaError_t err_ = (call);                                                       \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                  \
                   cudaGetErrorString(err_));                                              \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

const char* name_of(UniformPrecision p) {
  switch (p) {
    case UniformPrecision::kBf16: return "bf16";
    case UniformPrecision::kFp16: return "fp16";
    case UniformPrecision::kTf32: return "tf32";
    case UniformPrecision::kFp32: return "fp32(3xTF32)";
    case UniformPrecision::kFp64: return "fp64";
  }
  return "?";
}

size_t operand_bytes(UniformPrecision p) {
  switch (p) {
    case UniformPrecision::kBf16:
    case UniformPrecision::kFp16: return 2;
    case UniformPrecision::kFp64: return 8;
    default: return 4;
  }
}
size_t acc_bytes(UniformPrecision p) { return p == UniformPrecision::kFp64 ? 8 : 4; }

// Rows in the operand type, and the exact operand values back as double.
std::vector<unsigned char> encode(const std::vector<double>& z, UniformPrecision p,
                                  std::vector<double>& stored) {
  std::vector<unsigned char> bytes(z.size() * operand_bytes(p));
  stored.resize(z.size());
  for (size_t i = 0; i < z.size(); ++i) {
    switch (p) {
      case UniformPrecision::kBf16: {
        const __nv_bfloat16 v = __float2bfloat16(static_cast<float>(z[i]));
        std::memcpy(&bytes[i * 2], &v, 2);
        stored[i] = __bfloat162float(v);
        break;
      }
      case UniformPrecision::kFp16: {
        const __half v = __float2half(static_cast<float>(z[i]));
        std::memcpy(&bytes[i * 2], &v, 2);
        stored[i] = __half2float(v);
        break;
      }
      case UniformPrecision::kFp64: {
        std::memcpy(&bytes[i * 8], &z[i], 8);
        stored[i] = z[i];
        break;
      }
      default: {
        const float v = static_cast<float>(z[i]);
        std::memcpy(&bytes[i * 4], &v, 4);
        stored[i] = v;
      }
    }
  }
  return bytes;
}

// Random unit-norm rows, centered (the kernels' contract).  For d = 1, where unit rows
// are +-1 (exact duplicates), normal values instead.
std::vector<double> random_rows(int64_t rows, int64_t d, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> z(static_cast<size_t>(rows * d));
  for (int64_t i = 0; i < rows; ++i) {
    double norm = 0;
    for (int64_t c = 0; c < d; ++c) {
      const double v = normal(rng);
      z[i * d + c] = v;
      norm += v * v;
    }
    norm = d == 1 ? 1.0 : std::sqrt(norm);
    for (int64_t c = 0; c < d; ++c) z[i * d + c] /= norm;
  }
  std::vector<double> mean(d, 0.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < d; ++c) mean[c] += z[i * d + c];
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < d; ++c) z[i * d + c] -= mean[c] / double(rows);
  return z;
}

struct DeviceRun {
  double lse = 0;
  std::vector<double> grad;
};

// One op call on device buffers; returns lse and (when asked) the gradient.
DeviceRun run_once(const UniformProblem& base, const std::vector<unsigned char>& rows) {
  UniformProblem problem = base;
  void *d_rows = nullptr, *d_ws = nullptr, *d_lse = nullptr, *d_grad = nullptr;
  const size_t ws = pyhypersphere::cuda::uniform_workspace_bytes(problem);
  const size_t grad_elems = static_cast<size_t>((problem.n + problem.k) * problem.d);
  const size_t ab = acc_bytes(problem.precision);
  CHECK_CUDA(cudaMalloc(&d_rows, rows.size()));
  CHECK_CUDA(cudaMalloc(&d_ws, ws));
  CHECK_CUDA(cudaMalloc(&d_lse, sizeof(double)));  // lse is a double in every precision
  if (problem.compute_grad) CHECK_CUDA(cudaMalloc(&d_grad, grad_elems * ab));
  CHECK_CUDA(cudaMemcpy(d_rows, rows.data(), rows.size(), cudaMemcpyHostToDevice));
  problem.rows = d_rows;
  CHECK_CUDA(pyhypersphere::cuda::launch_uniform_lse(problem, d_ws, d_lse, d_grad, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  DeviceRun out;
  CHECK_CUDA(cudaMemcpy(&out.lse, d_lse, sizeof(double), cudaMemcpyDeviceToHost));
  if (problem.compute_grad) {
    out.grad.resize(grad_elems);
    if (ab == 8) {
      CHECK_CUDA(cudaMemcpy(out.grad.data(), d_grad, grad_elems * 8, cudaMemcpyDeviceToHost));
    } else {
      std::vector<float> g(grad_elems);
      CHECK_CUDA(cudaMemcpy(g.data(), d_grad, grad_elems * 4, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < grad_elems; ++i) out.grad[i] = g[i];
    }
  }
  cudaFree(d_rows);
  cudaFree(d_ws);
  cudaFree(d_lse);
  cudaFree(d_grad);
  return out;
}

// float64 reference over all pairs (no parts): lse and d lse / d z.
DeviceRun reference(const std::vector<double>& z, int64_t n, int64_t k, int64_t d, double t,
                    bool intra) {
  const int64_t rows = n + k;
  auto exponent = [&](int64_t i, int64_t j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) {
      const double diff = z[i * d + c] - z[j * d + c];
      s += diff * diff;
    }
    return -t * s;
  };
  auto pairs = [&](auto&& visit) {
    for (int64_t i = 0; i < n; ++i) {
      if (intra)
        for (int64_t j = i + 1; j < n; ++j) visit(i, j);
      for (int64_t j = n; j < rows; ++j) visit(i, j);
    }
  };
  double m = -INFINITY;
  pairs([&](int64_t i, int64_t j) { m = std::max(m, exponent(i, j)); });
  double total = 0;
  std::vector<double> acc(static_cast<size_t>(rows * d), 0.0);
  pairs([&](int64_t i, int64_t j) {
    const double w = std::exp(exponent(i, j) - m);
    total += w;
    for (int64_t c = 0; c < d; ++c) {
      const double diff = z[i * d + c] - z[j * d + c];
      acc[i * d + c] += w * diff;
      acc[j * d + c] -= w * diff;
    }
  });
  DeviceRun out;
  out.lse = m + std::log(total);
  out.grad.resize(acc.size());
  for (size_t e = 0; e < acc.size(); ++e) out.grad[e] = -2 * t * acc[e] / total;
  return out;
}

struct Tolerance {
  double lse, grad;  // absolute on lse; max |error| / max |reference| on the gradient
};

Tolerance tolerance_of(UniformPrecision p) {
  switch (p) {
    case UniformPrecision::kFp64: return {1e-10, 1e-9};
    case UniformPrecision::kFp32: return {2e-5, 2e-4};
    case UniformPrecision::kTf32: return {5e-3, 1e-2};
    case UniformPrecision::kFp16: return {2e-3, 1e-2};
    case UniformPrecision::kBf16: return {4e-3, 3e-2};
  }
  return {0, 0};
}

bool smoke_test(double t) {
  struct Case {
    int64_t n, k, d;
    bool intra;
    int64_t parts;
    bool loss_only = false;
  };
  // The last case has more tiles than the loss alone has chains (561 at 128 rows, 2145 at
  // 64): its chains wrap, so their waits run.  Run for the loss alone only, to keep the
  // sanitizers' passes short.
  const Case cases[] = {{1000, 0, 67, true, 1}, {1000, 300, 67, true, 3}, {200, 1000, 33, false, 1},
                        {3, 0, 1, true, 1},       {130, 0, 1, true, 2},      {4100, 0, 8, true, 1, true}};
  const UniformPrecision precisions[] = {UniformPrecision::kFp64, UniformPrecision::kFp32,
                                         UniformPrecision::kTf32, UniformPrecision::kFp16,
                                         UniformPrecision::kBf16};
  bool ok = true;
  std::printf("smoke test: CUDA kernels vs float64 host reference (t = %g)\n", t);
  std::printf("%-13s %4s %6s %6s %5s %5s %6s %6s %12s %12s\n", "precision", "B", "n", "k", "d", "intra",
              "parts", "groups", "|lse err|", "grad err");
  std::printf("(groups: -1 automatic, 'pf' products first; 'loss' rows: compute_grad false)\n");
  for (const Case& c : cases) {
    const std::vector<double> z = random_rows(c.n + c.k, c.d, 1234u + unsigned(c.n + c.k + c.d));
    // Each precision's default tiles, then the 64-row tiles of 99 KiB devices; the
    // gradient without side groups, with a queue also with 3 per small-side block and the
    // automatic count (the default); products first with staging for 3 CTAs (so also a
    // grid of 3); then the loss alone (no side groups there).
    struct Mode {
      bool grad;
      int64_t side_groups;
      int64_t staged_ctas;
    };
    const Mode modes[] = {{true, 0, 0}, {true, 3, 0}, {true, -1, 0}, {true, -1, 3}, {false, 0, 0}};
    for (UniformPrecision p : precisions) {
    std::vector<double> stored;
    const std::vector<unsigned char> bytes = encode(z, p, stored);
    const DeviceRun ref = reference(stored, c.n, c.k, c.d, t, c.intra);
    for (const int64_t block_rows : {int64_t(0), int64_t(64)})
    for (const Mode mode : modes) {
      const int64_t side_groups = mode.side_groups;
      if (block_rows == pyhypersphere::cuda::uniform_block_rows(p)) continue;  // float64's default
      if (side_groups && c.k == 0 && !mode.staged_ctas) continue;  // the same as without groups
      if (c.loss_only && mode.grad) continue;
      // The parts' lse combine by log-sum-exp, their gradients weighted by exp(lse_p - lse).
      std::vector<DeviceRun> parts;
      double top = -INFINITY;
      for (int64_t part = 0; part < c.parts; ++part) {
        UniformProblem problem;
        problem.n = c.n;
        problem.k = c.k;
        problem.d = c.d;
        problem.t = t;
        problem.intra_batch = c.intra;
        problem.part = part;
        problem.num_parts = c.parts;
        problem.compute_grad = mode.grad;
        problem.precision = p;
        problem.block_rows = block_rows;
        problem.side_groups = side_groups;
        problem.products_first_ctas = mode.staged_ctas;
        parts.push_back(run_once(problem, bytes));
        top = std::max(top, parts.back().lse);
      }
      double total = 0;
      for (const auto& r : parts) total += std::exp(r.lse - top);
      const double lse = top + std::log(total);
      std::vector<double> grad(mode.grad ? ref.grad.size() : 0, 0.0);
      for (const auto& r : parts) {
        if (!mode.grad) break;
        const double w = std::exp(r.lse - lse);
        for (size_t e = 0; e < grad.size(); ++e) grad[e] += w * r.grad[e];
      }
      double err = 0, scale = 0;
      for (size_t e = 0; e < grad.size(); ++e) {
        err = std::max(err, std::fabs(grad[e] - ref.grad[e]));
        scale = std::max(scale, std::fabs(ref.grad[e]));
      }
      const double lse_err = std::fabs(lse - ref.lse);
      const double grad_err = !mode.grad ? 0.0 : scale > 0 ? err / scale : err;
      const Tolerance tol = tolerance_of(p);
      const bool pass = lse_err <= tol.lse && grad_err <= tol.grad && std::isfinite(lse);
      ok = ok && pass;
      char groups[16] = "loss";
      if (mode.grad) {
        std::snprintf(groups, sizeof groups, mode.staged_ctas ? "%lld pf" : "%lld", (long long)side_groups);
      }
      std::printf("%-13s %4lld %6lld %6lld %5lld %5d %6lld %6s %12.3e %12.3e %s\n", name_of(p),
                  (long long)(block_rows ? block_rows : pyhypersphere::cuda::uniform_block_rows(p)),
                  (long long)c.n, (long long)c.k, (long long)c.d, (int)c.intra, (long long)c.parts,
                  groups, lse_err, grad_err, pass ? "ok" : "FAIL");
    }
    }
  }
  return ok;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median milliseconds of `reps` calls after 2 warm-up calls.
double time_op(const UniformProblem& problem, int reps) {
  void *d_ws = nullptr, *d_lse = nullptr, *d_grad = nullptr;
  const size_t ab = acc_bytes(problem.precision);
  CHECK_CUDA(cudaMalloc(&d_ws, pyhypersphere::cuda::uniform_workspace_bytes(problem)));
  CHECK_CUDA(cudaMalloc(&d_lse, sizeof(double)));  // lse is a double in every precision
  if (problem.compute_grad) {
    CHECK_CUDA(cudaMalloc(&d_grad, static_cast<size_t>((problem.n + problem.k) * problem.d) * ab));
  }
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int r = 0; r < reps + 2; ++r) {
    CHECK_CUDA(cudaEventRecord(start));
    CHECK_CUDA(pyhypersphere::cuda::launch_uniform_lse(problem, d_ws, d_lse, d_grad, nullptr));
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float elapsed = 0;
    CHECK_CUDA(cudaEventElapsedTime(&elapsed, start, stop));
    if (r >= 2) ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(d_ws);
  cudaFree(d_lse);
  cudaFree(d_grad);
  return median(ms);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t d = 128;
  int reps = 5;
  double t = 2.0;
  bool check = true, timing = true;
  std::vector<int64_t> sizes;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--d" && i + 1 < argc) {
      d = std::atoll(argv[++i]);
    } else if (arg == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (arg == "--t" && i + 1 < argc) {
      t = std::atof(argv[++i]);
    } else if (arg == "--skip-check") {
      check = false;
    } else if (arg == "--skip-timing") {
      timing = false;
    } else if (!arg.empty() && arg[0] != '-') {
      sizes.push_back(std::atoll(arg.c_str()));
    } else {
      std::fprintf(stderr, "usage: %s [--d D] [--reps R] [--t T] [--skip-check] [--skip-timing] [N ...]\n",
                   argv[0]);
      return 2;
    }
  }
  if (sizes.empty()) sizes = {8192, 32768, 65536, 131072};
  if (d < 1 || reps < 1 || !(t > 0)) {
    std::fprintf(stderr, "need d >= 1, reps >= 1, t > 0\n");
    return 2;
  }

  int device = 0;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);

  bool ok = true;
  if (check) ok = smoke_test(t);
  if (!timing) sizes.clear();

  if (timing) {
    std::printf("\ntimings: d = %lld, t = %g, median of %d (whole op, CUDA events)\n", (long long)d,
                t, reps);
    std::printf("%-13s %8s %10s %10s %12s %12s %14s\n", "precision", "N", "fwd ms", "fwd TF/s",
                "fwd+grad ms", "fwd+grad TF/s", "lse");
  }
  const UniformPrecision timed[] = {UniformPrecision::kTf32, UniformPrecision::kFp32,
                                    UniformPrecision::kBf16};
  for (int64_t n : sizes) {
    const std::vector<double> z = random_rows(n, d, 7u);
    for (UniformPrecision p : timed) {
      std::vector<double> stored;
      const std::vector<unsigned char> bytes = encode(z, p, stored);
      void* d_rows = nullptr;
      CHECK_CUDA(cudaMalloc(&d_rows, bytes.size()));
      CHECK_CUDA(cudaMemcpy(d_rows, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
      UniformProblem problem;
      problem.rows = d_rows;
      problem.n = n;
      problem.d = d;
      problem.t = t;
      problem.precision = p;
      problem.compute_grad = false;
      const double fwd = time_op(problem, reps);
      problem.compute_grad = true;
      const double both = time_op(problem, reps);
      const double lse = run_once(problem, bytes).lse;
      const double gram_flops = double(n) * double(n - 1) * double(d);  // pairs x 2d
      std::printf("%-13s %8lld %10.3f %10.1f %12.3f %12.1f %14.6f\n", name_of(p), (long long)n, fwd,
                  gram_flops / (fwd * 1e-3) / 1e12, both, 3 * gram_flops / (both * 1e-3) / 1e12, lse);
      cudaFree(d_rows);
    }
  }
  if (!ok) {
    std::printf("\nsmoke test FAILED\n");
    return 1;
  }
  return 0;
}
