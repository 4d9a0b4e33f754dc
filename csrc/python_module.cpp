// The Python module pyhypersphere._C: loading it registers the operators (csrc/<family>.cpp
// and the backends); build_info() reports how the extension was built.
#include "cpu/helper_threads.h"
#include "cpu/mean_lse_strips.h"
#include "cpu/tile_epilogue.h"
#include "cpu/tile_gemm.h"
#include "input_checks.h"
#include "ops.h"
#include "uniform_autograd.h"
#include "uniform_rows.h"

#ifdef PYHYPERSPHERE_WITH_CUDA
#include "cuda/uniform_kernels.h"
#endif

#include <ATen/Parallel.h>
#include <torch/extension.h>

#ifndef PYHYPERSPHERE_TORCH_VERSION
#define PYHYPERSPHERE_TORCH_VERSION "unknown"
#endif
#ifndef PYHYPERSPHERE_CUDA_ARCH_LIST
#define PYHYPERSPHERE_CUDA_ARCH_LIST ""
#endif


namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef PYHYPERSPHERE_WITH_CUDA
  info["with_cuda"] = true;
#else
  info["with_cuda"] = false;
#endif
  info["cuda_arch_list"] = std::string(PYHYPERSPHERE_CUDA_ARCH_LIST);
  info["torch_version"] = std::string(PYHYPERSPHERE_TORCH_VERSION);
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["num_threads"] = at::get_num_threads();
  info["cpu_tile_gemm"] = pyhypersphere::cpu::tile_gemm_backend();
  info["cpu_tile_isa"] = pyhypersphere::cpu::tile_isa();
  info["parallel_info"] = at::get_parallel_info();
  return info;
}

// The CPU kernel's float exp, element-wise, so a test can hold it to a float64 exp.
at::Tensor exp_fast_for_testing(const at::Tensor& values) {
  TORCH_CHECK_VALUE(values.scalar_type() == at::kFloat && values.device().is_cpu(),
                    "values must be a float32 CPU tensor");
  at::Tensor in = values.contiguous();
  at::Tensor out = at::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < in.numel(); ++i) dst[i] = pyhypersphere::cpu::exp_fast(src[i]);
  return out;
}

// The shared row preparation and precision policy (plan_uniform_rows), for the kernels
// that launch from Python (pyhypersphere/triton_kernels): (z, sq_norm, finite,
// operand_precision_ok, raw_operands_ok, finite_on_device), z in the dtype the kernel must
// compute in.  With host_read false (CUDA-graph capture) `finite` is unknown (true) and the
// caller masks its outputs with finite_on_device, as the CUDA glue does.  The argument
// checks are the operator's.
std::tuple<at::Tensor, at::Tensor, bool, bool, bool, at::Tensor> plan_uniform_rows_py(
    const at::Tensor& x, const std::optional<at::Tensor>& queue, double t,
    double operand_roundoff, bool raw_16bit_operands, bool host_read, bool intra_batch) {
  pyhypersphere::check_uniform_args(x, queue, t, intra_batch, 0, 1, false);
  pyhypersphere::UniformPlanOptions options;
  options.raw_16bit_operands = raw_16bit_operands;
  options.host_read = host_read;
  pyhypersphere::UniformRows rows =
      pyhypersphere::plan_uniform_rows(x, queue, intra_batch, t, operand_roundoff, options);
  return {rows.z, rows.sq_norm, rows.finite, rows.operand_precision_ok, rows.raw_operands_ok,
          rows.finite_on_device};
}

#ifdef PYHYPERSPHERE_WITH_CUDA
// Rows per tile the CUDA glue runs with on a device allowing `smem_optin` bytes of
// shared memory per block (0: no kernel fits), per precision: the tests' skip rule.
pybind11::dict cuda_tile_rows_py(int64_t smem_optin) {
  using pyhypersphere::cuda::UniformPrecision;
  pybind11::dict out;
  const std::pair<const char*, UniformPrecision> all[] = {
      {"bfloat16", UniformPrecision::kBf16}, {"float16", UniformPrecision::kFp16},
      {"tf32", UniformPrecision::kTf32},     {"float32", UniformPrecision::kFp32},
      {"float64", UniformPrecision::kFp64}};
  for (const auto& [name, precision] : all) {
    out[name] = pyhypersphere::cuda::uniform_block_rows_for(precision, smem_optin);
  }
  return out;
}
#endif

