// Autocast rules of the operators, for every backend (AutocastCPU, AutocastCUDA).
//
// The reference formulas run under autocast in float32: on CUDA, torch.pdist and
// torch.norm are on autocast's float32 list.  Ours match that:
//   uniform_lse  computes as without autocast: its kernels already accumulate 16-bit
//                inputs in float32 and return the gradients in float32, lse in float64 (the
//                loss wrappers then keep the loss in float32, ops/_common.loss_dtype);
//   align_loss   runs on float32 inputs (autocast's float32 policy, float64 kept), so
//                its loss is float32 like the reference's norm;
//   contrastive_lse, contrastive_lse_backward, contrastive_lse_row_grad,
//                contrastive_mean_lse have no rule (the fallthrough): they compute in
//                the inputs' dtype with float32 accumulation and return float32
//                already; the loss wrappers take the
//                positives' logits in float32 and return the loss in float32
//                (pyhypersphere/ops/contrastive.py).
// Below the autocast keys the calls reach the backends unchanged; autograd records the
// casts, so 16-bit inputs still get 16-bit gradients.
#include "ops.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace pyhypersphere {
namespace {

UniformResult uniform_lse_autocast(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                   double t, bool intra_batch, int64_t part, int64_t num_parts,
                                   bool grad_x, bool grad_queue) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyhypersphere::uniform_lse", "")
                             .typed<UniformResult(const at::Tensor&, const std::optional<at::Tensor>&,
                                                  double, bool, int64_t, int64_t, bool, bool)>();
  return op.call(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue);
}

template <c10::DeviceType kDevice>
AlignResult align_loss_autocast(const at::Tensor& x, const at::Tensor& y, double alpha,
                                bool compute_grad) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyhypersphere::align_loss", "")
          .typed<AlignResult(const at::Tensor&, const at::Tensor&, double, bool)>();
  return op.call(at::autocast::cached_cast(at::kFloat, x, kDevice),
                 at::autocast::cached_cast(at::kFloat, y, kDevice), alpha, compute_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyhypersphere, AutocastCPU, m) {
  m.impl("uniform_lse", &uniform_lse_autocast);
  m.impl("align_loss", &align_loss_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(pyhypersphere, AutocastCUDA, m) {
  m.impl("uniform_lse", &uniform_lse_autocast);
  m.impl("align_loss", &align_loss_autocast<c10::DeviceType::CUDA>);
}

}  // namespace pyhypersphere
