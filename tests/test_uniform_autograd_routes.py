"""uniform_loss's two eager routes give bitwise the same numbers: the C++ autograd node that
eager CPU calls take (csrc/uniform_autograd.cpp) and the Python autograd.Function that
torch.func transforms and other devices take (pyhypersphere/ops/uniform.py).  Loss, first
and second derivatives (create_graph: the node calls back the differentiable formula);
their accuracy against float64 is tested in test_uniform_grad.py and test_second_order.py."""

import pytest
import torch

from conftest import unit_rows
from pyhypersphere import uniform_loss
from pyhypersphere.ops import uniform as uniform_ops


def loss_and_derivatives(x, queue, create_graph):
    x = x.clone().requires_grad_()
    leaves = [x] if queue is None else [x, queue.clone().requires_grad_()]
    loss = uniform_loss(x, queue=None if queue is None else leaves[1])
    grads = torch.autograd.grad(loss, leaves, create_graph=create_graph)
    out = [loss.detach()] + [g.detach() for g in grads]
    if create_graph:  # d/dx of ||d loss / d x||^2 + ||d loss / d queue||^2
        out += [torch.autograd.grad(sum((g * g).sum() for g in grads), x)[0]]
    return loss.grad_fn.name(), out


@pytest.mark.parametrize(
    "n,with_queue,dtype",
    [(2, False, torch.float32), (16, False, torch.float32), (200, True, torch.float32),
     (40, False, torch.float64), (16, True, torch.bfloat16)],
)  # fmt: skip
@pytest.mark.parametrize("create_graph", [False, True])
def test_cpp_node_and_python_function_agree_bitwise(monkeypatch, n, with_queue, dtype, create_graph):
    x = unit_rows(n, 8, seed=n, dtype=dtype)
    queue = unit_rows(30, 8, seed=1, dtype=dtype) if with_queue else None
    cpp_node, cpp = loss_and_derivatives(x, queue, create_graph)
    monkeypatch.setattr(uniform_ops, "_cpp_autograd_applies", lambda x: False)
    python_node, python = loss_and_derivatives(x, queue, create_graph)
    assert "UniformLossFunction" in cpp_node and "UniformLse" in python_node
    assert len(cpp) == len(python)
    for a, b in zip(cpp, python):
        assert a.dtype == b.dtype and torch.equal(a, b)
