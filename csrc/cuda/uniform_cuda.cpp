// Torch glue of the CUDA uniformity kernels (uniform_kernels.h): argument checks,
// device guard and stream, the precision of the tile products, the workspace and the
// outputs of the ops.h contract.  Host compiler only; the kernels live in .cu files.
//
// Precision: the shared policy (plan_uniform_rows, csrc/uniform_rows.cpp) with the
// operand format PyTorch's matmul settings ask for:
//   float32   TF32 tensor cores when torch.backends.cuda.matmul.fp32_precision is "tf32"
//             (torch.set_float32_matmul_precision("high"/"medium"),
//             torch.backends.cuda.matmul.allow_tf32 = True) and the rows' spread allows
//             TF32's roundoff (2^-11), else 3xTF32 (float32 accuracy), else float64 rows
//   bf16/fp16 tensor cores on the raw 16-bit inputs (exact products, float32 sums) when
//             their uncentered spread allows, else the centered float32 rows as float32
//   float64   FP64 tensor cores
// Under CUDA-graph capture there is no host read: float32 accuracy (3xTF32) for every
// non-float64 input, NaN outputs for non-finite inputs by a device-side select.
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

#include <torch/version.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <string>

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

// The kernel for the rows the policy chose: their dtype, and for float32 rows whether
// the fast operand format (TF32) is allowed and suffices.
cuda::UniformPrecision tile_precision(const UniformRows& rows, at::ScalarType input, bool tf32) {
  if (rows.raw_operands_ok) {
    return input == at::kBFloat16 ? cuda::UniformPrecision::kBf16 : cuda::UniformPrecision::kFp16;
  }
  if (rows.z.scalar_type() == at::kDouble) return cuda::UniformPrecision::kFp64;
  return tf32 && rows.operand_precision_ok ? cuda::UniformPrecision::kTf32
                                           : cuda::UniformPrecision::kFp32;
}

// Knobs for the GPU tests and experiments, read per call:
//   PYHS_CUDA_MAX_CTAS=n        caps the tile kernel's grid (results must not depend on
//                               it; 0 or unset: no cap)
//   PYHS_CUDA_BLOCK_ROWS=64     the 64-row tiles of 99 KiB devices, on any device
//   PYHS_CUDA_SIDE_GROUPS=n|0   side groups for queue shapes (UniformProblem::side_groups):
//                               n per small-side block (1 is one group: none), or 0 for
//                               none; unset or "auto": automatic, the default; anything
//                               else is an error
//   PYHS_CUDA_PRODUCTS_FIRST=1  the gradient products before the turn
//                               (UniformProblem::products_first_ctas: staging for the
//                               CTAs resident at once); 0 or unset: off
int64_t debug_knob(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::max<int64_t>(0, std::atoll(value)) : 0;
}

int64_t side_groups_knob() {
  const char* value = std::getenv("PYHS_CUDA_SIDE_GROUPS");
  const std::string text = value ? value : "auto";
  if (text == "auto") return cuda::UniformProblem().side_groups;
  const bool digits = !text.empty() && text.size() <= 9 &&
                      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  TORCH_CHECK_VALUE(digits, "uniform_loss: PYHS_CUDA_SIDE_GROUPS must be auto, 0 (off) or a number of "
                    "groups, got '", text, "'");
  return std::stoll(text);
}

void check_device_capability(const at::Tensor& x) {
  const int device = x.get_device();
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  TORCH_CHECK(major >= 8, "uniform_loss: the CUDA kernels need a GPU of compute capability 8.0 or "
              "newer (A100, H100, ...); ", x.device(), " has ", major, ".", minor);
}

