// Device-only building blocks of the uniformity tile kernel: the tensor-core product
// of each precision (WMMA fragments, sm_80+), element conversions, asynchronous copies
// and the acquire/release tickets.  Included by .cu files only.
//
// One struct per precision gives the kernel everything that differs between them:
//   op_t / acc_t        element type of the MMA operands / of everything else
//   kM, kN, kK          WMMA fragment shape
//   kBlock              rows per schedule block (the tile edge)
//   kChunkK, kChunkD    columns per pipeline stage of the Gram product / of the
//                       gradient products (both 128 bytes of op_t, or 256 for fp64's kChunkD)
//   prepare(operand)    turns a loaded fragment into what mma() expects (TF32 rounding,
//                       3xTF32 split)
//   round_operand(v)    the value an operand element v takes in the products: the kernel
//                       stores rows and weights rounded by it, so squared norms, row sums
//                       and s_i z_i use exactly the values the tensor cores multiply
//   mma(c, a, b)        c += a * b
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>

namespace pyhypersphere {
namespace cuda {

namespace wmma = nvcuda::wmma;

// ---------------------------------------------------------------- conversions

__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <class T>
struct FromAcc;
template <>
struct FromAcc<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 cast(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct FromAcc<__half> {
  static __device__ __forceinline__ __half cast(float v) { return __float2half_rn(v); }
};
template <>
struct FromAcc<float> {
  static __device__ __forceinline__ float cast(float v) { return v; }
};
template <>
struct FromAcc<double> {
  static __device__ __forceinline__ double cast(double v) { return v; }
};
template <class T, class A>
__device__ __forceinline__ T from_acc(A v) {
  return FromAcc<T>::cast(v);
}

// ---------------------------------------------------------------- products

// A loaded operand fragment; `lo` holds the small part of a 3xTF32 split (unused, and
// removed by the compiler, elsewhere).
template <class Frag>
struct Operand {
  Frag hi;
  Frag lo;
};

template <class OpT, int M, int N, int K, class FragT>
struct WmmaShape {
  using op_t = OpT;
  static constexpr int kM = M, kN = N, kK = K;
  template <class Use, class Layout>
  using Frag = wmma::fragment<Use, M, N, K, FragT, Layout>;
};

// Operands taken as they are (16-bit, float64, 3xTF32's float32 split exactly).
struct ExactOperands {
  template <class T>
  static __device__ __forceinline__ T round_operand(T v) {
    return v;
  }
};

struct Bf16Mma : WmmaShape<__nv_bfloat16, 16, 16, 16, __nv_bfloat16>, ExactOperands {
  using acc_t = float;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  static constexpr int kBlock = 128, kChunkK = 64, kChunkD = 64;
  template <class F>
  static __device__ __forceinline__ void prepare(Operand<F>&) {}
  template <class FA, class FB>
  static __device__ __forceinline__ void mma(Acc& c, const Operand<FA>& a, const Operand<FB>& b) {
    wmma::mma_sync(c, a.hi, b.hi, c);
  }
};

struct F16Mma : WmmaShape<__half, 16, 16, 16, __half>, ExactOperands {
  using acc_t = float;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  static constexpr int kBlock = 128, kChunkK = 64, kChunkD = 64;
  template <class F>
  static __device__ __forceinline__ void prepare(Operand<F>&) {}
  template <class FA, class FB>
  static __device__ __forceinline__ void mma(Acc& c, const Operand<FA>& a, const Operand<FB>& b) {
    wmma::mma_sync(c, a.hi, b.hi, c);
  }
};

// float32 rows on TF32 tensor cores: operands rounded to TF32 (cvt.rna), float32 sums.
// The rows and weights are stored TF32-rounded already (round_operand), so the norms
// and row sums match the products and the exponent error shrinks with the distance.
struct Tf32Mma : WmmaShape<float, 16, 16, 8, wmma::precision::tf32> {
  using acc_t = float;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  static constexpr int kBlock = 128, kChunkK = 32, kChunkD = 32;
  static __device__ __forceinline__ float round_operand(float v) { return wmma::__float_to_tf32(v); }
  template <class F>
  static __device__ __forceinline__ void prepare(Operand<F>& x) {
#pragma unroll
    for (int i = 0; i < x.hi.num_elements; ++i) x.hi.x[i] = wmma::__float_to_tf32(x.hi.x[i]);
  }
  template <class FA, class FB>
  static __device__ __forceinline__ void mma(Acc& c, const Operand<FA>& a, const Operand<FB>& b) {
    wmma::mma_sync(c, a.hi, b.hi, c);
  }
};

// float32 rows at float32 accuracy on TF32 tensor cores (3xTF32): x = big + small with
// big = tf32(x), small = tf32(x - big); a*b ~ big_a*big_b + big_a*small_b + small_a*big_b
// (the dropped small*small term is ~2^-22 relative).  Small terms are added first.
struct Tf32x3Mma : Tf32Mma {
  static __device__ __forceinline__ float round_operand(float v) { return v; }
  template <class F>
  static __device__ __forceinline__ void prepare(Operand<F>& x) {
#pragma unroll
    for (int i = 0; i < x.hi.num_elements; ++i) {
      const float v = x.hi.x[i];
      const float big = wmma::__float_to_tf32(v);
      x.lo.x[i] = wmma::__float_to_tf32(v - big);
      x.hi.x[i] = big;
    }
  }
  template <class FA, class FB>
  static __device__ __forceinline__ void mma(Acc& c, const Operand<FA>& a, const Operand<FB>& b) {
    wmma::mma_sync(c, a.lo, b.hi, c);
    wmma::mma_sync(c, a.hi, b.lo, c);
    wmma::mma_sync(c, a.hi, b.hi, c);
  }
};

// float64 rows on FP64 tensor cores (DMMA, 8x8x4); 64-row blocks keep the shared
// memory and registers of a double tile within those of the 128-row float tiles.
struct F64Mma : WmmaShape<double, 8, 8, 4, double>, ExactOperands {
  using acc_t = double;
  using Acc = wmma::fragment<wmma::accumulator, 8, 8, 4, double>;
  static constexpr int kBlock = 64, kChunkK = 16, kChunkD = 32;
  template <class F>
  static __device__ __forceinline__ void prepare(Operand<F>&) {}
  template <class FA, class FB>
  static __device__ __forceinline__ void mma(Acc& c, const Operand<FA>& a, const Operand<FB>& b) {
    wmma::mma_sync(c, a.hi, b.hi, c);
  }
};

// A precision's product with blocks of kB rows (the 64-row tiles of devices with 99 KiB
// of shared memory per block).
template <class Mma, int kB>
struct WithBlock : Mma {
  static constexpr int kBlock = kB;
};

// ---------------------------------------------------------------- asynchronous copies

// 16 bytes global -> shared, bypassing L1 (cp.async.cg, sm_80+).
__device__ __forceinline__ void copy_async_16(void* shared_dst, const void* global_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src) : "memory");
}
__device__ __forceinline__ void copy_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---------------------------------------------------------------- tickets

// A block's ticket holds 1 + the index of the last tile that updated the block's
// accumulators.  Release: every thread's writes are fenced and the CTA synchronized
// before thread 0 publishes.  Acquire: thread 0 waits, then the CTA synchronizes.
__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];\n" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void store_release(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;\n" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ unsigned long long global_nanoseconds() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
// A wait is at most a few tiles long; one of two minutes means a tile that will never
// publish (a schedule bug): trap, so the launch fails instead of hanging the process.
constexpr unsigned long long kTicketTimeoutNs = 120ull * 1000 * 1000 * 1000;
__device__ __forceinline__ void wait_ticket(const unsigned long long* ticket,
                                            unsigned long long at_least) {
  const unsigned long long start = global_nanoseconds();
  while (load_acquire(ticket) < at_least) {
    __nanosleep(32);
    if (global_nanoseconds() - start > kTicketTimeoutNs) __trap();
  }
}

}  // namespace cuda
}  // namespace pyhypersphere
