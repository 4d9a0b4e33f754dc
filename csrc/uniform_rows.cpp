#include "uniform_rows.h"

#include "cpu/small_rows.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <utility>

namespace pyhypersphere {
namespace {
thread_local bool capturing_precision_warning = false;
thread_local std::string captured_precision_warning;
}  // namespace

at::ScalarType accumulate_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

// mean_pair_sq_distance_from_sums on the device (a 0-dim float64 tensor).
at::Tensor mean_pair_sq_distance(const UniformRows& rows, bool intra_batch) {
  const at::Tensor s_x = rows.sq_norm.narrow(0, 0, rows.n).sum(at::kDouble);
  const at::Tensor zero = at::zeros({}, s_x.options());
  if (rows.k == 0) {  // m_x = 0: x alone was centered
    return mean_pair_sq_distance_from_sums(rows.n, 0, intra_batch, s_x, zero, zero);
  }
  const at::Tensor s_q = rows.sq_norm.narrow(0, rows.n, rows.k).sum(at::kDouble);
  const at::Tensor m_x = rows.z.narrow(0, 0, rows.n).mean(0, /*keepdim=*/false, at::kDouble);
  return mean_pair_sq_distance_from_sums(rows.n, rows.k, intra_batch, s_x, s_q, (m_x * m_x).sum());
}

}  // namespace

UniformRows prepare_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                 bool intra_batch, std::optional<at::ScalarType> compute,
                                 bool host_read, bool input_norms) {
  const auto acc = compute.value_or(accumulate_dtype(x.scalar_type()));
  if (host_read && cpu::small_rows_apply(x, queue)) {
    return cpu::prepare_small_rows(x, queue, intra_batch, acc, input_norms);
  }
  UniformRows rows;
  rows.n = x.size(0);
  const bool has_queue = queue.has_value() && queue->defined();
  rows.k = has_queue ? queue->size(0) : 0;
  at::Tensor z = has_queue ? at::cat({x.to(acc), queue->to(acc)}, 0)
                           : x.to(acc, /*non_blocking=*/false, /*copy=*/true);
  const auto max_or_zero = [](const at::Tensor& v) {
    return v.numel() ? v.max().to(at::kDouble) : at::zeros({}, v.options().dtype(at::kDouble));
  };
  const at::Tensor input_max =
      input_norms ? max_or_zero((z * z).sum(1)) : at::zeros({}, z.options().dtype(at::kDouble));
  z.sub_(z.mean(0, /*keepdim=*/true));
  rows.z = z.contiguous();
  rows.sq_norm = (rows.z * rows.z).sum(1).contiguous();
  // z is finite iff the inputs are: a 16-bit input's centered value fits in float32.
  rows.finite_on_device = at::isfinite(rows.z).all();
  if (!host_read) return rows;
  // One device-to-host read for every fact the policy needs.
  const at::Tensor facts =
      at::stack({rows.finite_on_device.to(at::kDouble), max_or_zero(rows.sq_norm), input_max,
                 mean_pair_sq_distance(rows, intra_batch)})
          .cpu();
  const double* f = facts.data_ptr<double>();
  rows.finite = f[0] != 0;
  rows.max_sq_norm = f[1];
  rows.max_input_sq_norm = f[2];
  rows.mean_pair_sq_distance = f[3];
  return rows;
}

bool loss_too_small_for_float32(double mean_pair_sq_distance, double t) {
  return t * mean_pair_sq_distance < kFloat32MinMeanExponent;
}

bool gram_error_exceeds_budget(double max_sq_norm, double t, double unit_roundoff) {
  // `!(<=)`: an overflowed (inf) norm exceeds the budget too.
  return !(t * 16.0 * unit_roundoff * max_sq_norm <= kGramExponentErrorBudget);
}

