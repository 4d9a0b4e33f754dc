// Torch glue of the CUDA uniformity kernels (uniform_kernels.h): argument checks,
// device guard and stream, the precision of the tile products, the workspace and the
// outputs of the ops.h contract.  Host compiler only; the kernels live in .cu files.
//
// Precision follows PyTorch's matmul settings:
//   float32   TF32 tensor cores when torch.backends.cuda.matmul.fp32_precision is "tf32"
//             (torch.set_float32_matmul_precision("high"/"medium"),
//             torch.backends.cuda.matmul.allow_tf32 = True), else 3xTF32 (float32 accuracy)
//   bf16/fp16 tensor cores on the centered rows rounded back to the input type, float32
//             accumulation
//   float64   FP64 tensor cores
// The kernels are deterministic (fixed-order updates and reductions, no float atomics),
// so torch.use_deterministic_algorithms(True) needs no other path.
#include "../input_checks.h"
#include "../ops.h"
#include "../uniform_rows.h"
#include "uniform_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

namespace pyhypersphere {
namespace {

bool tf32_allowed() {
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
}

cuda::UniformPrecision tile_precision(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16:
      return cuda::UniformPrecision::kBf16;
    case at::kHalf:
      return cuda::UniformPrecision::kFp16;
    case at::kDouble:
      return cuda::UniformPrecision::kFp64;
    default:
      return tf32_allowed() ? cuda::UniformPrecision::kTf32 : cuda::UniformPrecision::kFp32;
  }
}

void check_device_capability(const at::Tensor& x, cuda::UniformPrecision precision) {
  const int device = x.get_device();
  int major = 0, minor = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(major >= 8, "uniform_loss: the CUDA kernels need a GPU of compute capability 8.0 or "
              "newer (A100, H100, ...); ", x.device(), " has ", major, ".", minor);
  const size_t needed = cuda::uniform_shared_memory_bytes(precision);
  TORCH_CHECK(static_cast<size_t>(smem_optin) >= needed, "uniform_loss: the CUDA kernel for ",
              x.scalar_type(), " needs ", needed, " bytes of shared memory per block; ", x.device(),
              " (compute capability ", major, ".", minor, ") allows ", smem_optin);
}

}  // namespace

UniformResult uniform_lse_cuda(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                               double t, bool intra_batch, int64_t part, int64_t num_parts,
                               bool grad_x, bool grad_queue) {
  check_uniform_args(x, queue, t, intra_batch, part, num_parts, grad_queue);
  const bool compute_grad = grad_x || grad_queue;
  TORCH_CHECK_VALUE(x.is_cuda(), "uniform_loss: x must be a CUDA tensor for the CUDA kernel, got ",
                    x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const cuda::UniformPrecision precision = tile_precision(x.scalar_type());
  check_device_capability(x, precision);

  UniformRows rows = prepare_uniform_rows(x, queue);
  if (!rows.finite) return nonfinite_uniform_outputs(x, queue, grad_x, grad_queue);
  // The kernels read the centered rows in the operand type (16-bit for the 16-bit
  // tensor-core paths) and compute their own squared norms of what they read.  The
  // other paths read the accumulation type: float32 for the float8 types too, which the
  // input checks accept and tile_precision sends to the float32 kernels.
  const bool sixteen_bit = precision == cuda::UniformPrecision::kBf16 ||
                           precision == cuda::UniformPrecision::kFp16;
  const at::Tensor operand = sixteen_bit ? rows.z.to(x.scalar_type()) : rows.z;
  rows.z = at::Tensor();  // keep the peak at a few copies of the rows
  rows.sq_norm = at::Tensor();

  cuda::UniformProblem problem;
  problem.rows = operand.data_ptr();
  problem.n = rows.n;
  problem.k = rows.k;
  problem.d = x.size(1);
  problem.t = t;
  problem.intra_batch = intra_batch;
  problem.part = part;
  problem.num_parts = num_parts;
  problem.compute_grad = compute_grad;
  problem.precision = precision;

  const auto acc_options = x.options().dtype(accumulate_dtype(x.scalar_type()));
  const at::Tensor workspace = at::empty(
      {static_cast<int64_t>(cuda::uniform_workspace_bytes(problem))}, x.options().dtype(at::kByte));
  at::Tensor lse = at::empty({}, acc_options);
  at::Tensor grad_rows =
      compute_grad ? at::empty({rows.n + rows.k, problem.d}, acc_options) : at::Tensor();
  const cudaError_t err = cuda::launch_uniform_lse(
      problem, workspace.data_ptr(), lse.data_ptr(), compute_grad ? grad_rows.data_ptr() : nullptr,
      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "uniform_loss: CUDA kernel launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return make_uniform_outputs(lse, grad_rows, x, queue, grad_x, grad_queue);
}

TORCH_LIBRARY_IMPL(pyhypersphere, CUDA, m) { m.impl("uniform_lse", &uniform_lse_cuda); }

}  // namespace pyhypersphere
