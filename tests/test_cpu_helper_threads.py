"""The CPU kernels on a busy machine (issue 26, items 7 and 8; csrc/cpu/helper_threads.h).

The kernels open no OpenMP parallel region: the calling thread runs the tiles and helper
threads join when the scheduler runs them.  Whether that holds does not need a clock: a
helper held back (as a thread the scheduler does not run) must not stop a call from
finishing, nor change a single bit of its results; small inputs post no helper at all.
References: the dense float64 formulas written in conftest.py / dense_contrastive.py."""

import threading

import pytest
import torch

from conftest import dense_uniform_loss, unit_rows
from dense_contrastive import dense_clip, dense_nt_xent, value_and_grads
from pyhypersphere import _C, clip_loss, info_nce_loss, nt_xent_loss, uniform_loss

# A call that waited for a held helper would never return; this bounds the test's wait
# for a deadlock, it times nothing.
DEADLOCK_SECONDS = 300


def loss_and_grads(loss_fn, *tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = loss_fn(*leaves)
    out.backward()
    return [out.detach()] + [t.grad for t in leaves]


LOSSES = {
    "uniform": (uniform_loss, 300),  # 15 tiles of 64 rows (ragged)
    "nt_xent": (nt_xent_loss, 150),  # 300 views: two passes of tiles
    "clip": (clip_loss, 200),
    "info_nce": (info_nce_loss, 200),  # row strips (contrastive_mean_lse)
}


def run_with(loss, threads, held=False):
    """The loss's value and gradients with `threads` intra-op threads, on a fresh thread
    (as a training loop's); helpers held back when `held`.  Returns (results, the
    thread's last helper run)."""
    fn, n = LOSSES[loss]
    inputs = [unit_rows(n, 24, dtype=torch.float32, seed=1), unit_rows(n, 24, dtype=torch.float32, seed=2)]
    if loss == "uniform":
        inputs = inputs[:1]
    box = {}

    def body():
        torch.set_num_threads(threads)
        box["results"] = loss_and_grads(fn, *inputs)
        box["run"] = _C._last_helper_run()

    previous = torch.get_num_threads()
    _C._hold_helpers(held)
    try:
        worker = threading.Thread(target=body, daemon=True)
        worker.start()
        worker.join(DEADLOCK_SECONDS)
    finally:
        _C._hold_helpers(False)
        torch.set_num_threads(previous)
    assert not worker.is_alive(), f"{loss}: the call waited for a helper thread that never ran"
    return box["results"], box["run"]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_a_call_finishes_without_its_helpers_and_gives_the_same_bits(loss):
    free, _ = run_with(loss, threads=2)
    held, run = run_with(loss, threads=2, held=True)
    posted, joined = run
    assert posted >= 1 and joined == 0  # every tile on the calling thread
    for other in (held, run_with(loss, threads=1)[0], run_with(loss, threads=3)[0]):
        for u, v in zip(free, other):
            assert torch.equal(u, v)


def test_fewer_than_two_tiles_per_thread_post_no_helper():
    # N <= 64: one tile; N = 128: three (64-row blocks), too few to pay for a helper's
    # start.  The call stays on the calling thread.  N = 192, six tiles: one helper.
    for n in (2, 16, 64, 128):
        _, run = run_with_n(n)
        assert run == (0, 0)
    assert run_with_n(192)[1][0] == 1


def run_with_n(n):
    x = unit_rows(n, 128, dtype=torch.float32, seed=n)
    box = {}

    def body():
        torch.set_num_threads(2)
        box["results"] = loss_and_grads(uniform_loss, x)
        box["run"] = _C._last_helper_run()

    previous = torch.get_num_threads()
    try:
        worker = threading.Thread(target=body)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(previous)
    return box["results"], box["run"]


@pytest.mark.parametrize("n", [2, 16, 64, 128])
def test_small_inputs_match_float64(n):
    # The small-input path (one pass collecting the precision plan's facts) is as
    # accurate as the general one: float32 loss and gradient against float64.
    (loss, grad), _ = run_with_n(n)
    x = unit_rows(n, 128, dtype=torch.float32, seed=n).double().requires_grad_()
    want = dense_uniform_loss(x)
    (want_grad,) = torch.autograd.grad(want, x)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want.detach(), rtol=2e-6, atol=2e-7)
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=2e-6 * want_grad.abs().max().item())


@pytest.mark.parametrize("name,fn,dense", [("nt_xent", nt_xent_loss, dense_nt_xent), ("clip", clip_loss, dense_clip)])
def test_contrastive_with_held_helpers_match_float64(name, fn, dense):
    (value, gx, gy), _ = run_with(name, threads=2, held=True)
    n = LOSSES[name][1]
    x, y = unit_rows(n, 24, dtype=torch.float32, seed=1), unit_rows(n, 24, dtype=torch.float32, seed=2)
    want, (want_x, want_y) = value_and_grads(dense, x, y, tau=0.5 if name == "nt_xent" else 0.07)
    torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-6)
    for got, w in ((gx, want_x), (gy, want_y)):
        torch.testing.assert_close(got.double(), w, rtol=0, atol=1e-5 * w.abs().max().item())
