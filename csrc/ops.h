// The operators of pyhypersphere, declared once for every backend.
//
// uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue)
//     -> (lse, grad_x, grad_queue)
//   x [N, d], queue [K, d] or None: floating point, same dtype and device.
//   The pair set P: all pairs i < j of x's rows when intra_batch, plus every pair
//   (x_i, queue_k).  With num_parts > 1 only the part-th of num_parts disjoint slices
//   of P is summed (distributed training: every rank holds the gathered rows and sums
//   its slice; see tile_schedule.h).
//   lse = log sum_{P} exp(-t ||z_i - z_j||^2), a 0-dim tensor in the accumulation dtype
//   (float64 for float64 inputs, float32 otherwise); -inf for an empty slice.
//   grad_x [N, d] holds d lse / d x when the grad_x flag is set, grad_queue [K, d]
//   holds d lse / d queue when the grad_queue flag is set (it needs a queue); each is
//   an empty [0] tensor when not asked for.  Both are in the accumulation dtype, so a
//   caller that scales or sums them (autograd, the distributed reduce-scatter) rounds to
//   the input dtype once.  A kernel computes only the gradients asked for.
//   The uniformity loss is lse - log |P|.  NaN or inf in the inputs give NaN outputs.
//
// align_loss(x, y, alpha, compute_grad) -> (loss, grad_x)
//   loss = mean_i ||x_i - y_i||^alpha in x's dtype; grad_x = d loss / d x (d loss / d y
//   is -grad_x), or an empty [0] tensor.  At x_i == y_i the gradient is 0.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pyhypersphere {

using UniformResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using AlignResult = std::tuple<at::Tensor, at::Tensor>;

UniformResult uniform_lse_cpu(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              double t, bool intra_batch, int64_t part, int64_t num_parts,
                              bool grad_x, bool grad_queue);
AlignResult align_loss_cpu(const at::Tensor& x, const at::Tensor& y, double alpha,
                           bool compute_grad);

#ifdef PYHYPERSPHERE_WITH_CUDA
UniformResult uniform_lse_cuda(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                               double t, bool intra_batch, int64_t part, int64_t num_parts,
                               bool grad_x, bool grad_queue);
AlignResult align_loss_cuda(const at::Tensor& x, const at::Tensor& y, double alpha,
                            bool compute_grad);
#endif

}  // namespace pyhypersphere
