// Argument checks shared by every backend.  Each message names the public function,
// the argument and what was expected, so a user sees at once which input is wrong.
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

// All checks of the uniformity op, in one place for CPU and CUDA.
void check_uniform_args(const at::Tensor& x, const std::optional<at::Tensor>& queue, double t,
                        bool intra_batch, int64_t part, int64_t num_parts, bool grad_queue);

// All checks of the contrastive op (a and b: see ops.h).
void check_contrastive_args(const at::Tensor& a, const at::Tensor& b, double scale,
                            bool self_pairs, bool lse_b, int64_t part, int64_t num_parts);

// All checks of the contrastive backward op: the forward's, plus the lse and upstream
// gradient vectors' shapes.
void check_contrastive_backward_args(const at::Tensor& a, const at::Tensor& b, double scale,
                                     bool self_pairs, const at::Tensor& lse_a,
                                     const at::Tensor& lse_b, const at::Tensor& grad_lse_a,
                                     const at::Tensor& grad_lse_b, int64_t part,
                                     int64_t num_parts);

// All checks of the contrastive mean-lse op (a and b: see ops.h).
void check_contrastive_mean_lse_args(const at::Tensor& a, const at::Tensor& b, double scale);

// All checks of the alignment op.
void check_align_args(const at::Tensor& x, const at::Tensor& y, double alpha);

}  // namespace pyhypersphere
