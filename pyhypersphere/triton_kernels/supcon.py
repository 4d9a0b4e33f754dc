"""Triton launchers of `supcon_lse` and `supcon_lse_backward` (contract: csrc/ops.h): the
contrastive family's flash kernels for the pairs, O(N d) class sums for the labels, so
that no kernel compares labels or holds a mask.

With s_ia = scale <x_i, x_a>, C_c the sum of the rows of class c and l_i row i's class:
- lse_i = log sum_{a != i} e^(s_ia) is NT-Xent's self-pairs lse with the diagonal left
  out: x's rows are the stacked rows (a, b) = (x[:k], x[k:]) of `contrastive_lse`
  (k a multiple of its PART_BLOCK, so the split adds no padding block);
- the positives' sum is linear in the other rows of the class:
  sum_{p in P(i)} s_ip = scale <x_i, C_(l_i) - x_i>, and |P(i)| = |class l_i| - 1.
The backward of sum_i g_i lse_i + h_i positive_i (g = grad_lse, h = grad_positive):
- the lse part is the contrastive gradient kernel with two-sided weights
  g_k e^(s_ka - lse_k) + g_a e^(s_ka - lse_a) (row and column terms (lse, g));
- the positive part, with D_c = sum over class c of h_i x_i, is
  scale [h_k (C_(l_k) - x_k) + (D_(l_k) - h_k x_k)]: every ordered pair (i, p) of a
  class adds h_i x_p to row i's gradient and h_i x_i to row p's.
Work per pair (compile_check's `loss=supcon` line, loop_gate.LOSS_MIN_WORK): the lse pass
1 GEMM and 1 exp, the gradient pass 2 GEMMs and 1 exp under the static shift the
contrastive launcher certifies (unit rows, tau >= 0.025 in float32): 3 GEMMs, 2 exps.
The class sums are float64 (index_add, in slices of ROWS_PER_SLICE rows: O(slice d)
memory on top of the class sums), so the positives' term adds no error of its own beyond
its final rounding; their order of addition on CUDA follows index_add's atomics (the
float64 sums may differ in their last bits between runs).  torch.unique reads the
number of classes on the host, as the static shift reads its certificate.
Parts (num_parts > 1): the lse and its gradient are the contrastive kernels' part slices;
the positives' sums, counts and gradient, O(N d), all go to part 0 (the contract:
across parts lse combine by log-sum-exp, the rest adds).  Precision as the contrastive
kernels': float64 exact, float32 with TF32 products when torch allows them, else
3xTF32, 16-bit inputs on 16-bit tensor cores with float32 accumulation.
"""

import torch

from .. import _C  # noqa: F401  (loads the operators and their checks, torch.ops.pyhypersphere_checks)
from . import contrastive
from .tiles import check_device

# Rows per slice of the float64 class-sum work (its temporaries are slice x d).
ROWS_PER_SLICE = 8192


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _slices(n: int):
    return [(lo, min(n, lo + ROWS_PER_SLICE)) for lo in range(0, n, ROWS_PER_SLICE)]


def _classes(labels: torch.Tensor):
    """(each row's class index, the number of classes, each row's number of positives)."""
    _, inverse, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    return inverse, sizes.numel(), sizes[inverse] - 1


def _class_sums(x: torch.Tensor, inverse: torch.Tensor, classes: int, coef=None) -> torch.Tensor:
    """[classes, d] float64: per class the sum of its rows x_i (times coef_i)."""
    out = torch.zeros((classes, x.shape[1]), dtype=torch.float64, device=x.device)
    for lo, hi in _slices(x.shape[0]):
        rows = x[lo:hi].double()
        out.index_add_(0, inverse[lo:hi], rows if coef is None else rows * coef[lo:hi, None])
    return out


def _stacked(x: torch.Tensor):
    """x's rows as the contrastive kernels' stacked (a, b), both non-empty (N >= 2)."""
    k = max(1, contrastive.PART_BLOCK * ((x.shape[0] - 1) // contrastive.PART_BLOCK))
    return x[:k], x[k:]


def supcon_lse(x, labels, scale, part=0, num_parts=1):
    """`torch.ops.pyhypersphere.supcon_lse` on Triton: same arguments, same results."""
    torch.ops.pyhypersphere_checks.supcon_lse(x, labels, scale, part, num_parts)
    check_device(x.device, "supcon_lse")
    acc = _acc_dtype(x)
    n = x.shape[0]
    if n >= 2:
        lse = torch.cat(contrastive.contrastive_lse(*_stacked(x), scale, True, True, part, num_parts))
    else:  # one row: no pairs
        lse = torch.full((n,), float("-inf"), dtype=acc, device=x.device)
    inverse, classes, count = _classes(labels)
    positive = torch.zeros(n, dtype=torch.float64, device=x.device)
    if part == 0:
        sums = _class_sums(x, inverse, classes)
        for lo, hi in _slices(n):
            rows = x[lo:hi].double()
            positive[lo:hi] = (rows * (sums[inverse[lo:hi]] - rows)).sum(1) * scale
    else:
        count = torch.zeros_like(count)
    finite = torch.isfinite(x).all()  # as the CPU kernel: NaN values, the counts still exact
    nan = torch.full((), float("nan"), dtype=acc, device=x.device)
    return torch.where(finite, lse, nan), torch.where(finite, positive.to(acc), nan), count


def supcon_lse_backward(x, labels, scale, lse, grad_lse, grad_positive, part=0, num_parts=1):
    """`torch.ops.pyhypersphere.supcon_lse_backward` on Triton: same arguments, same results."""
    torch.ops.pyhypersphere_checks.supcon_lse_backward(x, labels, scale, lse, grad_lse, grad_positive, part, num_parts)
    check_device(x.device, "supcon_lse_backward")
    acc = _acc_dtype(x)
    n = x.shape[0]
    lse, g = lse.to(acc), grad_lse.to(acc)
    if n >= 2:
        a, b = _stacked(x)
        k = a.shape[0]
        grad = torch.cat(contrastive.contrastive_lse_backward(a, b, scale, True, lse[:k], lse[k:], g[:k], g[k:],
                                                              part, num_parts, True, True))
    else:
        grad = torch.zeros(x.shape, dtype=acc, device=x.device)
    if part == 0:
        inverse, classes, _ = _classes(labels)
        h = grad_positive.double()
        sums, weighted = _class_sums(x, inverse, classes), _class_sums(x, inverse, classes, h)
        for lo, hi in _slices(n):
            rows, idx, h_i = x[lo:hi].double(), inverse[lo:hi], h[lo:hi, None]
            positive = h_i * (sums[idx] - rows) + (weighted[idx] - h_i * rows)
            grad[lo:hi] = (grad[lo:hi].double() + scale * positive).to(acc)
    # -inf is a valid lse (a row without pairs); NaN or +inf is not.
    ok = torch.isfinite(x).all() & ~(torch.isnan(lse) | torch.isposinf(lse)).any()
    return torch.where(ok, grad, torch.full((), float("nan"), dtype=acc, device=x.device))
