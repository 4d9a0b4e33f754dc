// The operators of pyhypersphere, declared once for every backend.  Each family's schema
// and argument checks are in csrc/<family>.cpp (uniform.cpp, align.cpp, contrastive.cpp),
// its CPU kernel in csrc/cpu/<family>_cpu.cpp, its C++ CUDA kernel (where there is one) in
// csrc/cuda/<family>_cuda.cpp; docs/adding_a_loss.md.
//
// uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue)
//     -> (lse, grad_x, grad_queue)
//   x [N, d], queue [K, d] or None: floating point, same dtype and device.
//   The pair set P: all pairs i < j of x's rows when intra_batch, plus every pair
//   (x_i, queue_k).  With num_parts > 1 only the part-th of num_parts disjoint slices
//   of P is summed (distributed training: every rank holds the gathered rows and sums
//   its slice; see tile_schedule.h).
//   lse = log sum_{P} exp(-t ||z_i - z_j||^2), a 0-dim float64 tensor (whatever the
//   inputs: the loss lse - log |P| is a difference of two numbers near log |P|, and keeps
//   its digits only if lse does); -inf for an empty slice.
//   grad_x [N, d] holds d lse / d x when the grad_x flag is set, grad_queue [K, d]
//   holds d lse / d queue when the grad_queue flag is set (it needs a queue); each is
//   an empty [0] tensor when not asked for.  Both are in the accumulation dtype (float64
//   for float64 inputs, float32 otherwise), so a
//   caller that scales or sums them (autograd, the distributed reduce-scatter) rounds to
//   the input dtype once.  A kernel computes only the gradients asked for.
//   The uniformity loss is lse - log |P|.  NaN or inf in the inputs give NaN outputs.
//
// contrastive_lse(a, b, scale, self_pairs, lse_b, part, num_parts, skip_positives)
//     -> (lse_a, lse_b)
//   a [N_a, d], b [N_b, d]: floating point, same dtype and device; scale > 0.  The logits
//   are s(u, v) = scale <u, v>.  Each row's partners:
//     cross pairs (self_pairs false): a_i's are the rows of b, b_j's the rows of a;
//     self pairs (self_pairs true):   every row of a and b stacked, except the row itself
//                                     (SimCLR's 2N views).
//   With skip_positives the positive pairs (a_i, b_i), i < min(N_a, N_b), are not
//   partners either (on both sides): the lse are then over the negatives only, and a
//   loss forms each row's cross entropy as log(1 + exp(lse - s_pos)) without the
//   cancellation of (lse with the positive) - s_pos when the positive dominates.
//   lse_a[i] = log sum_{partners v of a_i} exp(s(a_i, v)), [N_a]; lse_b likewise for b's
//   rows when lse_b (with cross pairs these are the column log-sum-exps of a b^T), else
//   an empty [0] (self pairs need lse_b = True).  In the accumulation dtype; -inf for a
//   row without partners.  With num_parts > 1 only the part-th slice of the pair tiles
//   is summed (see tile_schedule.h); rows without pairs in the slice get -inf, and the
//   slices' lse combine by log-sum-exp.  NaN or inf in the inputs give NaN outputs.
//
// contrastive_lse_backward(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b,
//                          part, num_parts, grad_a, grad_b, skip_positives)
//     -> (grad_a, grad_b)
//   Given the (whole, not per-part) lse of the forward (same skip_positives) and upstream
//   gradients grad_lse_a [N_a] and grad_lse_b [N_b] (or [0]: zero; needed with self
//   pairs), the gradients of sum_i grad_lse_a[i] lse_a[i] + sum_j grad_lse_b[j] lse_b[j]
//   with respect to a and b from this part's tiles (they sum over parts), each an empty
//   [0] tensor when its flag is false; in the accumulation dtype.  Skipped positives get
//   weight exactly 0.
//
// contrastive_lse_row_grad(a, b, scale, skip_positives) -> (lse, o)
//   Cross pairs of a [N_a, d] against b [N_b, d] (logits, partners and skip_positives as
//   for contrastive_lse with self_pairs false).  lse [N_a] as contrastive_lse's lse_a,
//   and o [N_a, d] with o_i = sum_{partners j} p_ij b_j, p_ij = exp(s_ij - lse_i) (the
//   softmax over row i's partners; 0 for a row without partners), so that
//   d lse_i / d a_i = scale o_i: a loss whose b needs no gradient (MoCo's detached queue)
//   has its whole gradient from this one pass, 2 GEMMs' worth where contrastive_lse and
//   its backward need 3.  Both in the accumulation dtype.  NaN or inf in the inputs give
//   NaN outputs.
//
// contrastive_mean_lse(a, b, scale, grad_a, grad_b) -> (mean_loss, grad_a, grad_b)
//   In-batch InfoNCE: a [N_a, d] against b [N_b, d], N_b >= N_a, where b_i is a_i's
//   positive and every other row of b a negative; logits as for contrastive_lse.
//   mean_loss = (1 / N_a) sum_i [log sum_j exp(s_ij) - s_ii], each row's term formed as
//   log(1 + exp(n_i - s_ii)) with n_i = log sum_{j != i} exp(s_ij), so it never cancels
//   and is never negative; a 0-dim tensor.  grad_a [N_a, d] and grad_b [N_b, d] are its
//   gradients with respect to a and b when their flags are set (an empty [0] tensor
//   otherwise): with p_ij = softmax_j(s_ij), d/da_i = (scale / N_a) sum_{j != i} p_ij
//   (b_j - b_i), the positive's weight exactly 0 and its term the negatives' total
//   weight times b_i.  All in the accumulation dtype.  The gradients come out of the
//   forward pass (3 GEMMs' worth where contrastive_lse and its backward need 4).  NaN or
//   inf in the inputs give NaN outputs.
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
//
// align_loss(x, y, alpha, compute_grad) -> (loss, grad_x)
//   loss = mean_i ||x_i - y_i||^alpha in x's dtype; grad_x = d loss / d x (d loss / d y
//   is -grad_x), or an empty [0] tensor.  At x_i == y_i the gradient is 0.
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
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pyhypersphere {

using UniformResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using AlignResult = std::tuple<at::Tensor, at::Tensor>;
using ContrastiveLseResult = std::tuple<at::Tensor, at::Tensor>;
using ContrastiveGradResult = std::tuple<at::Tensor, at::Tensor>;
using ContrastiveRowGradResult = std::tuple<at::Tensor, at::Tensor>;
using ContrastiveMeanLseResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The argument checks of each op (csrc/<family>.cpp), one for every backend: the C++
// kernels call them, and the Triton launchers through the operators the family file
// registers under torch.ops.pyhypersphere_checks (same name as the op, -> ()).

// All checks of the uniformity op.
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

// All checks of the contrastive lse-with-row-gradient op (a and b: see ops.h).
void check_contrastive_row_grad_args(const at::Tensor& a, const at::Tensor& b, double scale);

// All checks of the contrastive mean-lse op (a and b: see ops.h).
void check_contrastive_mean_lse_args(const at::Tensor& a, const at::Tensor& b, double scale);

// All checks of the supervised contrastive ops (csrc/supcon.cpp).
void check_supcon_lse_args(const at::Tensor& x, const at::Tensor& labels, double scale, int64_t part,
                           int64_t num_parts);
void check_supcon_lse_backward_args(const at::Tensor& x, const at::Tensor& labels, double scale,
                                    const at::Tensor& lse, const at::Tensor& grad_lse,
                                    const at::Tensor& grad_positive, int64_t part, int64_t num_parts);

// The schemas the CUDA glue shares with the family files (defined there): the C++ CUDA kernels register
// under their own namespace (pyhypersphere_cuda) with the same schema, and
// pyhypersphere/gpu_backend.py, the one place that picks the implementation for CUDA
// tensors, registers it for pyhypersphere::<op> (no registration overrides another).
extern const char* const kUniformLseSchema;  // csrc/uniform.cpp
extern const char* const kAlignLossSchema;   // csrc/align.cpp

// All checks of the alignment op.
void check_align_args(const at::Tensor& x, const at::Tensor& y, double alpha);

// All checks of the SigLIP op.
void check_siglip_args(const at::Tensor& x, const at::Tensor& y, const at::Tensor& t,
                       const at::Tensor& b, const at::Tensor& coef);

UniformResult uniform_lse_cpu(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              double t, bool intra_batch, int64_t part, int64_t num_parts,
                              bool grad_x, bool grad_queue);
AlignResult align_loss_cpu(const at::Tensor& x, const at::Tensor& y, double alpha,
                           bool compute_grad);
ContrastiveLseResult contrastive_lse_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                                         bool self_pairs, bool lse_b, int64_t part,
                                         int64_t num_parts, bool skip_positives);
ContrastiveGradResult contrastive_lse_backward_cpu(
    const at::Tensor& a, const at::Tensor& b, double scale, bool self_pairs,
    const at::Tensor& lse_a, const at::Tensor& lse_b, const at::Tensor& grad_lse_a,
    const at::Tensor& grad_lse_b, int64_t part, int64_t num_parts, bool grad_a, bool grad_b,
    bool skip_positives);
ContrastiveRowGradResult contrastive_lse_row_grad_cpu(const at::Tensor& a, const at::Tensor& b,
                                                      double scale, bool skip_positives);
ContrastiveMeanLseResult contrastive_mean_lse_cpu(const at::Tensor& a, const at::Tensor& b,
                                                  double scale, bool grad_a, bool grad_b);

#ifdef PYHYPERSPHERE_WITH_CUDA
UniformResult uniform_lse_cuda(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                               double t, bool intra_batch, int64_t part, int64_t num_parts,
                               bool grad_x, bool grad_queue);
AlignResult align_loss_cuda(const at::Tensor& x, const at::Tensor& y, double alpha,
                            bool compute_grad);
#endif

}  // namespace pyhypersphere
