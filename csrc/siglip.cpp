// The SigLIP family: its operator schema and argument checks, for every backend.
//
// siglip(x, y, t, b, coef, grad_x, grad_y, grad_tb) -> (total, rows, grad_x, grad_y, grad_tb)
//   x [N_x, d], y [N_y, d]: floating point, same d, dtype and device.  t, b: one-element
//   floating-point tensors (the scale and bias; a kernel reads their values).  coef [N_x]:
//   one coefficient per row of x (floating point, x's device).
//   The logits l_ij = t <x_i, y_j> + b over all N_x x N_y pairs, labels z_ij = +1 for the
//   positives (i, i), i < min(N_x, N_y), and -1 elsewhere (SigLIP, Zhai et al. 2023).
//   rows[i] = sum_j softplus(-z_ij l_ij) = -sum_j log sigmoid(z_ij l_ij), [N_x], each term
//   formed as max(u, 0) + log1p(e^-|u|) (u = -z l: never overflows, never cancels);
//   total = sum_i coef[i] rows[i], 0-dim.  With their flags, the gradients of `total` with
//   respect to x ([N_x, d]), y ([N_y, d]) and (t, b) ([2]) from the same pass over the
//   pairs: with w_ij = coef[i] d softplus(-z_ij l_ij) / d l_ij = -coef[i] z_ij sigmoid(-z_ij l_ij),
//   d/dx_i = t sum_j w_ij y_j, d/dy_j = t sum_i w_ij x_i, d/dt = sum_ij w_ij <x_i, y_j>,
//   d/db = sum_ij w_ij.  No log-sum-exp, so no second pass: every weight is known as soon
//   as its logit is.  Each gradient is an empty [0] tensor when its flag is false.  All
//   outputs in the accumulation dtype (float64 for float64 inputs, float32 otherwise).
//   NaN or inf in x, y, t or b give NaN outputs.
//
// siglip_check(x, y, t, b, coef) -> (): the same checks, for the kernels that launch from
//   Python (pyhypersphere/triton_kernels/siglip.py): one source of truth for the messages.
#include "input_checks.h"

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

namespace {

void siglip_check(const at::Tensor& x, const at::Tensor& y, const at::Tensor& t,
                  const at::Tensor& b, const at::Tensor& coef) {
  check_siglip_args(x, y, t, b, coef);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyhypersphere, m) {
  m.def(
      "siglip(Tensor x, Tensor y, Tensor t, Tensor b, Tensor coef, bool grad_x, bool grad_y, "
      "bool grad_tb) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("siglip_check(Tensor x, Tensor y, Tensor t, Tensor b, Tensor coef) -> ()");
}

TORCH_LIBRARY_IMPL(pyhypersphere, CompositeExplicitAutograd, m) {
  m.impl("siglip_check", &siglip_check);
}

}  // namespace pyhypersphere
