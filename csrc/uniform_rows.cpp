#include "uniform_rows.h"

#include <ATen/ATen.h>

#include <algorithm>
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
  z.sub_(z.mean(0, /*keepdim=*/true));
  rows.z = z.contiguous();
  rows.sq_norm = (rows.z * rows.z).sum(1).contiguous();
  // One device-to-host read for both facts the policy needs.
  const at::Tensor facts =
      at::stack({at::isfinite(rows.z).all().to(at::kDouble),
                 rows.sq_norm.numel() ? rows.sq_norm.max().to(at::kDouble)
                                      : at::zeros({}, rows.sq_norm.options().dtype(at::kDouble))})
          .cpu();
  rows.finite = facts[0].item<double>() != 0;
  rows.max_sq_norm = facts[1].item<double>();
  return rows;
}

bool gram_error_exceeds_budget(const UniformRows& rows, double t, double unit_roundoff) {
  const double max_sq = rows.max_sq_norm;
  // `!(<=)`: an overflowed (inf) norm exceeds the budget too.
  return !(t * 16.0 * unit_roundoff * max_sq <= kGramExponentErrorBudget);
}

UniformRows plan_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              double t, double operand_roundoff) {
  UniformRows rows = prepare_uniform_rows(x, queue);
  if (!rows.finite) return rows;
  bool inaccurate;
  if (rows.z.scalar_type() == at::kDouble) {
    inaccurate = gram_error_exceeds_budget(rows, t, kFloat64UnitRoundoff);
  } else {
    // The fast operand format first (TF32), then float32 accuracy, then float64.
    rows.operand_precision_ok = !gram_error_exceeds_budget(rows, t, operand_roundoff);
    inaccurate = !rows.operand_precision_ok &&
                 gram_error_exceeds_budget(rows, t, std::min(operand_roundoff, kFloat32UnitRoundoff));
    if (inaccurate) {
      rows = prepare_uniform_rows(x, queue, at::kDouble);
      inaccurate = gram_error_exceeds_budget(rows, t, kFloat64UnitRoundoff);
    }
  }
  if (inaccurate) {
    TORCH_WARN("uniform_loss: the rows spread so far (max ||x - mean||^2 = ",
               rows.max_sq_norm, ") that, with t = ", t,
               ", even float64 distances in Gram form carry exponent errors above ",
               kGramExponentErrorBudget, "; normalize or rescale the features");
  }
  return rows;
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
