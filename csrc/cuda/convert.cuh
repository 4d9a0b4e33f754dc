// Operand type -> accumulation type, for the uniformity and alignment kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pyhypersphere::cuda {

__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

}  // namespace pyhypersphere::cuda
