// Tensor checks shared by every operator and backend; each family's checks of its
// arguments (check_<op>_args, declared in ops.h) are built from these in csrc/<family>.cpp.
// Each message names the public function, the argument and what was expected, so a user
// sees at once which input is wrong.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace pyhypersphere {

// Raises ValueError unless `tensor` is a 2-D floating-point matrix [rows, d] with
// at least `min_rows` rows and d >= 1.
void check_feature_matrix(const at::Tensor& tensor, const char* function, const char* name,
                          int64_t min_rows);

// Raises ValueError unless `value` is finite and > 0.
void check_positive_finite(double value, const char* function, const char* name);

// Raises ValueError unless `other` has the same trailing dimension, dtype and device
// as `x` (and, when `same_rows`, the same number of rows).
void check_compatible(const at::Tensor& x, const at::Tensor& other, const char* function,
                      const char* other_name, bool same_rows);

// Raises ValueError unless 0 <= part < num_parts.
void check_part(int64_t part, int64_t num_parts, const char* function);

}  // namespace pyhypersphere
