// The contrastive family: the schemas of contrastive_lse, contrastive_lse_backward,
// contrastive_lse_row_grad and contrastive_mean_lse (contract in ops.h) and their argument checks, one for every
// backend (csrc/cpu/contrastive_cpu.cpp, pyhypersphere/triton_kernels/contrastive.py).
#include "input_checks.h"
#include "ops.h"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyhypersphere, m) {
  m.def(
      "contrastive_lse(Tensor a, Tensor b, float scale, bool self_pairs, bool lse_b, int part, "
      "int num_parts, bool skip_positives=False) -> (Tensor, Tensor)");
  m.def(
      "contrastive_lse_backward(Tensor a, Tensor b, float scale, bool self_pairs, Tensor lse_a, "
      "Tensor lse_b, Tensor grad_lse_a, Tensor grad_lse_b, int part, int num_parts, bool grad_a, "
      "bool grad_b, bool skip_positives=False) -> (Tensor, Tensor)");
  m.def(
      "contrastive_lse_row_grad(Tensor a, Tensor b, float scale, bool skip_positives=False) -> "
      "(Tensor, Tensor)");
  m.def(
      "contrastive_mean_lse(Tensor a, Tensor b, float scale, bool grad_a, bool grad_b) -> (Tensor, "
      "Tensor, Tensor)");
}

namespace pyhypersphere {

namespace {

// The logit inputs a, b and scale of the contrastive operators.
void check_logit_inputs(const at::Tensor& a, const at::Tensor& b, double scale, const char* fn) {
  check_feature_matrix(a, fn, "a", 1);
  check_feature_matrix(b, fn, "b", 1);
  TORCH_CHECK_VALUE(b.size(1) == a.size(1), fn, ": b must have the same feature dimension as a (",
                    a.size(1), "), got shape ", b.sizes());
  TORCH_CHECK_VALUE(b.device() == a.device(), fn, ": b must be on the same device as a (",
                    a.device(), "), got ", b.device());
  TORCH_CHECK_VALUE(b.scalar_type() == a.scalar_type(), fn, ": b must have the same dtype as a (",
                    a.scalar_type(), "), got ", b.scalar_type());
  check_positive_finite(scale, fn, "scale");
}

}  // namespace

void check_contrastive_args(const at::Tensor& a, const at::Tensor& b, double scale,
                            bool self_pairs, bool lse_b, int64_t part, int64_t num_parts) {
  constexpr const char* fn = "contrastive_lse";
  check_logit_inputs(a, b, scale, fn);
  TORCH_CHECK_VALUE(!self_pairs || lse_b, fn,
                    ": self_pairs=True computes the lse of every row of a and b; pass lse_b=True");
  check_part(part, num_parts, fn);
}

void check_contrastive_backward_args(const at::Tensor& a, const at::Tensor& b, double scale,
                                     bool self_pairs, const at::Tensor& lse_a,
                                     const at::Tensor& lse_b, const at::Tensor& grad_lse_a,
                                     const at::Tensor& grad_lse_b, int64_t part,
                                     int64_t num_parts) {
  constexpr const char* fn = "contrastive_lse_backward";
  check_contrastive_args(a, b, scale, self_pairs, true, part, num_parts);
  const auto check_vector = [&](const at::Tensor& v, const char* name, int64_t rows, bool optional) {
    const bool ok = (v.dim() == 1 && v.size(0) == rows) || (optional && v.numel() == 0);
    TORCH_CHECK_VALUE(ok, fn, ": ", name, " must have shape [", rows, "]",
                      optional ? " (or [0] when absent)" : "", ", got ", v.sizes());
    TORCH_CHECK_VALUE(v.device() == a.device() && v.is_floating_point(), fn, ": ", name,
                      " must be a floating-point tensor on ", a.device());
  };
  check_vector(lse_a, "lse_a", a.size(0), false);
  check_vector(grad_lse_a, "grad_lse_a", a.size(0), false);
  // b's lse takes part in the weights whenever its rows have an upstream gradient, and
  // always with self pairs.
  check_vector(grad_lse_b, "grad_lse_b", b.size(0), !self_pairs);
  check_vector(lse_b, "lse_b", b.size(0), !self_pairs && grad_lse_b.numel() == 0);
}

void check_contrastive_row_grad_args(const at::Tensor& a, const at::Tensor& b, double scale) {
  check_logit_inputs(a, b, scale, "contrastive_lse_row_grad");
}

void check_contrastive_mean_lse_args(const at::Tensor& a, const at::Tensor& b, double scale) {
  constexpr const char* fn = "contrastive_mean_lse";
  check_logit_inputs(a, b, scale, fn);
  TORCH_CHECK_VALUE(b.size(0) >= a.size(0), fn, ": b must have at least as many rows as a (",
                    a.size(0), "; b_i is a_i's positive), got shape ", b.sizes());
}

}  // namespace pyhypersphere

// The checks as operators of their own namespace, for the Triton launchers (see uniform.cpp).
TORCH_LIBRARY_FRAGMENT(pyhypersphere_checks, m) {
  m.def(
      "contrastive_lse(Tensor a, Tensor b, float scale, bool self_pairs, bool lse_b, int part, "
      "int num_parts) -> ()",
      &pyhypersphere::check_contrastive_args);
  m.def(
      "contrastive_lse_backward(Tensor a, Tensor b, float scale, bool self_pairs, Tensor lse_a, "
      "Tensor lse_b, Tensor grad_lse_a, Tensor grad_lse_b, int part, int num_parts) -> ()",
      &pyhypersphere::check_contrastive_backward_args);
  m.def("contrastive_lse_row_grad(Tensor a, Tensor b, float scale) -> ()",
        &pyhypersphere::check_contrastive_row_grad_args);
  m.def("contrastive_mean_lse(Tensor a, Tensor b, float scale) -> ()",
        &pyhypersphere::check_contrastive_mean_lse_args);
}
