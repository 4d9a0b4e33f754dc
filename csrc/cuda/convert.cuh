// Element conversions between the operand types and the accumulation type, for the
// CUDA kernels (uniformity and alignment).  Device only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pyhypersphere {
namespace cuda {

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

}  // namespace cuda
}  // namespace pyhypersphere
