// The Python module pyhypersphere._C: loading it registers the operators (op_schemas.cpp
// and the backends); build_info() reports how the extension was built.
#include "cpu/tile_epilogue.h"
#include "cpu/tile_gemm.h"

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

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "pyhypersphere compiled operators (registered as torch.ops.pyhypersphere.*)";
  module.def("build_info", &build_info,
             "How the extension was built: CUDA or not, CUDA arch list, torch version, "
             "OpenMP, threads, CPU tile GEMM backend.");
  module.def("_exp_fast_for_testing", &exp_fast_for_testing);
}
