// The SigLIP family: the schema of siglip (contract in ops.h) and its argument checks, one
// for every backend (csrc/cpu/siglip_cpu.cpp, pyhypersphere/triton_kernels/siglip.py).
#include "input_checks.h"
#include "ops.h"

#include <ATen/core/Tensor.h>
#include <torch/library.h>

namespace pyhypersphere {

void check_siglip_args(const at::Tensor& x, const at::Tensor& y, const at::Tensor& t,
                       const at::Tensor& b, const at::Tensor& coef) {
  constexpr const char* fn = "siglip_loss";
  check_feature_matrix(x, fn, "x", 1);
  check_feature_matrix(y, fn, "y", 1);
  check_compatible(x, y, fn, "y", /*same_rows=*/false);
  const auto check_scalar = [&](const at::Tensor& v, const char* name) {
    TORCH_CHECK_VALUE(v.numel() == 1 && v.is_floating_point(), fn, ": ", name,
                      " must be a number or a one-element floating-point tensor, got a ",
                      v.scalar_type(), " tensor of shape ", v.sizes());
  };
  check_scalar(t, "t");
  check_scalar(b, "b");
  TORCH_CHECK_VALUE(coef.dim() == 1 && coef.size(0) == x.size(0) && coef.is_floating_point(), fn,
                    ": coef must be a floating-point tensor of shape [", x.size(0), "] (one per row of x), got ",
                    coef.scalar_type(), " of shape ", coef.sizes());
  TORCH_CHECK_VALUE(coef.device() == x.device(), fn, ": coef must be on the same device as x (",
                    x.device(), "), got ", coef.device());
}

TORCH_LIBRARY_FRAGMENT(pyhypersphere, m) {
  m.def(
      "siglip(Tensor x, Tensor y, Tensor t, Tensor b, Tensor coef, bool grad_x, bool grad_y, "
      "bool grad_tb) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace pyhypersphere

// The check as an operator of its own namespace, for the Triton launcher (see uniform.cpp).
TORCH_LIBRARY_FRAGMENT(pyhypersphere_checks, m) {
  m.def("siglip(Tensor x, Tensor y, Tensor t, Tensor b, Tensor coef) -> ()",
        &pyhypersphere::check_siglip_args);
}
