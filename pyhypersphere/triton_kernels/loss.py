"""uniform_loss on the Triton kernels directly, whatever backend the operators use on
CUDA tensors: for benchmarks that put Triton beside the C++ CUDA kernels."""

import math

import torch

from .uniform import uniform_lse


class _UniformLse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, queue, t, intra_batch):
        want_q = queue is not None and queue.requires_grad
        lse, gx, gq = uniform_lse(x, queue, t, intra_batch, 0, 1, x.requires_grad, want_q)
        ctx.save_for_backward(gx, gq)
        ctx.dtypes = (x.dtype, None if queue is None else queue.dtype)
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        gx, gq = ctx.saved_tensors
        out_x = (gx * grad_lse.to(gx.dtype)).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        out_q = (gq * grad_lse.to(gq.dtype)).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return out_x, out_q, None, None


def uniform_loss(x, t=2.0, queue=None, intra_batch=True):
    """pyhypersphere.uniform_loss computed by the Triton kernels."""
    n = x.shape[0]
    k = 0 if queue is None else queue.shape[0]
    pairs = (n * (n - 1) // 2 if intra_batch else 0) + n * k
    return (_UniformLse.apply(x, queue, float(t), intra_batch) - math.log(pairs)).to(x.dtype)
