// Device-agnostic preparation shared by the CPU and CUDA uniformity ops: the rows the
// kernels read, and the outputs they fill.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pyhypersphere {

// Rows ready for a kernel: x then the queue (if any) stacked, converted to the
// accumulation dtype (float32 for float16/bfloat16/float32, float64 for float64),
// contiguous, and centered on their mean.  The loss and its gradient are invariant
// to a common translation; centering keeps ||z||^2 small next to the distances so
// the Gram form of ||z_i - z_j||^2 and the gradient sum lose fewer digits.
struct UniformRows {
  at::Tensor z;        // [n + k, d]
  at::Tensor sq_norm;  // [n + k], ||z_i||^2
  int64_t n = 0;       // rows of x
  int64_t k = 0;       // rows of the queue
  bool finite = true;  // false if any input entry is NaN or +-inf
  double max_sq_norm = 0;  // max ||z_i||^2, read with `finite` in one device-to-host copy
  // False when the kernel's operand format (plan_uniform_rows' operand_roundoff, e.g.
  // TF32) cannot resolve the distances but float32 can: the kernel must then multiply
  // with float32 accuracy (3xTF32 or IEEE float32).
  bool operand_precision_ok = true;
};

// `compute` overrides the dtype of z (default: accumulate_dtype of x's dtype).
UniformRows prepare_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                 std::optional<at::ScalarType> compute = std::nullopt);

// The Gram form ||z_i - z_j||^2 = sq_i + sq_j - 2 <z_i, z_j> loses digits as the rows'
// spread grows: the exponent -t d^2 carries an absolute error of about
// t * 16 * unit_roundoff * max ||z||^2.  Returns true when that error exceeds
// kGramExponentErrorBudget (1e-3, i.e. 0.1% on the weights) in the rows' dtype.  The CPU
// kernel then recomputes float32 rows in float64, and warns if even float64 is short.
// `unit_roundoff` is that of the operands the kernel multiplies (2^-24 for float32,
// 2^-11 for TF32, 2^-53 for float64).
constexpr double kGramExponentErrorBudget = 1e-3;
bool gram_error_exceeds_budget(const UniformRows& rows, double t, double unit_roundoff);

// Unit roundoffs of the operand formats, for gram_error_exceeds_budget.
constexpr double kFloat32UnitRoundoff = 0x1p-24;
constexpr double kTf32UnitRoundoff = 0x1p-11;
constexpr double kFloat64UnitRoundoff = 0x1p-53;

// The precision policy of every backend, in one place: the rows prepared in the
// accumulation dtype; if their Gram-form exponent error with operands of
// `operand_roundoff` exceeds the budget and they are not float64 already, the rows
// prepared again in float64; if even float64 is short, a warning.  z's dtype tells the
// kernel which precision to compute in, operand_precision_ok whether its fast operand
// format (e.g. TF32) suffices.  Non-finite inputs return at once with finite = false.
UniformRows plan_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              double t, double operand_roundoff);

at::ScalarType accumulate_dtype(at::ScalarType input);

// The op's three outputs: lse (0-dim, accumulation dtype), grad_x ([n, d], or [0] when
// not asked for), grad_queue ([k, d], or [0]); the gradients in the accumulation dtype.
using UniformOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // = UniformResult (ops.h)

// Splits a gradient over the stacked rows (accumulation dtype) back into x's and the
// queue's parts, keeping only the ones asked for.
UniformOutputs make_uniform_outputs(const at::Tensor& lse, const at::Tensor& grad_rows,
                                    const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                    bool grad_x, bool grad_queue);

// Outputs for inputs holding NaN or inf: NaN loss and NaN gradient, as torch ops give.
UniformOutputs nonfinite_uniform_outputs(const at::Tensor& x,
                                         const std::optional<at::Tensor>& queue, bool grad_x,
                                         bool grad_queue);

}  // namespace pyhypersphere