UniformRows plan_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              bool intra_batch, double t, double operand_roundoff,
                              UniformPlanOptions options) {
  const bool sixteen_bit = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const bool try_raw = options.raw_16bit_operands && sixteen_bit && options.host_read;
  UniformRows rows =
      prepare_uniform_rows(x, queue, intra_batch, std::nullopt, options.host_read, try_raw);
  if (!options.host_read) {
    // No facts: the most accurate operands of the accumulation dtype, decided blind.
    rows.operand_precision_ok = rows.z.scalar_type() == at::kDouble;
    return rows;
  }
  if (!rows.finite) return rows;
  // A loss too small for float32 sums: float64 rows, whatever the operands could resolve.
  const bool small_loss = rows.z.scalar_type() != at::kDouble &&
                          loss_too_small_for_float32(rows.mean_pair_sq_distance, t);
  if (small_loss) rows = prepare_uniform_rows(x, queue, intra_batch, at::kDouble);
  // 16-bit values multiply exactly into float32 sums: the raw inputs are the best
  // operands when their (uncentered) spread allows, else the centered float32 rows.
  rows.raw_operands_ok = try_raw && !small_loss &&
                         !gram_error_exceeds_budget(rows.max_input_sq_norm, t, kFloat32UnitRoundoff);
  if (rows.raw_operands_ok) return rows;
  bool inaccurate;
  if (rows.z.scalar_type() == at::kDouble) {
    inaccurate = gram_error_exceeds_budget(rows.max_sq_norm, t, kFloat64UnitRoundoff);
  } else {
    // The fast operand format first (TF32), then float32 accuracy, then float64.
    rows.operand_precision_ok = !gram_error_exceeds_budget(rows.max_sq_norm, t, operand_roundoff);
    inaccurate = !rows.operand_precision_ok &&
                 gram_error_exceeds_budget(rows.max_sq_norm, t,
                                           std::min(operand_roundoff, kFloat32UnitRoundoff));
    if (inaccurate) {
      rows = prepare_uniform_rows(x, queue, intra_batch, at::kDouble);
      inaccurate = gram_error_exceeds_budget(rows.max_sq_norm, t, kFloat64UnitRoundoff);
    }
  }
  if (inaccurate) {
    std::string message = c10::str(
        "uniform_loss: the rows spread so far (max ||x - mean||^2 = ", rows.max_sq_norm,
        ") that, with t = ", t, ", even float64 distances in Gram form carry exponent errors above ",
        kGramExponentErrorBudget, "; normalize or rescale the features");
    if (capturing_precision_warning) {
      captured_precision_warning = std::move(message);
    } else {
      TORCH_WARN(message);
    }
  }
  return rows;
}

bool capture_precision_warnings(bool on) {
  const bool previous = capturing_precision_warning;
  capturing_precision_warning = on;
  return previous;
}

std::string take_precision_warning() { return std::exchange(captured_precision_warning, std::string()); }

UniformOutputs make_uniform_outputs(const at::Tensor& lse, const at::Tensor& grad_rows,
                                    int64_t first_row, const at::Tensor& x,
                                    const std::optional<at::Tensor>& queue, bool grad_x,
                                    bool grad_queue) {
  const bool has_queue = queue.has_value() && queue->defined();
  // Outputs of an op must not share storage: each empty output is its own tensor, and
  // when both parts are returned the queue's part gets its own copy.
  const auto empty = [&] { return at::empty({0}, x.options().dtype(accumulate_dtype(x.scalar_type()))); };
  const int64_t n = x.size(0);
  if (!has_queue) return {lse, grad_x ? grad_rows : empty(), empty()};
  at::Tensor gx = empty(), gq = empty();
  if (grad_x) {
    TORCH_INTERNAL_ASSERT(first_row == 0, "x's rows come first in the stacked gradient");
    gx = grad_queue ? grad_rows.narrow(0, 0, n).clone() : grad_rows.narrow(0, 0, n);
  }
  if (grad_queue) {
    gq = grad_rows.narrow(0, n - first_row, queue->size(0));
    // A view past x's rows would start at an offset that the fake kernel's fresh output
    // does not have (opcheck compares storage offsets).
    if (grad_x || gq.storage_offset() != 0) gq = gq.clone();
  }
  return {lse, gx, gq};
}

UniformOutputs nonfinite_uniform_outputs(const at::Tensor& x,
                                         const std::optional<at::Tensor>& queue, bool grad_x,
                                         bool grad_queue) {
  const auto nan = std::numeric_limits<double>::quiet_NaN();
  const auto acc = x.options().dtype(accumulate_dtype(x.scalar_type()));
  at::Tensor lse = at::full({}, nan, acc.dtype(at::kDouble));
  return {lse, grad_x ? at::full(x.sizes(), nan, acc) : at::empty({0}, acc),
          grad_queue ? at::full(queue->sizes(), nan, acc) : at::empty({0}, acc)};
}

UniformOutputs mask_nonfinite_outputs(const UniformOutputs& outputs, const at::Tensor& finite) {
  // Device-side select (no host read): CUDA-graph capturable.
  const auto mask = [&](const at::Tensor& v) {
    return v.numel() ? at::where(finite, v, at::full({}, std::numeric_limits<double>::quiet_NaN(),
                                                      v.options()))
                     : v;
  };
  return {mask(std::get<0>(outputs)), mask(std::get<1>(outputs)), mask(std::get<2>(outputs))};
}

}  // namespace pyhypersphere
