// prepare_uniform_rows for small CPU inputs: the rows and every fact of the precision
// plan in one pass over the inputs, without the dozen ATen calls of the general path
// (about 25 us at N = 16, more than the tile kernel itself).
#pragma once

#include "../uniform_rows.h"

#include <ATen/core/Tensor.h>

#include <optional>

namespace pyhypersphere {
namespace cpu {

// Inputs up to this many elements ((n + k) * d) take the single pass: one thread, O(n d)
// next to the kernel's O(n^2 d).
constexpr int64_t kSmallRowsElements = int64_t(1) << 16;

bool small_rows_apply(const at::Tensor& x, const std::optional<at::Tensor>& queue);

// The rows in `acc` (float or double), centered, with the facts a host read would give.
UniformRows prepare_small_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                               bool intra_batch, at::ScalarType acc, bool input_norms);

}  // namespace cpu
}  // namespace pyhypersphere
