// The alignment family: the schema of align_loss (contract in ops.h) and its argument
// checks, one for every backend (csrc/cpu/align_cpu.cpp, csrc/cuda/align_cuda.cpp,
// pyhypersphere/triton_kernels/align.py).
#include "input_checks.h"
#include "ops.h"

#include <torch/library.h>

namespace pyhypersphere {

// A constant initializer: the CUDA glue's registration reads it (see ops.h).
extern const char* const kAlignLossSchema =
    "align_loss(Tensor x, Tensor y, float alpha, bool compute_grad) -> (Tensor, Tensor)";

}  // namespace pyhypersphere

TORCH_LIBRARY_FRAGMENT(pyhypersphere, m) { m.def(pyhypersphere::kAlignLossSchema); }

namespace pyhypersphere {

void check_align_args(const at::Tensor& x, const at::Tensor& y, double alpha) {
  constexpr const char* fn = "align_loss";
  check_feature_matrix(x, fn, "x", 1);
  check_feature_matrix(y, fn, "y", 1);
  check_compatible(x, y, fn, "y", /*same_rows=*/true);
  check_positive_finite(alpha, fn, "alpha");
}

}  // namespace pyhypersphere

// The check as an operator of its own namespace, for the Triton launcher (see uniform.cpp).
TORCH_LIBRARY_FRAGMENT(pyhypersphere_checks, m) {
  m.def("align_loss(Tensor x, Tensor y, float alpha) -> ()", &pyhypersphere::check_align_args);
}
