#include "input_checks.h"

#include <cmath>

namespace pyhypersphere {

void check_feature_matrix(const at::Tensor& tensor, const char* function, const char* name,
                          int64_t min_rows) {
  TORCH_CHECK_VALUE(tensor.dim() == 2, function, ": ", name,
                    " must be a 2-D tensor of shape [N, d], got a ", tensor.dim(),
                    "-D tensor of shape ", tensor.sizes());
  const auto dtype = tensor.scalar_type();
  // isFloatingType also admits the float8 types, which no kernel computes in.
  const bool supported = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                         dtype == at::kBFloat16;
  TORCH_CHECK_VALUE(supported, function, ": ", name,
                    " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                    tensor.scalar_type());
  TORCH_CHECK_VALUE(tensor.size(0) >= min_rows, function, ": ", name, " must have at least ",
                    min_rows, min_rows == 1 ? " row" : " rows", ", got shape ", tensor.sizes());
  TORCH_CHECK_VALUE(tensor.size(1) >= 1, function, ": ", name,
                    " must have at least one feature column, got shape ", tensor.sizes());
}

void check_positive_finite(double value, const char* function, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value > 0, function, ": ", name,
                    " must be a positive finite number, got ", value);
}

void check_compatible(const at::Tensor& x, const at::Tensor& other, const char* function,
                      const char* other_name, bool same_rows) {
  if (same_rows) {
    TORCH_CHECK_VALUE(other.sizes() == x.sizes(), function, ": ", other_name,
                      " must have the same shape as x, got x ", x.sizes(), " and ", other_name,
                      " ", other.sizes());
  } else {
    TORCH_CHECK_VALUE(other.size(1) == x.size(1), function, ": ", other_name,
                      " must have the same feature dimension as x (", x.size(1), "), got shape ",
                      other.sizes());
  }
  TORCH_CHECK_VALUE(other.device() == x.device(), function, ": ", other_name,
                    " must be on the same device as x (", x.device(), "), got ", other.device());
  TORCH_CHECK_VALUE(other.scalar_type() == x.scalar_type(), function, ": ", other_name,
                    " must have the same dtype as x (", x.scalar_type(), "), got ",
                    other.scalar_type());
}

void check_uniform_args(const at::Tensor& x, const std::optional<at::Tensor>& queue, double t,
                        bool intra_batch, int64_t part, int64_t num_parts, bool grad_queue) {
  constexpr const char* fn = "uniform_loss";
  const bool has_queue = queue.has_value() && queue->defined();
  // Without a queue the loss needs one pair inside x; with one, a single row pairs
  // with every queue row.
  check_feature_matrix(x, fn, "x", has_queue ? 1 : 2);
  if (has_queue) {
    check_feature_matrix(*queue, fn, "queue", 1);
    check_compatible(x, *queue, fn, "queue", /*same_rows=*/false);
  }
  TORCH_CHECK_VALUE(has_queue || !grad_queue, fn,
                    ": grad_queue=True needs a queue (got queue=None)");
  check_positive_finite(t, fn, "t");
  TORCH_CHECK_VALUE(num_parts >= 1, fn, ": num_parts must be >= 1, got ", num_parts);
  TORCH_CHECK_VALUE(part >= 0 && part < num_parts, fn, ": part must be in [0, num_parts = ",
                    num_parts, "), got ", part);
}

void check_align_args(const at::Tensor& x, const at::Tensor& y, double alpha) {
  constexpr const char* fn = "align_loss";
  check_feature_matrix(x, fn, "x", 1);
  check_feature_matrix(y, fn, "y", 1);
  check_compatible(x, y, fn, "y", /*same_rows=*/true);
  check_positive_finite(alpha, fn, "alpha");
}

}  // namespace pyhypersphere
