// The uniformity family: the schema of uniform_lse (contract in ops.h) and its argument
// checks, one for every backend (csrc/cpu/uniform_cpu.cpp, csrc/cuda/uniform_cuda.cpp,
// pyhypersphere/triton_kernels/uniform.py).
#include "input_checks.h"
#include "ops.h"

#include <torch/library.h>

namespace pyhypersphere {

// A constant initializer (no dynamic initialization), so the CUDA glue's registration may
// read it during static initialization in any order.
extern const char* const kUniformLseSchema =
    "uniform_lse(Tensor x, Tensor? queue, float t, bool intra_batch, int part, int num_parts, "
    "bool grad_x, bool grad_queue) -> (Tensor, Tensor, Tensor)";

}  // namespace pyhypersphere

TORCH_LIBRARY_FRAGMENT(pyhypersphere, m) { m.def(pyhypersphere::kUniformLseSchema); }

namespace pyhypersphere {

void check_uniform_args(const at::Tensor& x, const std::optional<at::Tensor>& queue, double t,
                        bool intra_batch, int64_t part, int64_t num_parts, bool grad_queue) {
  constexpr const char* fn = "uniform_loss";
  const bool has_queue = queue.has_value() && queue->defined();
  // Without a queue the loss needs one pair inside x; with one, a single row pairs
  // with every queue row.
  check_feature_matrix(x, fn, "x", has_queue ? 1 : 2);
  if (has_queue) {
    check_feature_matrix(*queue, fn, "queue", 1);
    check_compatible(x, *queue, fn, "queue", /*same_rows=*/false);
  }
  TORCH_CHECK_VALUE(has_queue || !grad_queue, fn,
                    ": grad_queue=True needs a queue (got queue=None)");
  check_positive_finite(t, fn, "t");
  check_part(part, num_parts, fn);
}

}  // namespace pyhypersphere

// The check as an operator of its own namespace (not an op of pyhypersphere), so the Triton
// launcher raises exactly the C++ errors: torch.ops.pyhypersphere_checks.uniform_lse(...).
TORCH_LIBRARY_FRAGMENT(pyhypersphere_checks, m) {
  m.def(
      "uniform_lse(Tensor x, Tensor? queue, float t, bool intra_batch, int part, int num_parts, "
      "bool grad_queue) -> ()",
      &pyhypersphere::check_uniform_args);
}
