// Device-agnostic preparation shared by the CPU and CUDA uniformity ops: the rows the
// kernels read, and the outputs they fill.
#pragma once

#include "uniform_math.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
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
  // max ||x_i||^2 of the uncentered input rows (read with the above), when asked for.
  double max_input_sq_norm = 0;
  // Mean of ||z_i - z_j||^2 over the pair set (read with the above).
  double mean_pair_sq_distance = 0;
  // The finiteness fact as a 0-dim bool tensor on the rows' device: without a host read
  // (UniformPlanOptions::host_read false) the outputs are masked with it on the device.
  at::Tensor finite_on_device;
  // False when the kernel's operand format (plan_uniform_rows' operand_roundoff, e.g.
  // TF32) cannot resolve the distances but float32 can: the kernel must then multiply
  // with float32 accuracy (3xTF32 or IEEE float32).
  bool operand_precision_ok = true;
  // True when the kernel may multiply the raw 16-bit inputs (uncentered, exact) instead
  // of z: their products are exact in float32, so the Gram form's error is float32
  // accumulation on the uncentered norms (plan_uniform_rows' raw_16bit_operands).
  bool raw_operands_ok = false;
};

// `compute` overrides the dtype of z (default: accumulate_dtype of x's dtype).  With
// `host_read` false the facts stay on the device (finite_on_device); max_sq_norm,
// max_input_sq_norm and mean_pair_sq_distance are then unknown (0).  `input_norms` also
// measures the uncentered rows.  `intra_batch` names the pair set (ops.h).
UniformRows prepare_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                 bool intra_batch,
                                 std::optional<at::ScalarType> compute = std::nullopt,
                                 bool host_read = true, bool input_norms = false);

// The Gram form ||z_i - z_j||^2 = sq_i + sq_j - 2 <z_i, z_j> loses digits as the rows'
// spread grows: the exponent -t d^2 carries an absolute error of about
// t * 16 * unit_roundoff * max ||z||^2.  Returns true when that error exceeds
// kGramExponentErrorBudget (1e-3, i.e. 0.1% on the weights) in the rows' dtype.  The CPU
// kernel then recomputes float32 rows in float64, and warns if even float64 is short.
// `unit_roundoff` is that of the operands the kernel multiplies (2^-24 for float32,
// 2^-11 for TF32, 2^-53 for float64).
constexpr double kGramExponentErrorBudget = 1e-3;
bool gram_error_exceeds_budget(double max_sq_norm, double t, double unit_roundoff);

// The loss is lse - log |P|, and a float32 kernel's lse carries an absolute error of a
// few float32 roundoffs (its sums of weights near 1, the weights' own rounding: measured
// at most 5e-8 over N = 1024-4096, d = 8-128; docs/autograd.md).  Relative to the loss
// that is small only while |loss| is not: float32 results stay within
// kLossRelativeErrorBudget (2^-20) of the loss while |loss| >= 2^-23 / 2^-20 = 1/8.
// |loss| <= t * (mean over P of ||z_i - z_j||^2) (Jensen: log mean e^-u >= -mean u), so
// below kFloat32MinMeanExponent = 1/8 the rows are computed in float64 (a rare regime:
// unit rows need t < 1/16 for it, t = 2 rows of norm < 0.18).
constexpr double kFloat32LseAbsoluteError = 0x1p-23;
constexpr double kLossRelativeErrorBudget = 0x1p-20;
constexpr double kFloat32MinMeanExponent = kFloat32LseAbsoluteError / kLossRelativeErrorBudget;
// True when the loss may be too small for float32 sums: t * mean_pair_sq_distance below
// kFloat32MinMeanExponent.
bool loss_too_small_for_float32(double mean_pair_sq_distance, double t);

