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
};

UniformRows prepare_uniform_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue);

at::ScalarType accumulate_dtype(at::ScalarType input);

// The op's three outputs: lse (0-dim, accumulation dtype), grad_x ([n, d] in x's
// dtype, or [0] when no gradient was asked for), grad_queue ([k, d], or [0]).
using UniformOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // = UniformResult (ops.h)

// Splits a gradient over the stacked rows back into x and queue, in their dtypes.
UniformOutputs make_uniform_outputs(const at::Tensor& lse, const at::Tensor& grad_rows,
                                    const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                    bool compute_grad);

// Outputs for inputs holding NaN or inf: NaN loss and NaN gradient, as torch ops give.
UniformOutputs nonfinite_uniform_outputs(const at::Tensor& x,
                                         const std::optional<at::Tensor>& queue,
                                         bool compute_grad);

}  // namespace pyhypersphere
