"""uniform_loss with a feature queue (the paper's MoCo variant) against dense references.

The CPU kernel cuts the N + K rows into blocks of 64, 128 or 256 rows depending on
N + K (< 2048, < 8192, larger), x's rows and the queue's rows in separate blocks; the
shapes below put block edges inside x, inside the queue and at the x/queue seam for
each block size.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pyhypersphere import uniform_loss
from pyhypersphere.reference import logsumexp_queue_uniform_loss

# (N, K, d): N rows of x, K queue rows.
SHAPES = [
    (1, 1, 3),
    (1, 9, 5),  # one row of x: only cross pairs without intra_batch
    (5, 3, 4),
    (64, 64, 8),  # both sides exactly one 64-row block
    (65, 63, 8),  # a block edge one row into x, the queue one short of a block
    (63, 130, 8),
    (70, 1978, 8),  # N + K = 2048: 128-row blocks, 16 queue blocks, one x block
    (130, 2000, 8),  # two x blocks of 128 rows, the second of 2 rows
    (2, 8190, 4),  # N + K = 8192: 256-row blocks, K >> N
    (300, 8000, 4),  # two x blocks of 256 rows, K >> N
]


def _features(n, d, seed, normalize=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (F.normalize(z, dim=1) if normalize else z).to(dtype)


def _leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


def _scaled_atol(reference: torch.Tensor, rel: float) -> float:
    return rel * reference.abs().max().item()


@pytest.mark.parametrize("n,k,d", SHAPES)
@pytest.mark.parametrize("intra_batch", [True, False])
@pytest.mark.parametrize("normalize", [True, False], ids=["sphere", "raw"])
def test_value_and_gradients_match_dense_reference(n, k, d, intra_batch, normalize):
    x0 = _features(n, d, seed=n * 1000 + k, normalize=normalize)
    q0 = _features(k, d, seed=n * 1000 + k + 1, normalize=normalize)
    t = 2.0 if normalize else 0.5  # raw features: distances ~ 2d, exponents spread widely

    x, q = _leaves(x0, q0)
    loss = uniform_loss(x, t, queue=q, intra_batch=intra_batch)
    loss.backward()

    xr, qr = _leaves(x0, q0)
    expected = logsumexp_queue_uniform_loss(xr, qr, t, intra_batch)
    expected.backward()

    assert loss.dtype == torch.float64 and loss.dim() == 0
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-8, atol=_scaled_atol(xr.grad, 1e-10))
    torch.testing.assert_close(q.grad, qr.grad, rtol=1e-8, atol=_scaled_atol(qr.grad, 1e-10))


def _chunked_reference(x, queue, t, intra_batch, chunk=8192):
    """float64 loss and gradients without the N x K matrix: the log-sum-exp first, then
    d lse = sum_p exp(e_p - lse) de_p backpropagated one queue chunk at a time."""
    x = x.double().requires_grad_(True)
    queue = queue.double().requires_grad_(True)
    n, k = x.shape[0], queue.shape[0]

    def exponents(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return d2.clamp_min(0).mul(-t)

    def blocks():
        for start in range(0, k, chunk):
            yield exponents(x, queue[start : start + chunk]).reshape(-1)
        if intra_batch:
            iu = torch.triu_indices(n, n, offset=1)
            yield exponents(x, x)[iu[0], iu[1]]

    with torch.no_grad():
        lse = torch.logsumexp(torch.stack([torch.logsumexp(e, 0) for e in blocks()]), 0)
    for e in blocks():
        e.sub(lse).exp().sum().backward()
    pairs = n * k + (n * (n - 1) // 2 if intra_batch else 0)
    return lse - math.log(pairs), x.grad, queue.grad


def test_float32_large_queue_matches_float64_chunked_reference():
    n, k, d, t = 256, 16384, 128, 2.0  # 4M pairs, 64 queue blocks per row block
    x0 = _features(n, d, seed=1, dtype=torch.float32)
    q0 = _features(k, d, seed=2, dtype=torch.float32)
    x, q = _leaves(x0, q0)
    loss = uniform_loss(x, t, queue=q)
    loss.backward()
    expected, grad_x, grad_q = _chunked_reference(x0, q0, t, intra_batch=True)

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(x.grad.double(), grad_x, rtol=1e-4, atol=_scaled_atol(grad_x, 1e-4))
    torch.testing.assert_close(q.grad.double(), grad_q, rtol=1e-4, atol=_scaled_atol(grad_q, 1e-4))


@pytest.mark.parametrize("detach", [False, True], ids=["queue_without_grad", "detached_queue"])
def test_a_queue_without_grad_gets_none_and_x_still_gets_the_full_gradient(detach):
    x0, q0 = _features(40, 6, seed=3), _features(200, 6, seed=4)
    x = x0.clone().requires_grad_(True)
    q = q0.clone().requires_grad_(True)
    uniform_loss(x, queue=q.detach() if detach else q0).backward()
    xr = x0.clone().requires_grad_(True)
    logsumexp_queue_uniform_loss(xr, q0).backward()
    assert q.grad is None and q0.grad is None
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-8, atol=_scaled_atol(xr.grad, 1e-10))


def test_only_the_queue_requires_grad():
    x0, q0 = _features(10, 6, seed=5), _features(30, 6, seed=6)
    q = q0.clone().requires_grad_(True)
    uniform_loss(x0, queue=q, intra_batch=False).backward()
    qr = q0.clone().requires_grad_(True)
    logsumexp_queue_uniform_loss(x0, qr, intra_batch=False).backward()
    assert x0.grad is None
    torch.testing.assert_close(q.grad, qr.grad, rtol=1e-8, atol=_scaled_atol(qr.grad, 1e-10))


def test_queue_with_another_feature_dimension_raises():
    with pytest.raises(ValueError, match="queue must have the same feature dimension as x"):
        uniform_loss(torch.randn(4, 8), queue=torch.randn(16, 7))


def test_queue_with_another_dtype_raises():
    with pytest.raises(ValueError, match="queue must have the same dtype as x"):
        uniform_loss(torch.randn(4, 8), queue=torch.randn(16, 8, dtype=torch.float64))


def test_queue_on_another_device_raises():
    # A queue on "meta" routes the call to the fake kernel, which must check devices too.
    with pytest.raises(ValueError, match="queue must be on the same device as x"):
        uniform_loss(torch.randn(4, 8), queue=torch.randn(16, 8, device="meta"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_queue_on_cpu_with_x_on_cuda_raises():
    with pytest.raises(ValueError, match="queue must be on the same device as x"):
        uniform_loss(torch.randn(4, 8, device="cuda"), queue=torch.randn(16, 8))


def test_intra_batch_false_without_queue_raises():
    with pytest.raises(ValueError, match="intra_batch=False needs a queue"):
        uniform_loss(torch.randn(4, 8), intra_batch=False)


def test_queue_of_wrong_rank_raises():
    with pytest.raises(ValueError, match="queue must be a 2-D tensor"):
        uniform_loss(torch.randn(4, 8), queue=torch.randn(8))
