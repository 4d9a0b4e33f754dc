// CUDA alignment loss (align_kernels.h): one warp per row, then a one-CTA fixed-order sum.
#include "align_kernels.h"
#include "convert.cuh"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace pyhypersphere {
namespace cuda {
namespace {

constexpr int kRowWarps = 8;
constexpr int kSumThreads = 1024;

template <class T, class A>
__device__ __forceinline__ T from_acc(A v) {  // accumulation type -> operand type
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return static_cast<T>(v);
}

// ||v||^alpha and d/dv = coef * v with coef = alpha ||v||^(alpha-2) / n (0 at v = 0:
// the CPU kernel's convention).  alpha == 2 is the default and is done without pow,
// which --use_fast_math would make approximate.
template <class acc_t>
__device__ __forceinline__ void align_term(acc_t sq, acc_t alpha, int64_t n, acc_t& term, acc_t& coef) {
  if (alpha == acc_t(2)) {
    term = sq;
    coef = sq > 0 ? acc_t(2) / static_cast<acc_t>(n) : acc_t(0);
    return;
  }
  const acc_t norm = std::sqrt(sq);
  term = std::pow(norm, alpha);
  coef = sq > 0 ? alpha * std::pow(norm, alpha - acc_t(2)) / static_cast<acc_t>(n) : acc_t(0);
}

template <class scalar_t, class acc_t>
__global__ void align_rows_kernel(const scalar_t* x, const scalar_t* y, int64_t n, int64_t d,
                                  acc_t alpha, double* terms, scalar_t* grad) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; i < n; i += warps) {
    const scalar_t* xi = x + i * d;
    const scalar_t* yi = y + i * d;
    acc_t sq = 0;
    for (int64_t c = lane; c < d; c += 32) {
      const acc_t diff = to_acc(xi[c]) - to_acc(yi[c]);
      sq += diff * diff;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, offset);
    acc_t term, coef;
    align_term(sq, alpha, n, term, coef);
    if (lane == 0) terms[i] = static_cast<double>(term);
    if (grad != nullptr) {
      scalar_t* gi = grad + i * d;
      for (int64_t c = lane; c < d; c += 32) {
        gi[c] = from_acc<scalar_t>(coef * (to_acc(xi[c]) - to_acc(yi[c])));
      }
    }
  }
}

// out = sum(values) / n, in a fixed order: strided per thread, then a tree.
__global__ void __launch_bounds__(kSumThreads)
    mean_kernel(const double* values, int64_t n, double* out) {
  __shared__ double scratch[kSumThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s += values[i];
  scratch[threadIdx.x] = s;
  __syncthreads();
  for (int half = kSumThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = scratch[0] / static_cast<double>(n);
}

template <class scalar_t, class acc_t>
cudaError_t launch_typed(const AlignProblem& p, double* terms, double* loss, void* grad,
                         cudaStream_t stream) {
  const int64_t ctas = std::min<int64_t>((p.n + kRowWarps - 1) / kRowWarps, int64_t(1) << 20);
  align_rows_kernel<scalar_t, acc_t><<<static_cast<int>(std::max<int64_t>(ctas, 1)), 32 * kRowWarps,
                                       0, stream>>>(
      static_cast<const scalar_t*>(p.x), static_cast<const scalar_t*>(p.y), p.n, p.d,
      static_cast<acc_t>(p.alpha), terms, p.compute_grad ? static_cast<scalar_t*>(grad) : nullptr);
  mean_kernel<<<1, kSumThreads, 0, stream>>>(terms, p.n, loss);
  return cudaGetLastError();
}

}  // namespace

size_t align_workspace_bytes(const AlignProblem& problem) {
  return static_cast<size_t>(problem.n) * sizeof(double);
}

cudaError_t launch_align_loss(const AlignProblem& problem, void* workspace, double* loss, void* grad,
                              cudaStream_t stream) {
  if (problem.n < 1 || problem.d < 1 || workspace == nullptr || loss == nullptr ||
      (problem.compute_grad && grad == nullptr)) {
    return cudaErrorInvalidValue;
  }
  double* terms = static_cast<double*>(workspace);
  switch (problem.dtype) {
    case AlignDtype::kBf16:
      return launch_typed<__nv_bfloat16, float>(problem, terms, loss, grad, stream);
    case AlignDtype::kFp16:
      return launch_typed<__half, float>(problem, terms, loss, grad, stream);
    case AlignDtype::kFp64:
      return launch_typed<double, double>(problem, terms, loss, grad, stream);
    case AlignDtype::kFp32:
    default:
      return launch_typed<float, float>(problem, terms, loss, grad, stream);
  }
}

}  // namespace cuda
}  // namespace pyhypersphere
