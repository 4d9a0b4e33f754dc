// The supervised contrastive (SupCon) family: argument checks shared by its backends.
// Schemas in supcon.cpp; CPU kernel in cpu/supcon_cpu.cpp.
//
// supcon_lse(x, labels, scale, part, num_parts) -> (lse, positive_sum, positive_count)
//   x [N, d] floating point, labels [N] int64 on x's device, scale > 0.  Logits
//   s_ia = scale <x_i, x_a>.  For every anchor i: lse[i] = log sum_{a != i} exp(s_ia),
//   positive_sum[i] = sum_{p != i, labels_p == labels_i} s_ip and positive_count[i] the
//   number of such p (int64).  lse and positive_sum in the accumulation dtype.  With
//   num_parts > 1 only the part-th slice of the pair tiles is summed (tile_schedule.h):
//   slices' lse combine by log-sum-exp (-inf for a row without pairs in the slice),
//   sums and counts add.  NaN or inf in x give NaN lse and sums.
//
// supcon_lse_backward(x, labels, scale, lse, grad_lse, grad_positive, part, num_parts)
//   -> grad_x
//   Given the whole (not per-part) lse and upstream gradients grad_lse [N] and
//   grad_positive [N], the gradient of sum_i grad_lse[i] lse[i] + grad_positive[i]
//   positive_sum[i] with respect to x from this part's tiles, in the accumulation dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace pyhypersphere {

void check_supcon_args(const at::Tensor& x, const at::Tensor& labels, double scale, int64_t part,
                       int64_t num_parts, const char* function);

void check_supcon_backward_args(const at::Tensor& x, const at::Tensor& labels, double scale,
                                const at::Tensor& lse, const at::Tensor& grad_lse,
                                const at::Tensor& grad_positive, int64_t part, int64_t num_parts);

}  // namespace pyhypersphere
