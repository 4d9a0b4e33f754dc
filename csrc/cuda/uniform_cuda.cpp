// Torch glue of the CUDA uniformity kernels: checks, device guard, stream, the products'
// precision (the shared policy with torch's matmul settings; docs/cuda.md, "Precision
// modes"), the workspace and the ops.h outputs.
#include "../input_checks.h"
#include "../ops.h"
#include "../uniform_rows.h"
#include "rowblock_plan.h"
#include "uniform_kernels.h"
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/version.h>
#include <cuda_runtime_api.h>

namespace pyhypersphere {
namespace {

bool tf32_allowed() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  // The API that does not throw when legacy and new TF32 settings are mixed (torch 2.9+).
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
#else
  return at::globalContext().allowTF32CuBLAS();
#endif
}

bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

int device_attribute(const at::Tensor& x, cudaDeviceAttr attribute) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, x.get_device()));
  return value;
}

}  // namespace

// The op with test settings: max_ctas caps the row kernel's grid (0: none), block_rows
// 64 runs the 99 KiB devices' kernels (0: the device's).
UniformResult uniform_lse_cuda_with(const at::Tensor& x, const std::optional<at::Tensor>& queue, double t,
                                    bool intra_batch, int64_t part, int64_t num_parts, bool grad_x, bool grad_queue,
                                    int64_t max_ctas, int64_t block_rows) {
  check_uniform_args(x, queue, t, intra_batch, part, num_parts, grad_queue);
  TORCH_CHECK_VALUE(x.is_cuda(), "uniform_loss: x must be a CUDA tensor for the CUDA kernel, got ", x.device());
  TORCH_CHECK_VALUE(max_ctas >= 0, "uniform_loss: max_ctas must be >= 0, got ", max_ctas);
  TORCH_CHECK_VALUE(block_rows == 0 || block_rows == 64, "uniform_loss: block_rows must be 0 or 64, got ", block_rows);
  const c10::cuda::CUDAGuard guard(x.device());
  const int major = device_attribute(x, cudaDevAttrComputeCapabilityMajor);
  TORCH_CHECK(major >= 8, "uniform_loss: the CUDA kernels need a GPU of compute capability 8.0 or newer (A100, H100, "
              "...); ", x.device(), " has ", major, ".", device_attribute(x, cudaDevAttrComputeCapabilityMinor));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool tf32 = tf32_allowed();
  UniformPlanOptions options;
  options.raw_16bit_operands = true;
  options.host_read = !stream_is_capturing(stream);
  UniformRows rows = plan_uniform_rows(x, queue, intra_batch, t, tf32 ? kTf32UnitRoundoff : kFloat32UnitRoundoff,
                                       options);
  if (!rows.finite) return nonfinite_uniform_outputs(x, queue, grad_x, grad_queue);
  using P = cuda::UniformPrecision;
  const P precision = rows.raw_operands_ok                 ? (x.scalar_type() == at::kBFloat16 ? P::kBf16 : P::kFp16)
                      : rows.z.scalar_type() == at::kDouble ? P::kFp64
                      : tf32 && rows.operand_precision_ok   ? P::kTf32
                                                            : P::kFp32;
  // The raw 16-bit inputs, or the centered rows in the policy's dtype.
  const bool has_queue = queue.has_value() && queue->defined();
  const at::Tensor operand = !rows.raw_operands_ok ? rows.z : has_queue ? at::cat({x, *queue}, 0) : x.contiguous();
  const at::Tensor finite = rows.finite_on_device;
  // The static shift needs the operands' largest norm (a host read; none under capture).
  const bool static_shift = options.host_read && cuda::plan::static_shift_certified(
      t, rows.raw_operands_ok ? rows.max_input_sq_norm : rows.max_sq_norm, precision == P::kFp64);
  rows = UniformRows();  // keep the peak at a few copies of the rows

  cuda::UniformProblem problem{operand.data_ptr(), x.size(0), has_queue ? queue->size(0) : 0, x.size(1), t,
                               intra_batch, part, num_parts, grad_x, grad_queue, precision, static_shift};
  problem.max_ctas = max_ctas;
  const int smem_optin = device_attribute(x, cudaDevAttrMaxSharedMemoryPerBlockOptin);
  problem.block_rows = cuda::uniform_block_rows_for(
      precision, block_rows == 64 ? cuda::uniform_shared_memory_bytes(precision, 64) : smem_optin);
  TORCH_CHECK(problem.block_rows > 0, "uniform_loss: the CUDA kernel for ", x.scalar_type(), " needs ",
              cuda::uniform_shared_memory_bytes(precision, 64), " bytes of shared memory per block at least; ",
              x.device(), " allows ", smem_optin);
  // lse is a double (ops.h); the gradient is in the kernel's accumulation type (float64
  // for float64 rows, also when the policy moved float32 rows there).
  const bool compute_grad = grad_x || grad_queue;
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(cuda::uniform_workspace_bytes(problem))}, x.options().dtype(at::kByte));
  at::Tensor lse = at::empty({}, x.options().dtype(at::kDouble));
  at::Tensor grad_rows = compute_grad ? at::empty({problem.n + problem.k, problem.d},
                                                  x.options().dtype(operand.scalar_type() == at::kDouble ? at::kDouble
                                                                                                         : at::kFloat))
                                      : at::Tensor();
  const cudaError_t err = cuda::launch_uniform_lse(problem, workspace.data_ptr(), lse.data_ptr(),
                                                   compute_grad ? grad_rows.data_ptr() : nullptr, stream);
  TORCH_CHECK(err == cudaSuccess, "uniform_loss: CUDA kernel launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (compute_grad) grad_rows = grad_rows.to(accumulate_dtype(x.scalar_type()));
  UniformOutputs outputs = make_uniform_outputs(lse, grad_rows, 0, x, queue, grad_x, grad_queue);
  return options.host_read ? outputs : mask_nonfinite_outputs(outputs, finite);
}

UniformResult uniform_lse_cuda(const at::Tensor& x, const std::optional<at::Tensor>& queue, double t,
                               bool intra_batch, int64_t part, int64_t num_parts, bool grad_x, bool grad_queue) {
  return uniform_lse_cuda_with(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue, 0, 0);
}

TORCH_LIBRARY_IMPL(pyhypersphere, CUDA, m) { m.impl("uniform_lse", &uniform_lse_cuda); }

// For tests/test_cuda.py: the op with a capped grid (bitwise the op's results) or the
// 64-row kernels (equal to rounding).
TORCH_LIBRARY(pyhypersphere_cuda_testing, m) {
  m.def("uniform_lse_with(Tensor x, Tensor? queue, float t, bool intra_batch, int part, int num_parts, "
        "bool grad_x, bool grad_queue, int max_ctas, int block_rows) -> (Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(pyhypersphere_cuda_testing, CUDA, m) { m.impl("uniform_lse_with", &uniform_lse_cuda_with); }

}  // namespace pyhypersphere
