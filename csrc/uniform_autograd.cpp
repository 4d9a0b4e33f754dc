#include "uniform_autograd.h"

#include "ops.h"
#include "uniform_rows.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/extension.h>

namespace pyhypersphere {
namespace {

namespace py = pybind11;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using UniformOp = UniformResult(const at::Tensor&, const std::optional<at::Tensor>&, double, bool,
                                int64_t, int64_t, bool, bool);

// The op with its dispatch (autocast, the device's kernel); called below autograd.
UniformResult call_uniform_lse(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                               double t, bool intra_batch, bool grad_x, bool grad_queue) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyhypersphere::uniform_lse", "")
                             .typed<UniformOp>();
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, queue, t, intra_batch, /*part=*/0, /*num_parts=*/1, grad_x, grad_queue);
}

// Set once at import by pyhypersphere/ops/uniform.py; never freed (it may be read while
// the interpreter shuts down).
py::object* create_graph_gradients = nullptr;

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The same computation as pyhypersphere/ops/uniform.py's _UniformLse (outputs lse and
// loss; the gradients the forward computed are saved, not returned) and its backward.
struct UniformLossFunction : public torch::autograd::Function<UniformLossFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const std::optional<at::Tensor>& queue, double t, bool intra_batch,
                               bool grad_x, bool grad_queue, double offset,
                               at::ScalarType loss_dtype) {
    auto [lse, gx, gq] = call_uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue);
    at::Tensor loss = lse.sub(offset).to(loss_dtype);
    // No zero tensors for an output's missing upstream gradient.
    ctx->set_materialize_grads(false);
    ctx->saved_data["t"] = t;
    ctx->saved_data["intra_batch"] = intra_batch;
    // The inputs too: to recompute a gradient the forward was not asked for, and for the
    // differentiable form.  A gradient computed has at least one element (the op's
    // checks), one not computed is an empty [0].
    ctx->save_for_backward({gx, gq, x, queue.value_or(at::Tensor()), lse});
    return {lse, loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    constexpr size_t kInputs = 8;  // forward's arguments after ctx
    at::Tensor grad_lse = grads[0];
    const at::Tensor& grad_loss = grads[1];  // d loss / d lse = 1
    if (grad_loss.defined()) grad_lse = grad_lse.defined() ? grad_lse + grad_loss : grad_loss;
    variable_list out(kInputs);
    if (!grad_lse.defined()) return out;  // both upstream gradients zero
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad_x = saved[0], grad_q = saved[1];
    const at::Tensor &x = saved[2], &queue = saved[3], &lse = saved[4];
    const double t = ctx->saved_data["t"].toDouble();
    const bool intra_batch = ctx->saved_data["intra_batch"].toBool();
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_q = queue.defined() && ctx->needs_input_grad(1);
    if (at::GradMode::is_enabled()) {
      TORCH_INTERNAL_ASSERT(create_graph_gradients != nullptr,
                            "pyhypersphere: the create_graph gradients were not registered");
      py::gil_scoped_acquire gil;
      const py::tuple both = (*create_graph_gradients)(x, defined_or_none(queue), lse, t,
                                                       intra_batch, need_x, need_q);
      grad_x = both[0].is_none() ? at::Tensor() : both[0].cast<at::Tensor>();
      grad_q = both[1].is_none() ? at::Tensor() : both[1].cast<at::Tensor>();
    } else if ((need_x && grad_x.numel() == 0) || (need_q && grad_q.numel() == 0)) {
      // The forward call already reported any precision warning.
      const bool enclosing = capture_precision_warnings(true);
      auto recomputed = call_uniform_lse(x, defined_or_none(queue), t, intra_batch, need_x, need_q);
      capture_precision_warnings(enclosing);
      if (!enclosing) take_precision_warning();
      grad_x = std::get<1>(recomputed);
      grad_q = std::get<2>(recomputed);
    }
    // The gradients are in the accumulation dtype (or float64): round to the inputs' once.
    // (A 0-dim grad_lse does not promote them: the product is in their dtype.)
    if (need_x) out[0] = (grad_x * grad_lse).to(x.scalar_type());
    if (need_q) out[1] = (grad_q * grad_lse).to(queue.scalar_type());
    return out;
  }
};

}  // namespace

std::tuple<at::Tensor, std::string> uniform_loss_autograd(
    const at::Tensor& x, const std::optional<at::Tensor>& queue, double t, bool intra_batch,
    bool grad_x, bool grad_queue, double offset, at::ScalarType loss_dtype) {
  const bool enclosing = capture_precision_warnings(true);
  variable_list outputs;
  try {
    outputs = UniformLossFunction::apply(x, queue, t, intra_batch, grad_x, grad_queue, offset,
                                         loss_dtype);
  } catch (...) {
    capture_precision_warnings(enclosing);
    throw;
  }
  capture_precision_warnings(enclosing);
  return {outputs[1], enclosing ? std::string() : take_precision_warning()};
}

void set_uniform_create_graph_gradients(const py::object& gradients) {
  if (create_graph_gradients == nullptr) {
    create_graph_gradients = new py::object(gradients);
  } else {
    *create_graph_gradients = gradients;
  }
}

}  // namespace pyhypersphere
