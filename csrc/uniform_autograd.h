// uniform_loss's autograd node in C++, for eager calls on the CPU (issue 26, item 7).
//
// At small N a call is mostly overhead: a Python autograd.Function costs ~13 us in the
// forward (apply, setup_context, the op's Python binding) and ~15 us in the backward (the
// engine's call into Python), more than the kernel at N = 16 and as much as the whole
// reference formula.  This node does the same with the same ATen calls in C++: the op
// below autograd, loss = (lse - offset).to(loss_dtype), and a backward that scales the
// gradients the forward computed by the upstream gradient.  The rest stays in Python:
// torch.func transforms and torch.compile (pyhypersphere/ops/uniform.py), and, when the
// backward runs with grad mode on (create_graph=True), the differentiable gradient
// formula, which this node calls back (set_uniform_create_graph_gradients).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

namespace pybind11 {
class object;
}

namespace pyhypersphere {

// (loss, precision warning or "") for uniform_loss over the whole pair set: loss =
// lse - offset in loss_dtype, differentiable in x and queue.  grad_x / grad_queue: which
// gradients the forward computes (the op's flags).  The op's precision warning is
// captured and returned, unless a capture is already on (then it stays captured).
std::tuple<at::Tensor, std::string> uniform_loss_autograd(
    const at::Tensor& x, const std::optional<at::Tensor>& queue, double t, bool intra_batch,
    bool grad_x, bool grad_queue, double offset, at::ScalarType loss_dtype);

// The Python function the backward calls when grad mode is on:
// gradients(x, queue, lse, t, intra_batch, need_x, need_queue) -> (d lse / d x or None,
// d lse / d queue or None), differentiable (uniform_lse_gradients in ops/uniform.py).
void set_uniform_create_graph_gradients(const pybind11::object& gradients);

}  // namespace pyhypersphere