// Mean of ||z_i - z_j||^2 over the pair set (ops.h), from O((n + k) d) sums of the rows
// centered on their stacked mean: S_x, S_q the sums of ||z_i||^2 over x's and the queue's
// rows, m_x2 = ||m_x||^2 for m_x the mean of x's rows (n m_x + k m_q = 0):
//   within x   sum_{i<j} ||z_i - z_j||^2 = n S_x - n^2 ||m_x||^2
//   x by queue sum_{i,q}  ||z_i - z_q||^2 = k S_x + n S_q + 2 n^2 ||m_x||^2
// T is double, or a 0-dim tensor (the facts stay on the device until the plan's read).
template <typename T>
T mean_pair_sq_distance_from_sums(int64_t n, int64_t k, bool intra_batch, const T& s_x,
                                  const T& s_q, const T& m_x2) {
  const double pairs = math::pair_count(n, k, intra_batch);
  const double nn = double(n) * double(n);
  T total = s_x * double(k) + s_q * double(n) + m_x2 * (2 * nn);
  if (intra_batch) total = total + s_x * double(n) - m_x2 * nn;
  return total * (pairs > 0 ? 1.0 / pairs : 0.0);
}

// Unit roundoffs of the operand formats, for gram_error_exceeds_budget.
constexpr double kFloat32UnitRoundoff = 0x1p-24;
constexpr double kTf32UnitRoundoff = 0x1p-11;
constexpr double kFloat64UnitRoundoff = 0x1p-53;

// The precision policy of every backend, in one place: the rows prepared in the
// accumulation dtype; if the loss may be too small for float32 sums
// (loss_too_small_for_float32) or their Gram-form exponent error with operands of
// `operand_roundoff` exceeds the budget, and they are not float64 already, the rows
// prepared again in float64; if even float64 is short, a warning.  z's dtype tells the
// kernel which precision to compute in, operand_precision_ok whether its fast operand
// format (e.g. TF32) suffices.  Non-finite inputs return at once with finite = false.
//
// Options (the CUDA kernels'):
//   raw_16bit_operands  for 16-bit inputs, first ask whether the raw inputs can be the
//                       operands (raw_operands_ok): exact products, float32 sums, error
//                       budget on the uncentered norms.  Otherwise z (float32, centered:
//                       no 16-bit overflow after centering) with float32-accurate products.
//   host_read           false: no device-to-host read at all (CUDA-graph capture).  The
//                       decision is then made without the facts: the accumulation dtype
//                       with float32-accurate operands (operand_precision_ok false, no
//                       raw 16-bit operands), no float64 fallback, no warning; non-finite
//                       inputs are flagged on the device (finite_on_device); nor is
//                       a small loss moved to float64.
struct UniformPlanOptions {
  bool raw_16bit_operands = false;
  bool host_read = true;
};
UniformRows plan_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              bool intra_batch, double t, double operand_roundoff,
                              UniformPlanOptions options = UniformPlanOptions());

// The warning plan_uniform_rows gives when even float64 cannot resolve the rows' spread.
// By default a TORCH_WARN (C++ and LibTorch callers).  A TORCH_WARN from inside an op does
// not reach Python's warnings machinery as a warning of our own category, so the Python
// layer turns capturing on around its op calls, takes the message afterwards and issues
// it as pyhypersphere.PrecisionWarning (filters, -W error, once per call site).  Both are
// per thread: an op's preparation runs on the thread that called it.
bool capture_precision_warnings(bool on);  // returns the previous setting
std::string take_precision_warning();      // the captured message ("" if none); clears it

at::ScalarType accumulate_dtype(at::ScalarType input);

// The op's three outputs: lse (0-dim, accumulation dtype), grad_x ([n, d], or [0] when
// not asked for), grad_queue ([k, d], or [0]); the gradients in the accumulation dtype.
using UniformOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // = UniformResult (ops.h)

// Splits a gradient over the stacked rows (accumulation dtype) back into x's and the
// queue's parts, keeping only the ones asked for.  grad_rows holds the stacked rows from
// `first_row` on (0: all of them; n: the queue's only).
UniformOutputs make_uniform_outputs(const at::Tensor& lse, const at::Tensor& grad_rows,
                                    int64_t first_row, const at::Tensor& x,
                                    const std::optional<at::Tensor>& queue, bool grad_x,
                                    bool grad_queue);

// Outputs for inputs holding NaN or inf: NaN loss and NaN gradient, as torch ops give.
UniformOutputs nonfinite_uniform_outputs(const at::Tensor& x,
                                         const std::optional<at::Tensor>& queue, bool grad_x,
                                         bool grad_queue);

// The same rule without a host read: every output replaced by NaN where `finite` (a
// 0-dim bool tensor on the outputs' device) is false.
UniformOutputs mask_nonfinite_outputs(const UniformOutputs& outputs, const at::Tensor& finite);

}  // namespace pyhypersphere
