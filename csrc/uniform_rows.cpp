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
                                    bool grad_x, bool grad_queue) {
  const bool has_queue = queue.has_value() && queue->defined();
  // Outputs of an op must not share storage: each empty output is its own tensor, and
  // when both parts are returned the queue's part gets its own copy.
  const auto empty = [&] { return lse.new_empty({0}); };
  const int64_t n = x.size(0);
  if (!has_queue) return {lse, grad_x ? grad_rows : empty(), empty()};
  at::Tensor gx = empty(), gq = empty();
  if (grad_x) gx = grad_queue ? grad_rows.narrow(0, 0, n).clone() : grad_rows.narrow(0, 0, n);
  if (grad_queue) gq = grad_rows.narrow(0, n, queue->size(0)).clone();
  return {lse, gx, gq};
}

UniformOutputs nonfinite_uniform_outputs(const at::Tensor& x,
                                         const std::optional<at::Tensor>& queue, bool grad_x,
                                         bool grad_queue) {
  const auto nan = std::numeric_limits<double>::quiet_NaN();
  const auto acc = x.options().dtype(accumulate_dtype(x.scalar_type()));
  at::Tensor lse = at::full({}, nan, acc);
  return {lse, grad_x ? at::full(x.sizes(), nan, acc) : at::empty({0}, acc),
          grad_queue ? at::full(queue->sizes(), nan, acc) : at::empty({0}, acc)};
}

}  // namespace pyhypersphere
