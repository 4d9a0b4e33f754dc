// Standalone smoke test and benchmark of the CUDA uniformity kernels (no torch).
//
//   uniform_bench_cuda [--d D] [--reps R] [--t T] [--skip-check] [--skip-timing] [N ...]
//
// 1. Smoke test (first, unless --skip-check): every precision and block size, on problems
//    whose sizes are not multiples of the tiles (odd d, several feature windows, a queue,
//    queue-only pairs, 3 parts combined, column splits), lse and the gradients of x and
//    the queue against a float64 host reference on the same operand values, with the
//    online max and with the static shift, and the same bits with grids of 1 and 3 CTAs;
//    exits with status 1 if an error exceeds its precision's tolerance.
// 2. Timings: random unit-norm rows, d = 128 (--d), N = 8192 32768 65536 131072 (or the
//    N given) and MoCo's shape (256 rows, a 65536-row queue, x's gradient only),
//    TF32 / FP32 (3xTF32) / BF16; each call is the whole op (packing, row passes, lse,
//    gradient), timed with CUDA events, median of R (--reps, default 5) after 2 warm-up
//    calls.  --skip-timing: the smoke test only (the compute-sanitizer run of docs/cuda.md).
//    TFLOP/s count useful work: each pair once (N(N-1)/2, or N K) x 2d flops per product,
//    one product for the loss, three with the gradient (Gram, W Z, W^T Z).
#include "cuda/rowblock_plan.h"
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
  const bool grad = problem.grad_x || problem.grad_queue;
  if (grad) CHECK_CUDA(cudaMalloc(&d_grad, grad_elems * ab));
  CHECK_CUDA(cudaMemcpy(d_rows, rows.data(), rows.size(), cudaMemcpyHostToDevice));
  problem.rows = d_rows;
  CHECK_CUDA(pyhypersphere::cuda::launch_uniform_lse(problem, d_ws, static_cast<double*>(d_lse), d_grad, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  DeviceRun out;
  CHECK_CUDA(cudaMemcpy(&out.lse, d_lse, sizeof(double), cudaMemcpyDeviceToHost));
  if (grad) {
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

bool same_bits(const DeviceRun& a, const DeviceRun& b) {
  return std::memcmp(&a.lse, &b.lse, sizeof a.lse) == 0 && a.grad.size() == b.grad.size() &&
         (a.grad.empty() || std::memcmp(a.grad.data(), b.grad.data(), a.grad.size() * sizeof(double)) == 0);
}

bool smoke_test(double t) {
  struct Case {
    int64_t n, k, d;
    bool intra;
    int64_t parts;
  };
  // Odd sizes (masked tile edges), a queue with and without x-x pairs, parts, d = 1, a
  // width of several feature windows (d = 300), and MoCo-like column splits (40 x rows
  // against 3000 queue rows: 47 column tiles, split).
  const Case cases[] = {{1000, 0, 67, true, 1}, {1000, 300, 67, true, 3}, {200, 1000, 33, false, 1},
                        {3, 0, 1, true, 1},       {130, 0, 1, true, 2},      {300, 0, 300, true, 1},
                        {40, 3000, 16, true, 1}};
  const UniformPrecision precisions[] = {UniformPrecision::kFp64, UniformPrecision::kFp32,
                                         UniformPrecision::kTf32, UniformPrecision::kFp16,
                                         UniformPrecision::kBf16};
  bool ok = true;
  std::printf("smoke test: CUDA kernels vs float64 host reference (t = %g)\n", t);
  std::printf("%-13s %4s %6s %6s %5s %5s %6s %6s %12s %12s %s\n", "precision", "B", "n", "k", "d", "intra",
              "parts", "mode", "|lse err|", "grad err", "grid");
  std::printf("(mode: grad / loss, online max or static shift; grid: bitwise equal with 1 and 3 CTAs)\n");
  for (const Case& c : cases) {
    const std::vector<double> z = random_rows(c.n + c.k, c.d, 1234u + unsigned(c.n + c.k + c.d));
    for (UniformPrecision p : precisions) {
      std::vector<double> stored;
      const std::vector<unsigned char> bytes = encode(z, p, stored);
      const DeviceRun ref = reference(stored, c.n, c.k, c.d, t, c.intra);
      for (const int64_t block_rows : {int64_t(0), int64_t(64)}) {
        if (block_rows == pyhypersphere::cuda::uniform_block_rows(p)) continue;  // float64's default
        for (const bool grad : {true, false}) {
          for (const bool static_shift : {false, true}) {
            // The parts' lse combine by log-sum-exp, their gradients weighted by exp(lse_p - lse).
            std::vector<DeviceRun> parts;
            double top = -INFINITY;
            bool grid_ok = true;
            for (int64_t part = 0; part < c.parts; ++part) {
              UniformProblem problem;
              problem.n = c.n;
              problem.k = c.k;
              problem.d = c.d;
              problem.t = t;
              problem.intra_batch = c.intra;
              problem.part = part;
              problem.num_parts = c.parts;
              problem.grad_x = grad;
              problem.grad_queue = grad && c.k > 0;
              problem.precision = p;
              problem.static_shift = static_shift;
              problem.block_rows = block_rows;
              parts.push_back(run_once(problem, bytes));
              top = std::max(top, parts.back().lse);
              for (const int64_t ctas : {int64_t(1), int64_t(3)}) {
                problem.max_ctas = ctas;
                grid_ok = grid_ok && same_bits(run_once(problem, bytes), parts.back());
              }
            }
            double total = 0;
            for (const auto& r : parts) total += std::exp(r.lse - top);
            const double lse = top + std::log(total);
            std::vector<double> g(grad ? ref.grad.size() : 0, 0.0);
            for (const auto& r : parts) {
              if (!grad) break;
              const double w = std::exp(r.lse - lse);
              for (size_t e = 0; e < g.size(); ++e) g[e] += w * r.grad[e];
            }
            double err = 0, scale = 0;
            for (size_t e = 0; e < g.size(); ++e) {
              err = std::max(err, std::fabs(g[e] - ref.grad[e]));
              scale = std::max(scale, std::fabs(ref.grad[e]));
            }
            const double lse_err = std::fabs(lse - ref.lse);
            const double grad_err = !grad ? 0.0 : scale > 0 ? err / scale : err;
            const Tolerance tol = tolerance_of(p);
            const bool pass = lse_err <= tol.lse && grad_err <= tol.grad && std::isfinite(lse) && grid_ok;
            ok = ok && pass;
            std::printf("%-13s %4lld %6lld %6lld %5lld %5d %6lld %6s %12.3e %12.3e %s %s\n", name_of(p),
                        (long long)(block_rows ? block_rows : pyhypersphere::cuda::uniform_block_rows(p)),
                        (long long)c.n, (long long)c.k, (long long)c.d, (int)c.intra, (long long)c.parts,
                        grad ? (static_shift ? "grad-s" : "grad") : (static_shift ? "loss-s" : "loss"), lse_err,
                        grad_err, grid_ok ? "same" : "DIFFERS", pass ? "ok" : "FAIL");
          }
        }
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
  if (problem.grad_x || problem.grad_queue) {
    CHECK_CUDA(cudaMalloc(&d_grad, static_cast<size_t>((problem.n + problem.k) * problem.d) * ab));
  }
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int r = 0; r < reps + 2; ++r) {
    CHECK_CUDA(cudaEventRecord(start));
    CHECK_CUDA(pyhypersphere::cuda::launch_uniform_lse(problem, d_ws, static_cast<double*>(d_lse), d_grad, nullptr));
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
    std::printf("%-13s %8s %8s %10s %10s %12s %12s %14s\n", "precision", "N", "K", "fwd ms", "fwd TF/s",
                "fwd+grad ms", "fwd+grad TF/s", "lse");
  }
  // Square shapes (x alone), then MoCo's (256 rows against a 65536-row queue, the
  // queue detached: x's gradient only).  Static shift: unit rows at t = 2 are certified.
  struct Shape {
    int64_t n, k;
  };
  std::vector<Shape> shapes;
  for (int64_t n : sizes) shapes.push_back({n, 0});
  if (timing) shapes.push_back({256, 65536});
  const UniformPrecision timed[] = {UniformPrecision::kTf32, UniformPrecision::kFp32,
                                    UniformPrecision::kBf16};
  for (const Shape& shape : shapes) {
    const int64_t n = shape.n, k = shape.k;
    const std::vector<double> z = random_rows(n + k, d, 7u);
    for (UniformPrecision p : timed) {
      std::vector<double> stored;
      const std::vector<unsigned char> bytes = encode(z, p, stored);
      void* d_rows = nullptr;
      CHECK_CUDA(cudaMalloc(&d_rows, bytes.size()));
      CHECK_CUDA(cudaMemcpy(d_rows, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
      UniformProblem problem;
      problem.rows = d_rows;
      problem.n = n;
      problem.k = k;
      problem.d = d;
      problem.t = t;
      problem.precision = p;
      problem.static_shift = pyhypersphere::cuda::plan::static_shift_certified(t, 1.0, p == UniformPrecision::kFp64);  // unit rows
      const double fwd = time_op(problem, reps);
      problem.grad_x = true;
      const double both = time_op(problem, reps);
      const double lse = run_once(problem, bytes).lse;
      // Useful work: x's pairs once (a triangle, or x by queue), 2d flops each per product.
      const double pairs = k > 0 ? double(n) * double(k) : 0.5 * double(n) * double(n - 1);
      const double gram_flops = 2 * pairs * double(d);
      std::printf("%-13s %8lld %8lld %10.3f %10.1f %12.3f %12.1f %14.6f\n", name_of(p), (long long)n, (long long)k,
                  fwd, gram_flops / (fwd * 1e-3) / 1e12, both, 3 * gram_flops / (both * 1e-3) / 1e12, lse);
      cudaFree(d_rows);
    }
  }
  if (!ok) {
    std::printf("\nsmoke test FAILED\n");
    return 1;
  }
  return 0;
}
