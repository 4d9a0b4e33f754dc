"""Shared test parametrization: every device (CUDA skipped without a GPU) x dtype."""

import math
import os

# The Triton kernels' tests run them on CPU tensors through the interpreter; the flag is
# read when triton is imported, so it is set before anything imports it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import pyhypersphere  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and pyhypersphere.build_info()["with_cuda"]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")]),
]
FLOAT_DTYPES = [torch.float32, torch.float64]
LOW_DTYPES = [torch.bfloat16, torch.float16]

# Tolerances against a float64 reference, by input dtype: float32 accumulates ~N terms
# of relative error 1e-7 (plus the Gram form of the distance); bf16/f16 inputs are
# compared against the reference evaluated on the same rounded inputs, so only the
# output rounding (bf16: 8 bits of mantissa) remains.
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def unit_rows(n, d, *, dtype=torch.float64, device="cpu", seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return (scale * x).to(device=device, dtype=dtype)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def dense_uniform_loss(x, t=2.0):
    """Uniformity from explicit squared differences (no sqrt: smooth at coincident rows,
    where pdist's backward gives NaN).  O(N^2 d) memory: small inputs only."""
    n = x.shape[0]
    d2 = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    e = d2[iu[0], iu[1]].mul(-t)
    return torch.logsumexp(e, 0) - torch.log(torch.tensor(float(e.numel()), dtype=x.dtype, device=x.device))


def explicit_uniform_loss(x, t=2.0, queue=None, intra_batch=True):
    """log mean over the pair set of exp(-t ||a - b||^2) from explicit pair differences:
    twice differentiable (pdist has no double backward), in x, queue and a tensor t."""
    terms = []
    if intra_batch:
        iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
        terms.append((x[iu[0]] - x[iu[1]]).pow(2).sum(1))
    if queue is not None:
        terms.append((x[:, None, :] - queue[None, :, :]).pow(2).sum(-1).reshape(-1))
    d2 = torch.cat(terms)
    return torch.logsumexp(d2 * -t, 0) - math.log(d2.numel())


def explicit_uniform_lse_and_grads(x, queue, t, intra_batch):
    """uniform_lse's contract (csrc/ops.h) in float64 on the CPU: the log-sum-exp over the
    pair set (explicit_uniform_loss + log |P|) and its gradients with respect to x and the
    queue (None without one)."""
    xr = x.detach().cpu().double().requires_grad_()
    qr = None if queue is None else queue.detach().cpu().double().requires_grad_()
    n, k = xr.shape[0], 0 if qr is None else qr.shape[0]
    pairs = (n * (n - 1) // 2 if intra_batch else 0) + n * k
    lse = explicit_uniform_loss(xr, t, qr, intra_batch) + math.log(pairs)
    grads = torch.autograd.grad(lse, [xr] if qr is None else [xr, qr])
    return lse.detach(), grads[0], None if qr is None else grads[1]


def explicit_align_loss(x, y, alpha=2.0):
    """mean_i ||x_i - y_i||^alpha, differentiable to every order away from x_i == y_i."""
    return (x - y).pow(2).sum(1).pow(alpha / 2).mean()


def pytest_terminal_summary(terminalreporter):
    """One line per skip reason, above pytest's own summary line (which stays last): on a
    machine without a GPU about a third of the suite skips, and says why here."""
    by_reason = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        by_reason[reason] = by_reason.get(reason, 0) + 1
    if not by_reason:
        return
    total = sum(by_reason.values())
    needs_gpu = sum(n for reason, n in by_reason.items() if "CUDA" in reason or "GPU" in reason)
    terminalreporter.write_line(f"skipped: {total} tests, {needs_gpu} of them because they need a CUDA GPU:")
    for reason, n in sorted(by_reason.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"  {n:4d}  {reason}")