// The whole decision of plan_uniform_rows with the CUDA glue's options, for host-side
// tests of the policy: the dtype of z and the flags the kernel selection reads.
pybind11::dict uniform_rows_policy_py(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                      double t, double operand_roundoff, bool raw_16bit_operands,
                                      bool host_read, bool intra_batch) {
  pyhypersphere::check_uniform_args(x, queue, t, intra_batch, 0, 1, false);
  pyhypersphere::UniformPlanOptions options;
  options.raw_16bit_operands = raw_16bit_operands;
  options.host_read = host_read;
  const pyhypersphere::UniformRows rows =
      pyhypersphere::plan_uniform_rows(x, queue, intra_batch, t, operand_roundoff, options);
  pybind11::dict out;
  out["dtype"] = pybind11::str(c10::toString(rows.z.scalar_type()));
  out["finite"] = rows.finite;
  out["finite_on_device"] = rows.finite_on_device;
  out["operand_precision_ok"] = rows.operand_precision_ok;
  out["raw_operands_ok"] = rows.raw_operands_ok;
  out["max_sq_norm"] = rows.max_sq_norm;
  out["max_input_sq_norm"] = rows.max_input_sq_norm;
  out["mean_pair_sq_distance"] = rows.mean_pair_sq_distance;
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "pyhypersphere compiled operators (registered as torch.ops.pyhypersphere.*)";
  module.def("build_info", &build_info,
             "How the extension was built: CUDA or not, CUDA arch list, torch version, "
             "OpenMP, threads, CPU tile GEMM backend.");
  module.def("_exp_fast_for_testing", &exp_fast_for_testing);
  module.def("_capture_precision_warnings", &pyhypersphere::capture_precision_warnings,
             "Capture (True) or TORCH_WARN (False) the precision warning on this thread; "
             "returns the previous setting (internal).");
  module.def("_take_precision_warning", &pyhypersphere::take_precision_warning,
             "The captured precision warning, or an empty string; clears it (internal).");
  module.def("_uniform_loss_autograd", &pyhypersphere::uniform_loss_autograd, pybind11::arg("x"),
             pybind11::arg("queue"), pybind11::arg("t"), pybind11::arg("intra_batch"),
             pybind11::arg("grad_x"), pybind11::arg("grad_queue"), pybind11::arg("offset"),
             pybind11::arg("loss_dtype"),
             "(lse - offset in loss_dtype, precision warning or '') with uniform_loss's "
             "autograd node in C++: eager CPU calls (csrc/uniform_autograd.h; internal).");
  module.def("_set_uniform_create_graph_gradients",
             &pyhypersphere::set_uniform_create_graph_gradients, pybind11::arg("gradients"),
             "The differentiable gradient formula that _uniform_loss_autograd's backward "
             "calls under create_graph (internal).");
  module.def("_plan_uniform_rows", &plan_uniform_rows_py, pybind11::arg("x"), pybind11::arg("queue"),
             pybind11::arg("t"), pybind11::arg("operand_roundoff"),
             pybind11::arg("raw_16bit_operands") = false, pybind11::arg("host_read") = true,
             pybind11::arg("intra_batch") = true,
             "The rows a uniformity kernel reads and the precision it computes in (internal).");
#ifdef PYHYPERSPHERE_WITH_CUDA
  module.def("_cuda_tile_rows", &cuda_tile_rows_py, pybind11::arg("smem_optin"),
             "Rows per CUDA tile by precision for a shared-memory opt-in limit (internal).");
#endif
  module.def("_uniform_rows_policy", &uniform_rows_policy_py, pybind11::arg("x"),
             pybind11::arg("queue"), pybind11::arg("t"), pybind11::arg("operand_roundoff"),
             pybind11::arg("raw_16bit_operands"), pybind11::arg("host_read"),
             pybind11::arg("intra_batch") = true,
             "plan_uniform_rows' decision with the CUDA glue's options (internal, for tests).");
  module.def(
      "_mean_lse_strip_rows",
      [](int64_t na, int64_t nb, int64_t elem_bytes) {
        return pyhypersphere::cpu::mean_lse_strip_rows(
            na, nb, elem_bytes, pyhypersphere::cpu::mean_lse_strip_budget_bytes());
      },
      "Rows per strip the CPU contrastive_mean_lse and contrastive_lse_row_grad kernels take "
      "for this shape under the "
      "current budget; 0: the two-pass fallback (internal, for tests).");
  module.def(
      "_last_helper_run",
      [] {
        const auto run = pyhypersphere::cpu::last_helper_run();
        return std::make_pair(run.helpers_posted, run.helpers_joined);
      },
      "(helpers posted, helpers that joined) of this thread's latest CPU tile loop "
      "(internal, for tests).");
  module.def("_hold_helpers", &pyhypersphere::cpu::hold_helpers, pybind11::arg("held"),
             "While held, the CPU kernels' helper threads wait before joining, as threads "
             "the scheduler does not run (internal, for tests).");
  // Read at import (the GPU backend choice) without build_info's run-time queries, which
  // raise on a misspelled CPU override that only the first op call should report.
#ifdef PYHYPERSPHERE_WITH_CUDA
  module.attr("WITH_CUDA") = true;
#else
  module.attr("WITH_CUDA") = false;
#endif
  module.attr("FLOAT32_UNIT_ROUNDOFF") = pyhypersphere::kFloat32UnitRoundoff;
  module.attr("TF32_UNIT_ROUNDOFF") = pyhypersphere::kTf32UnitRoundoff;
  module.attr("FLOAT64_UNIT_ROUNDOFF") = pyhypersphere::kFloat64UnitRoundoff;
}
