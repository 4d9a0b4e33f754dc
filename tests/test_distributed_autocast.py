"""The distributed losses under CPU autocast(bfloat16), in a real 2-rank gloo run: like the
single-process losses (issue 26: tests/test_autocast.py), they return a float32 loss
(float64 kept) for bfloat16 and float32 inputs, with float32 accuracy against the dense
float64 formula on the same inputs, and gradients in the inputs' dtype.  Tiny shards of
unequal sizes; one spawn runs every case."""

import torch
import torch.nn.functional as F

from conftest import dense_uniform_loss
from dense_contrastive import dense_clip, dense_info_nce, dense_nt_xent, dense_nt_xent_rows, dense_supcon
from dist_harness import global_batch, run, shard
from pyhypersphere import distributed

ROWS = (3, 2)
D = 8
LABELS = torch.tensor([0, 1, 0, 1, 1])  # the global batch's: every anchor has a positive
QUEUE = global_batch([7], D, seed=3).bfloat16().double()  # MoCo's: exact in bfloat16, as the inputs are rounded


def _dense_siglip(x, y, t, b):
    """SigLIP from its definition: -(1/N) sum_ij log sigmoid(z_ij (t <x_i, y_j> + b))."""
    labels = 2 * torch.eye(x.shape[0], dtype=x.dtype) - 1
    return -F.logsigmoid(labels * (t * x @ y.T + b)).sum() / x.shape[0]


# name -> (the distributed loss of this rank's (x, y, labels), the dense formula of the global (x, y, labels))
LOSSES = {
    "uniform_loss": (lambda x, y, lab: distributed.uniform_loss(x, 2.0), lambda x, y, lab: dense_uniform_loss(x, 2.0)),
    "nt_xent_loss": (lambda x, y, lab: distributed.nt_xent_loss(x, y, 0.5), lambda x, y, lab: dense_nt_xent(x, y, 0.5)),
    "info_nce_loss": (lambda x, y, lab: distributed.info_nce_loss(x, y, 0.1), lambda x, y, lab: dense_info_nce(x, y, 0.1)),
    # MoCo: momentum keys (no gradient) and the queue, the row-gradient op's one pass.
    "info_nce_loss moco": (lambda x, y, lab: distributed.info_nce_loss(x, y.detach(), 0.2, queue=QUEUE.to(x.dtype),
                                                                       in_batch=False),
                           lambda x, y, lab: dense_info_nce(x, y, 0.2, QUEUE, in_batch=False)),
    "clip_loss": (lambda x, y, lab: distributed.clip_loss(x, y, 0.07), lambda x, y, lab: dense_clip(x, y, 0.07)),
    "siglip_loss": (lambda x, y, lab: distributed.siglip_loss(x, y, 4.0, -2.0),
                    lambda x, y, lab: _dense_siglip(x, y, 4.0, -2.0)),
    "supcon_loss": (lambda x, y, lab: distributed.supcon_loss(x, lab, 0.2), lambda x, y, lab: dense_supcon(x, lab, 0.2)),
    # Per-anchor losses: their output is built by the global-batch layer's per-row path.
    "nt_xent_loss none": (lambda x, y, lab: distributed.nt_xent_loss(x, y, 0.5, reduction="none"),
                          lambda x, y, lab: dense_nt_xent_rows(x, y, 0.5)),
}


def _anchor_rows(name, full, rank):
    """This rank's part of a per-anchor loss of the global batch (x's rows' anchors, then y's)."""
    if not name.endswith("none"):
        return full
    n = sum(ROWS)
    return torch.cat([shard(full[:n], ROWS, rank), shard(full[n:], ROWS, rank)])


def _scenario(rank, world):
    fulls = [global_batch(ROWS, D, seed=s) for s in (1, 2)]
    labels = shard(LABELS, ROWS, rank)
    for dtype in (torch.bfloat16, torch.float32):
        inputs = [f.to(dtype) for f in fulls]  # the dense formula sees the same (rounded) numbers
        for name, (loss_fn, dense_fn) in LOSSES.items():
            x, y = (shard(v, ROWS, rank).clone().requires_grad_() for v in inputs)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(x, y, labels)
            assert loss.dtype == torch.float32, (name, dtype, loss.dtype)
            want = _anchor_rows(name, dense_fn(*(v.double() for v in inputs), LABELS), rank)
            # float32's accuracy, not bfloat16's three digits.
            torch.testing.assert_close(loss.double(), want, rtol=2e-5, atol=1e-6, msg=f"{name} {dtype}")
            loss.sum().backward()
            assert x.grad.dtype == dtype and torch.isfinite(x.grad).all(), name
        # float64 is kept.
        x64, y64 = (shard(v, ROWS, rank) for v in fulls)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert distributed.clip_loss(x64, y64, 0.07).dtype == torch.float64
    # Without autocast the loss keeps the inputs' dtype.
    x16, y16 = (shard(v, ROWS, rank).bfloat16() for v in fulls)
    assert distributed.nt_xent_loss(x16, y16, 0.5).dtype == torch.bfloat16


def test_two_ranks_return_float32_under_cpu_autocast():
    run(_scenario, world=2)


def test_a_scenario_covers_every_distributed_loss():
    covered = {name.split()[0] for name in LOSSES}
    assert covered == set(distributed.__all__) - {"pair_rows", "split_pays_off"}
