// Operator schemas: one TORCH_LIBRARY for every backend.  The implementations register
// under their dispatch keys (csrc/cpu, csrc/cuda); the contract is in ops.h.
#include <torch/library.h>

TORCH_LIBRARY(pyhypersphere, m) {
  m.def(
      "uniform_lse(Tensor x, Tensor? queue, float t, bool intra_batch, int part, int num_parts, "
      "bool grad_x, bool grad_queue) -> (Tensor, Tensor, Tensor)");
  m.def(
      "contrastive_lse(Tensor a, Tensor b, float scale, bool self_pairs, bool lse_b, int part, "
      "int num_parts, bool skip_positives=False) -> (Tensor, Tensor)");
  m.def(
      "contrastive_lse_backward(Tensor a, Tensor b, float scale, bool self_pairs, Tensor lse_a, "
      "Tensor lse_b, Tensor grad_lse_a, Tensor grad_lse_b, int part, int num_parts, bool grad_a, "
      "bool grad_b, bool skip_positives=False) -> (Tensor, Tensor)");
  m.def(
      "contrastive_mean_lse(Tensor a, Tensor b, float scale, bool grad_a, bool grad_b) -> (Tensor, "
      "Tensor, Tensor)");
  m.def("align_loss(Tensor x, Tensor y, float alpha, bool compute_grad) -> (Tensor, Tensor)");
}