int shared_memory_optin(const at::Tensor& x) {
  int smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        x.get_device()));
  return smem_optin;
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
  check_device_capability(x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool tf32 = tf32_allowed();

  UniformPlanOptions options;
  options.raw_16bit_operands = true;
  options.host_read = !stream_is_capturing(stream);
  UniformRows rows = plan_uniform_rows(x, queue, intra_batch, t, tf32 ? kTf32UnitRoundoff : kFloat32UnitRoundoff,
                                       options);
  if (!rows.finite) return nonfinite_uniform_outputs(x, queue, grad_x, grad_queue);
  const cuda::UniformPrecision precision = tile_precision(rows, x.scalar_type(), tf32);
  // The operands: the raw 16-bit inputs (stacked), or the centered rows in the dtype the
  // policy chose.  The kernels compute the squared norms of exactly what they read.
  const bool has_queue = queue.has_value() && queue->defined();
  const at::Tensor operand = !rows.raw_operands_ok ? rows.z
                             : has_queue           ? at::cat({x, *queue}, 0)
                                                   : x.contiguous();
  const at::Tensor finite = rows.finite_on_device;
  rows = UniformRows();  // keep the peak at a few copies of the rows

  cuda::UniformProblem problem;
  problem.rows = operand.data_ptr();
  problem.n = x.size(0);
  problem.k = has_queue ? queue->size(0) : 0;
  problem.d = x.size(1);
  problem.t = t;
  problem.intra_batch = intra_batch;
  problem.part = part;
  problem.num_parts = num_parts;
  problem.compute_grad = compute_grad;
  problem.precision = precision;
  const int64_t forced_rows = debug_knob("PYHS_CUDA_BLOCK_ROWS");
  problem.block_rows = cuda::uniform_block_rows_for(
      precision, forced_rows == 64 ? cuda::uniform_shared_memory_bytes(precision, 64)
                                   : shared_memory_optin(x));
  problem.max_ctas = debug_knob("PYHS_CUDA_MAX_CTAS");
  problem.side_groups = side_groups_knob();
  TORCH_CHECK(problem.block_rows > 0, "uniform_loss: the CUDA kernel for ", x.scalar_type(),
              " needs ", cuda::uniform_shared_memory_bytes(precision, 64),
              " bytes of shared memory per block at least; ", x.device(), " allows ",
              shared_memory_optin(x));
  if (debug_knob("PYHS_CUDA_PRODUCTS_FIRST") > 0) {
    C10_CUDA_CHECK(cuda::uniform_resident_tile_ctas(precision, problem.block_rows, /*products_first=*/true,
                                                    &problem.products_first_ctas));
  }

  // The kernel writes lse as a double, the gradient in its own accumulation type (float64
  // for float64 rows, also when the policy moved float32 rows there).
  const auto kernel_options = x.options().dtype(operand.scalar_type() == at::kDouble ? at::kDouble
                                                                                     : at::kFloat);
  const at::Tensor workspace = at::empty(
      {static_cast<int64_t>(cuda::uniform_workspace_bytes(problem))}, x.options().dtype(at::kByte));
  at::Tensor lse = at::empty({}, x.options().dtype(at::kDouble));
  at::Tensor grad_rows =
      compute_grad ? at::empty({problem.n + problem.k, problem.d}, kernel_options) : at::Tensor();
  const cudaError_t err = cuda::launch_uniform_lse(
      problem, workspace.data_ptr(), lse.data_ptr(), compute_grad ? grad_rows.data_ptr() : nullptr,
      stream);
  TORCH_CHECK(err == cudaSuccess, "uniform_loss: CUDA kernel launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto acc = accumulate_dtype(x.scalar_type());
  if (compute_grad) grad_rows = grad_rows.to(acc);
  UniformOutputs outputs = make_uniform_outputs(lse, grad_rows, 0, x, queue, grad_x, grad_queue);
  return options.host_read ? outputs : mask_nonfinite_outputs(outputs, finite);
}

TORCH_LIBRARY_IMPL(pyhypersphere, CUDA, m) { m.impl("uniform_lse", &uniform_lse_cuda); }

}  // namespace pyhypersphere
