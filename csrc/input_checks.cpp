#include "input_checks.h"

#include <cmath>
#include <sstream>
#include <string>

namespace pyhypersphere {

namespace {

// Shapes and dtypes as Python prints them ("(8, 5)", "(8,)", "torch.int64"): the same
// words as the checks written in Python (pyhypersphere/ops/_common.py), so one mistake
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

}  // namespace pyhypersphere
