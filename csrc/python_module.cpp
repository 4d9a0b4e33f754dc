// The Python module pyhypersphere._C: loading it registers the operators (op_schemas.cpp
// and the backends); build_info() reports how the extension was built.
#include "cpu/tile_epilogue.h"
#include "cpu/tile_gemm.h"
#include "input_checks.h"
#include "uniform_rows.h"

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
// operand_precision_ok), z in the dtype the kernel must compute in.  The argument checks
// are the operator's.
std::tuple<at::Tensor, at::Tensor, bool, bool> plan_uniform_rows_py(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& queue,
                                                              double t, double operand_roundoff) {
  pyhypersphere::check_uniform_args(x, queue, t, true, 0, 1, false);
  pyhypersphere::UniformRows rows = pyhypersphere::plan_uniform_rows(x, queue, t, operand_roundoff);
  return {rows.z, rows.sq_norm, rows.finite, rows.operand_precision_ok};
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "pyhypersphere compiled operators (registered as torch.ops.pyhypersphere.*)";
  module.def("build_info", &build_info,
             "How the extension was built: CUDA or not, CUDA arch list, torch version, "
             "OpenMP, threads, CPU tile GEMM backend.");
  module.def("_exp_fast_for_testing", &exp_fast_for_testing);
  module.def("_plan_uniform_rows", &plan_uniform_rows_py, pybind11::arg("x"), pybind11::arg("queue"),
             pybind11::arg("t"), pybind11::arg("operand_roundoff"),
             "The rows a uniformity kernel reads and the precision it computes in (internal).");
  module.attr("FLOAT32_UNIT_ROUNDOFF") = pyhypersphere::kFloat32UnitRoundoff;
  module.attr("TF32_UNIT_ROUNDOFF") = pyhypersphere::kTf32UnitRoundoff;
  module.attr("FLOAT64_UNIT_ROUNDOFF") = pyhypersphere::kFloat64UnitRoundoff;
}
