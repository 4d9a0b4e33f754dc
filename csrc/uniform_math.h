// The Gaussian-potential math shared by the CPU and CUDA kernels, written once.
//
// Contract of every uniformity kernel (CPU and CUDA):
//   Given rows z_0..z_{R-1} (already centered; the loss is translation invariant)
//   and a set P of unordered pairs {i, j}, i != j, compute
//       lse  = log( sum_{(i,j) in P} exp(-t * ||z_i - z_j||^2) )
//       grad = d lse / d z_i = (-2t / S) * sum_{j : (i,j) in P} w_ij (z_i - z_j)
//   with w_ij = exp(-t ||z_i - z_j||^2) and S = sum_P w_ij.  The uniformity loss is
//   lse - log |P|, so its gradient is the gradient of lse.
//
//   The kernels never form exp(-t d^2) unshifted: each block of rows keeps a running
//   shift M_B (the largest exponent it has seen) and sums exp(e - M_B); the blocks are
//   combined with a global max at the end.  Inputs far apart (large norms, large t)
//   therefore give finite values where exp underflows in the reference formula.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYHS_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU tile loops are cloned per ISA, and GCC does not inline a
// plain inline function into a clone with other target options; a call per element
// would stop the vectorization.
#define PYHS_HOST_DEVICE inline __attribute__((always_inline))
#else
#define PYHS_HOST_DEVICE inline
#endif

namespace pyhypersphere {
namespace math {

// Exponent -t * ||z_i - z_j||^2 from the Gram entry.  The squared distance is
// clamped at zero: for near-duplicate rows, sq_i + sq_j - 2 g_ij can round below it.
// T may also be a GCC vector of floats (the CPU tile loops), hence T{} and no casts.
template <typename T>
PYHS_HOST_DEVICE T pair_exponent(T t, T sq_i, T sq_j, T gram_ij) {
  const T zero{};
  T d2 = sq_i + sq_j - (gram_ij + gram_ij);
  d2 = d2 < zero ? zero : d2;  // written so that a NaN stays NaN, never a weight of 1
  return -t * d2;
}

// Factor that moves a sum kept under shift `from` to shift `to` (to >= from).
// A block that has seen no pair yet carries shift -inf and a zero sum.
template <typename T>
PYHS_HOST_DEVICE T rescale_factor(T from, T to) {
  return from == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(from - to);
}

// Number of pairs in the uniformity loss: N(N-1)/2 within x when intra_batch,
// plus N*K between x and a queue of K rows.  Exact in double up to N of 2^26.
PYHS_HOST_DEVICE double pair_count(int64_t n, int64_t k, bool intra_batch) {
  double within = intra_batch ? 0.5 * double(n) * double(n - 1) : 0.0;
  return within + double(n) * double(k);
}

// Scale that turns a row's accumulated sum  sum_j w_ij (z_i - z_j), kept under its
// block shift M_B, into d lse / d z_i, given the global shift m and the total S
// (taken under shift m):  (-2t / S) * exp(M_B - m).
template <typename T>
PYHS_HOST_DEVICE T gradient_scale(T t, T block_shift, T global_shift, T total) {
  return total > T(0) ? T(-2) * t * rescale_factor(block_shift, global_shift) / total : T(0);
}

}  // namespace math
}  // namespace pyhypersphere
