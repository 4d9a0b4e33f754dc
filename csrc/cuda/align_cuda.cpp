// Torch glue of the CUDA alignment loss (align_kernels.h).  Host compiler only.
#include "../input_checks.h"
#include "../ops.h"
#include "align_kernels.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace pyhypersphere {
namespace {

cuda::AlignDtype align_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16:
      return cuda::AlignDtype::kBf16;
    case at::kHalf:
      return cuda::AlignDtype::kFp16;
    case at::kDouble:
      return cuda::AlignDtype::kFp64;
    case at::kFloat:
      return cuda::AlignDtype::kFp32;
    default:
      // The input checks accept every floating type (float8 too); the kernels read and
      // write these four only.  The CPU kernel rejects the others the same way.
      TORCH_CHECK_NOT_IMPLEMENTED(false, "align_loss: not implemented for ", dtype,
                                  " (float16, bfloat16, float32 or float64)");
      return cuda::AlignDtype::kFp32;
  }
}

}  // namespace

AlignResult align_loss_cuda(const at::Tensor& x, const at::Tensor& y, double alpha,
                            bool compute_grad) {
  check_align_args(x, y, alpha);
  TORCH_CHECK_VALUE(x.is_cuda(), "align_loss: x must be a CUDA tensor for the CUDA kernel, got ",
                    x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor yc = y.contiguous();

  cuda::AlignProblem problem;
  problem.x = xc.data_ptr();
  problem.y = yc.data_ptr();
  problem.n = x.size(0);
  problem.d = x.size(1);
  problem.alpha = alpha;
  problem.compute_grad = compute_grad;
  problem.dtype = align_dtype(x.scalar_type());

  const at::Tensor workspace = at::empty(
      {static_cast<int64_t>(cuda::align_workspace_bytes(problem))}, x.options().dtype(at::kByte));
  at::Tensor loss = at::empty({}, x.options().dtype(at::kDouble));
  at::Tensor grad = compute_grad ? at::empty_like(xc) : x.new_empty({0});
  const cudaError_t err = cuda::launch_align_loss(
      problem, workspace.data_ptr(), loss.data_ptr<double>(), compute_grad ? grad.data_ptr() : nullptr,
      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "align_loss: CUDA kernel launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss.to(x.scalar_type()), grad};
}

// Routed from pyhypersphere::align_loss by pyhypersphere/gpu_backend.py (see ops.h).
TORCH_LIBRARY_FRAGMENT(pyhypersphere_cuda, m) { m.def(kAlignLossSchema); }
TORCH_LIBRARY_IMPL(pyhypersphere_cuda, CUDA, m) { m.impl("align_loss", &align_loss_cuda); }

}  // namespace pyhypersphere
