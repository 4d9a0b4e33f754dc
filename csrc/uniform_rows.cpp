#include "uniform_rows.h"

#include <ATen/ATen.h>

#include <limits>
#include <optional>

namespace pyhypersphere {

at::ScalarType accumulate_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

UniformRows prepare_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                 std::optional<at::ScalarType> compute) {
  UniformRows rows;
  const auto acc = compute.value_or(accumulate_dtype(x.scalar_type()));
  rows.n = x.size(0);
  const bool has_queue = queue.has_value() && queue->defined();
  rows.k = has_queue ? queue->size(0) : 0;
  at::Tensor z = has_queue ? at::cat({x.to(acc), queue->to(acc)}, 0)
                           : x.to(acc, /*non_blocking=*/false, /*copy=*/true);
  rows.finite = at::isfinite(z).all().item<bool>();
  z.sub_(z.mean(0, /*keepdim=*/true));
  rows.z = z.contiguous();
  rows.sq_norm = (rows.z * rows.z).sum(1).contiguous();
  return rows;
}

bool gram_error_exceeds_budget(const UniformRows& rows, double t) {
  if (rows.sq_norm.numel() == 0) return false;
  const double unit_roundoff = rows.z.scalar_type() == at::kDouble ? 0x1p-53 : 0x1p-24;
  const double max_sq = rows.sq_norm.max().item<double>();
  // `!(<=)`: an overflowed (inf) norm exceeds the budget too.
  return !(t * 16.0 * unit_roundoff * max_sq <= kGramExponentErrorBudget);
}

UniformOutputs make_uniform_outputs(const at::Tensor& lse, const at::Tensor& grad_rows,
                                    const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                    bool compute_grad) {
  const bool has_queue = queue.has_value() && queue->defined();
  if (!compute_grad) {
    return {lse, x.new_empty({0}), x.new_empty({0})};
  }
  const int64_t n = x.size(0);
  at::Tensor grad_x = grad_rows.narrow(0, 0, n).to(x.scalar_type());
  // Outputs of an op must not share storage: the queue's part gets its own.
  at::Tensor grad_q = has_queue ? grad_rows.narrow(0, n, queue->size(0))
                                      .to(queue->scalar_type(), /*non_blocking=*/false, /*copy=*/true)
                                : x.new_empty({0});
  return {lse, grad_x.contiguous(), grad_q};
}

UniformOutputs nonfinite_uniform_outputs(const at::Tensor& x,
                                         const std::optional<at::Tensor>& queue,
                                         bool compute_grad) {
  const auto nan = std::numeric_limits<double>::quiet_NaN();
  at::Tensor lse = at::full({}, nan, x.options().dtype(accumulate_dtype(x.scalar_type())));
  const bool has_queue = queue.has_value() && queue->defined();
  if (!compute_grad) {
    return {lse, x.new_empty({0}), x.new_empty({0})};
  }
  return {lse, at::full_like(x, nan, at::MemoryFormat::Contiguous),
          has_queue ? at::full_like(*queue, nan, at::MemoryFormat::Contiguous) : x.new_empty({0})};
}

}  // namespace pyhypersphere
