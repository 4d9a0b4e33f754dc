// The supervised contrastive family: the schemas of supcon_lse and supcon_lse_backward
// (contract in ops.h) and their argument checks, one for every backend
// (csrc/cpu/supcon_cpu.cpp, pyhypersphere/triton_kernels/supcon.py).
#include "input_checks.h"
#include "ops.h"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyhypersphere, m) {
  m.def(
      "supcon_lse(Tensor x, Tensor labels, float scale, int part=0, int num_parts=1) -> (Tensor, "
      "Tensor, Tensor)");
  m.def(
      "supcon_lse_backward(Tensor x, Tensor labels, float scale, Tensor lse, Tensor grad_lse, "
      "Tensor grad_positive, int part=0, int num_parts=1) -> Tensor");
}

namespace pyhypersphere {

namespace {

void check_supcon_inputs(const at::Tensor& x, const at::Tensor& labels, double scale, int64_t part,
                         int64_t num_parts, const char* function) {
  check_feature_matrix(x, function, "x", 1);
  check_positive_finite(scale, function, "scale");
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == x.size(0), function,
                    ": labels must be a 1-D tensor with one label per row of x (", x.size(0),
                    "), got shape ", labels.sizes());  // [5]: as Python's list(shape)
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, function,
                    ": labels must be an int64 tensor (labels.long())");
  TORCH_CHECK_VALUE(labels.device() == x.device(), function,
                    ": labels must be on the same device as x (", x.device(), "), got ",
                    labels.device());
  check_part(part, num_parts, function);
}

}  // namespace

void check_supcon_lse_args(const at::Tensor& x, const at::Tensor& labels, double scale, int64_t part,
                           int64_t num_parts) {
  check_supcon_inputs(x, labels, scale, part, num_parts, "supcon_lse");
}

void check_supcon_lse_backward_args(const at::Tensor& x, const at::Tensor& labels, double scale,
                                    const at::Tensor& lse, const at::Tensor& grad_lse,
                                    const at::Tensor& grad_positive, int64_t part, int64_t num_parts) {
  const char* function = "supcon_lse_backward";
  check_supcon_inputs(x, labels, scale, part, num_parts, function);
  const int64_t n = x.size(0);
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == n, function, ": lse must have shape [", n,
                    "], got ", lse.sizes());
  TORCH_CHECK_VALUE(grad_lse.dim() == 1 && grad_lse.size(0) == n, function,
                    ": grad_lse must have shape [", n, "], got ", grad_lse.sizes());
  TORCH_CHECK_VALUE(grad_positive.dim() == 1 && grad_positive.size(0) == n, function,
                    ": grad_positive must have shape [", n, "], got ", grad_positive.sizes());
}

}  // namespace pyhypersphere

// The checks as operators of their own namespace, for the Triton launchers (see uniform.cpp).
TORCH_LIBRARY_FRAGMENT(pyhypersphere_checks, m) {
  m.def("supcon_lse(Tensor x, Tensor labels, float scale, int part, int num_parts) -> ()",
        &pyhypersphere::check_supcon_lse_args);
  m.def(
      "supcon_lse_backward(Tensor x, Tensor labels, float scale, Tensor lse, Tensor grad_lse, "
      "Tensor grad_positive, int part, int num_parts) -> ()",
      &pyhypersphere::check_supcon_lse_backward_args);
}
