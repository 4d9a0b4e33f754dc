#include "input_checks.h"

#include <cmath>
#include <sstream>
#include <string>

namespace pyhypersphere {

namespace {

// Shapes and dtypes as Python prints them ("(8, 5)", "(8,)", "torch.int64"): the same
// words as the checks written in Python (pyhypersphere/contrastive.py), so one mistake
// reads the same in every loss.
std::string py_shape(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

std::string py_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(dtype);
  }
}

}  // namespace

void check_feature_matrix(const at::Tensor& tensor, const char* function, const char* name,
                          int64_t min_rows) {
  TORCH_CHECK_VALUE(tensor.dim() == 2, function, ": ", name,
                    " must be a 2-D tensor of shape [N, d], got shape ", py_shape(tensor.sizes()));
  const auto dtype = tensor.scalar_type();
  // isFloatingType also admits the float8 types, which no kernel computes in.
  const bool supported = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                         dtype == at::kBFloat16;
  TORCH_CHECK_VALUE(supported, function, ": ", name,
                    " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                    py_dtype(tensor.scalar_type()));
  TORCH_CHECK_VALUE(tensor.size(0) >= min_rows, function, ": ", name, " must have at least ",
                    min_rows, min_rows == 1 ? " row" : " rows", ", got shape ", py_shape(tensor.sizes()));
  TORCH_CHECK_VALUE(tensor.size(1) >= 1, function, ": ", name,
                    " must have at least one feature column, got shape ", py_shape(tensor.sizes()));
}

void check_positive_finite(double value, const char* function, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value > 0, function, ": ", name,
                    " must be a positive finite number, got ", value);
}

void check_compatible(const at::Tensor& x, const at::Tensor& other, const char* function,
                      const char* other_name, bool same_rows) {
  if (same_rows) {
    TORCH_CHECK_VALUE(other.sizes() == x.sizes(), function, ": ", other_name,
                      " must have the same shape as x, got x ", py_shape(x.sizes()), " and ",
                      other_name, " ", py_shape(other.sizes()));
  } else {
    TORCH_CHECK_VALUE(other.size(1) == x.size(1), function, ": ", other_name,
                      " must have the same feature dimension as x (", x.size(1), "), got shape ",
                      py_shape(other.sizes()));
  }
  TORCH_CHECK_VALUE(other.device() == x.device(), function, ": ", other_name,
                    " must be on the same device as x (", x.device(), "), got ", other.device());
  TORCH_CHECK_VALUE(other.scalar_type() == x.scalar_type(), function, ": ", other_name,
                    " must have the same dtype as x (", py_dtype(x.scalar_type()), "), got ",
                    py_dtype(other.scalar_type()));
}

void check_part(int64_t part, int64_t num_parts, const char* function) {
  TORCH_CHECK_VALUE(num_parts >= 1, function, ": num_parts must be >= 1, got ", num_parts);
  TORCH_CHECK_VALUE(part >= 0 && part < num_parts, function, ": part must be in [0, num_parts = ",
                    num_parts, "), got ", part);
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
  check_part(part, num_parts, fn);
}

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

void check_contrastive_mean_lse_args(const at::Tensor& a, const at::Tensor& b, double scale) {
  constexpr const char* fn = "contrastive_mean_lse";
  check_logit_inputs(a, b, scale, fn);
  TORCH_CHECK_VALUE(b.size(0) >= a.size(0), fn, ": b must have at least as many rows as a (",
                    a.size(0), "; b_i is a_i's positive), got shape ", b.sizes());
}

void check_align_args(const at::Tensor& x, const at::Tensor& y, double alpha) {
  constexpr const char* fn = "align_loss";
  check_feature_matrix(x, fn, "x", 1);
  check_feature_matrix(y, fn, "y", 1);
  check_compatible(x, y, fn, "y", /*same_rows=*/true);
  check_positive_finite(alpha, fn, "alpha");
}

}  // namespace pyhypersphere
