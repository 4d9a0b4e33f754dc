"""pyhypersphere.large_batch.chunked_backward: parameter gradients against the plain
(unchunked) step, randomness replay, BatchNorm, autocast, GradScaler, DDP with the
distributed loss on two gloo ranks, and errors."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pyhypersphere import align_loss, uniform_loss
from pyhypersphere.large_batch import chunked_backward

B = 37  # odd: most chunk sizes below leave a smaller last chunk
D_IN = 20
CHUNKS = [5, 16, B, 64]
# Relative error of the parameter gradients (max |diff| / max |ref| per parameter).
GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def mlp(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(D_IN, 32), nn.Tanh(), nn.Dropout(dropout), nn.Linear(32, 8))


def conv() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, -1)),
        nn.Conv1d(1, 6, 5, padding=2, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv1d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * (D_IN // 2), 8),
    )


def conv_bn() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, -1)), nn.Conv1d(1, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * D_IN, 16), nn.BatchNorm1d(16), nn.Linear(16, 8))  # fmt: skip


ENCODERS = {"mlp": mlp, "conv": conv}


def align_uniform(a, b):
    """The paper's objective on normalized features."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return align_loss(a, b) + (uniform_loss(a) + uniform_loss(b)) / 2


def views(dtype=torch.float64, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, D_IN, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def rel_err(got, ref):
    return max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref))


def plain_step(model, vs, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(*[model(v) for v in vs])
    loss.backward()
    return loss.detach(), grads(model)


def same_chunks_step(model, vs, loss_fn, chunk):
    """An independent reference for models with per-chunk behaviour (dropout, BatchNorm): the
    chunks run once, with a graph, in chunked_backward's order; their features concatenated."""
    model.zero_grad(set_to_none=True)
    feats = [torch.cat([model(v[s : s + chunk]) for s in range(0, v.shape[0], chunk)]) for v in vs]
    loss_fn(*feats).backward()
    return grads(model)


# --------------------------------------------------------------------------- equal to the plain step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_gradients_equal_the_unchunked_step(encoder, dtype):
    torch.manual_seed(0)
    model = ENCODERS[encoder]().to(dtype)
    vs = views(dtype)
    ref_loss, ref = plain_step(model, vs, align_uniform)
    for chunk in CHUNKS + ([1] if encoder == "mlp" else []):  # chunks of one row: 4B small convolutions
        model.zero_grad(set_to_none=True)
        loss = chunked_backward(model, vs, align_uniform, chunk)
        assert not loss.requires_grad
        torch.testing.assert_close(loss, ref_loss, rtol=GRAD_RTOL[dtype], atol=0)
        err = rel_err(grads(model), ref)
        assert err <= GRAD_RTOL[dtype], f"chunk {chunk}: relative gradient error {err:.2e}"


def test_gradients_accumulate_like_backward():
    torch.manual_seed(0)
    model = mlp().double()
    vs = views()
    _, ref = plain_step(model, vs, align_uniform)
    model.zero_grad(set_to_none=True)
    chunked_backward(model, vs, align_uniform, 10)
    chunked_backward(model, vs, align_uniform, 7)
    assert rel_err(grads(model), [2 * r for r in ref]) <= 1e-10


class _FailsAtCall(nn.Module):
    """The wrapped model, raising an out-of-memory error at its ``at``-th call with a graph
    (chunked_backward's second pass); the calls after it succeed."""

    def __init__(self, model, at):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)


@pytest.mark.parametrize("grad_before", ["none", "accumulated"])
def test_a_failure_leaves_grad_as_before_so_a_retry_is_right(grad_before):
    """The usual out-of-memory retry: catch, use smaller chunks, call again without
    zero_grad.  The chunks back-propagated before the failure used to stay in .grad."""
    torch.manual_seed(0)
    inner = mlp().double()
    vs = views()
    _, ref = plain_step(inner, vs, align_uniform)  # leaves ref in .grad: an earlier micro-batch's
    if grad_before == "none":
        inner.zero_grad(set_to_none=True)
    want = ref if grad_before == "none" else [2 * r for r in ref]
    before = [None if p.grad is None else p.grad.clone() for p in inner.parameters()]
    model = _FailsAtCall(inner, at=3)  # chunks of 10: the third of 8 second-pass calls fails
    with pytest.raises(torch.cuda.OutOfMemoryError):
        chunked_backward(model, vs, align_uniform, 10)
    for p, b in zip(inner.parameters(), before):
        assert p.grad is None if b is None else torch.equal(p.grad, b)
    chunked_backward(model, vs, align_uniform, 5)  # the retry, without zero_grad
    assert rel_err(grads(inner), want) <= 1e-10


class TinyCLIP(nn.Module):
    """open_clip's shape in miniature: an image tower and a text tower (token embedding,
    mean pool), each called alone (``model(image=...)`` or ``model(text=...)``), returning
    normalized features, as open_clip's ``encode_image`` / ``encode_text`` do."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(D_IN, 16), nn.GELU(), nn.Linear(16, 8))
        self.token_embedding = nn.Embedding(50, 16)
        self.text_projection = nn.Linear(16, 8, bias=False)

    def forward(self, image=None, text=None):
        if image is not None:
            return F.normalize(self.visual(image), dim=-1)
        return F.normalize(self.text_projection(self.token_embedding(text).mean(1)), dim=-1)


def test_learned_logit_scale_gets_the_full_batch_gradient():
    # open_clip's gradient-accumulation test, redone with chunked_backward: a tiny CLIP with a
    # learned logit_scale, the full batch in one step against chunks of 2, 3 and 8, float64.
    # The loss's own parameter (logit_scale) must get the plain backward's gradient too.
    from pyhypersphere.nn import CLIPLoss

    torch.manual_seed(0)
    model = TinyCLIP().double()
    loss_fn = CLIPLoss(tau=0.07, learn_tau=True).double()
    g = torch.Generator().manual_seed(3)
    batch = [{"image": torch.randn(8, D_IN, generator=g, dtype=torch.float64)},
             {"text": torch.randint(0, 50, (8, 5), generator=g)}]  # fmt: skip
    parameters = list(model.parameters()) + list(loss_fn.parameters())

    model.zero_grad(set_to_none=True)
    loss_fn.zero_grad(set_to_none=True)
    ref_loss = loss_fn(model(**batch[0]), model(**batch[1]))
    ref_loss.backward()
    ref = [p.grad.clone() for p in parameters]
    assert ref[-1].abs() > 0.1  # logit_scale's gradient is not trivially 0
    for chunk in (2, 3, 8):
        model.zero_grad(set_to_none=True)
        loss_fn.zero_grad(set_to_none=True)
        loss = chunked_backward(model, batch, loss_fn, chunk)
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=0)
        assert loss_fn.logit_scale.grad is not None, f"chunk {chunk}: logit_scale got no gradient"
        for p, r in zip(parameters, ref):
            torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-12)


def test_parameters_of_a_loss_head_and_shared_ones_accumulate():
    # loss_fn with a projection head of its own, and a parameter it shares with the model
    # (the model's last layer scales the loss too): each gets the plain backward's
    # gradient, the shared one the sum of both paths; and it accumulates like backward.
    torch.manual_seed(1)
    model = mlp().double()
    head = nn.Linear(8, 8).double()
    shared = model[-1].bias

    def loss_fn(a, b):
        return align_uniform(head(a), head(b)) + shared.square().sum()

    vs = views()
    parameters = list(model.parameters()) + list(head.parameters())
    for p in parameters:
        p.grad = None
    loss_fn(model(vs[0]), model(vs[1])).backward()
    ref = [p.grad.clone() for p in parameters]
    for p in parameters:
        p.grad = None
    chunked_backward(model, vs, loss_fn, 5)
    chunked_backward(model, vs, loss_fn, 16)
    for p, r in zip(parameters, ref):
        torch.testing.assert_close(p.grad, 2 * r, rtol=1e-10, atol=1e-12)


def test_structured_inputs_and_outputs():
    """dict views call model(**view); tuple outputs reach loss_fn whole; unused outputs are fine."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(D_IN, 8), nn.Linear(3, 8)

        def forward(self, x, extra):
            hidden = torch.tanh(self.a(x))
            return hidden, hidden + self.b(extra), torch.zeros(x.shape[0], dtype=torch.long)

    torch.manual_seed(0)
    model = TwoInputs().double()
    x1, x2 = views()
    e1, e2 = torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 3, dtype=torch.float64)

    def loss_fn(o1, o2):
        assert o1[0].shape == (B, 8) and o1[2].dtype == torch.long
        return align_uniform(o1[1], o2[1])

    model.zero_grad()
    loss_fn(model(x1, e1), model(x2, e2)).backward()
    ref = grads(model)
    model.zero_grad()
    chunked_backward(model, [{"x": x1, "extra": e1}, (x2, e2)], loss_fn, 6)
    assert rel_err(grads(model), ref) <= 1e-10


def test_on_chunk_counts_both_passes():
    seen = []
    chunked_backward(mlp().double(), views(), align_uniform, 10, on_chunk=lambda d, t: seen.append((d, t)))
    total = 2 * 2 * 4  # two passes x two views x ceil(37 / 10) chunks
    assert seen == [(i, total) for i in range(1, total + 1)]


# --------------------------------------------------------------------------- randomness


def test_dropout_masks_are_replayed():
    torch.manual_seed(0)
    model = mlp(dropout=0.5).double()
    vs = views()
    torch.manual_seed(123)
    ref = same_chunks_step(model, vs, align_uniform, 8)
    after_ref = torch.get_rng_state()
    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    chunked_backward(model, vs, align_uniform, 8)
    assert rel_err(grads(model), ref) <= 1e-10
    # The generator continues where the first pass left it (as after the reference's pass).
    assert torch.equal(torch.get_rng_state(), after_ref)


def test_dropout_differs_without_replay():
    """The check above can fail: without replay the second pass draws new masks."""
    torch.manual_seed(0)
    model = mlp(dropout=0.5).double()
    vs = views()
    torch.manual_seed(123)
    ref = same_chunks_step(model, vs, align_uniform, 8)
    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    from pyhypersphere import large_batch

    original = large_batch._RngReplay.restore
    try:
        large_batch._RngReplay.restore = lambda self, state: None
        chunked_backward(model, vs, align_uniform, 8)
    finally:
        large_batch._RngReplay.restore = original
    assert rel_err(grads(model), ref) > 1e-3


# --------------------------------------------------------------------------- BatchNorm


def _running(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_batchnorm_running_stats_updated_once_by_default():
    torch.manual_seed(0)
    model = conv_bn().double()
    vs = views()
    chunk = 10
    expected = copy.deepcopy(model)
    with torch.no_grad():  # one training-mode forward per chunk: what a plain step on each does
        for v in vs:
            for s in range(0, B, chunk):
                expected(v[s : s + chunk])
    ref = same_chunks_step(copy.deepcopy(model), vs, align_uniform, chunk)
    chunked_backward(model, vs, align_uniform, chunk)
    got, want = _running(model), _running(expected)
    assert got.keys() == want.keys() and len(got) == 6
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=0)
    assert int(got["2.num_batches_tracked"]) == 2 * 4
    # Per-chunk batch statistics in both passes: the gradient of the same-chunks step.
    assert rel_err(grads(model), ref) <= 1e-10


def test_batchnorm_both_passes_updates_twice():
    torch.manual_seed(0)
    model = conv_bn().double()
    chunked_backward(model, views(), align_uniform, 10, batchnorm_stats="both_passes")
    assert int(model[2].num_batches_tracked) == 2 * 2 * 4


def test_batchnorm_in_eval_mode_equals_the_unchunked_step():
    torch.manual_seed(0)
    model = conv_bn().double()
    with torch.no_grad():
        model(views(seed=5)[0])  # non-trivial running statistics
    model.eval()
    vs = views()
    _, ref = plain_step(model, vs, align_uniform)
    before = _running(model)
    model.zero_grad(set_to_none=True)
    chunked_backward(model, vs, align_uniform, 6)
    assert rel_err(grads(model), ref) <= 1e-10
    assert all(torch.equal(before[k], v) for k, v in _running(model).items())


# --------------------------------------------------------------------------- autocast, GradScaler


def test_autocast_bfloat16():
    torch.manual_seed(0)
    model = mlp()
    vs = views(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = same_chunks_step(model, vs, align_uniform, 16)
        model.zero_grad(set_to_none=True)
        seen = []
        chunked_backward(model, vs, lambda a, b: seen.append(a.dtype) or align_uniform(a, b), 16)
    assert seen == [torch.bfloat16]
    # Same chunks, same bf16 GEMMs: only the loss's reduction order differs.
    assert rel_err(grads(model), ref) <= 1e-2
    model.zero_grad(set_to_none=True)
    _, full = plain_step(model, vs, align_uniform)  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.zero_grad(set_to_none=True)
        chunked_backward(model, vs, align_uniform, 16)
    assert rel_err(grads(model), full) <= 0.1  # bf16 rounding, not a different gradient


def test_grad_scaler_scales_the_backward_not_the_result():
    torch.manual_seed(0)
    model = mlp().double()
    vs = views()
    ref_loss, ref = plain_step(model, vs, align_uniform)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model.zero_grad(set_to_none=True)
    loss = chunked_backward(model, vs, align_uniform, 9, scaler=scaler)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert rel_err(grads(model), [1024.0 * r for r in ref]) <= 1e-10


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(chunk_size=0), ValueError, "chunk_size must be at least 1, got 0"),
        (dict(chunk_size=-3), ValueError, "chunk_size must be at least 1"),
        (dict(chunk_size=2.5), TypeError, "chunk_size must be an int"),
        (dict(chunk_size=True), TypeError, "chunk_size must be an int"),
        (dict(views=torch.zeros(4, D_IN)), TypeError, "views must be a non-empty list"),
        (dict(views=[]), TypeError, "views must be a non-empty list"),
        (dict(views=[torch.zeros(4, D_IN), torch.zeros(5, D_IN)]), ValueError, r"same batch size B, got \[4, 5\]"),
        (dict(views=[(torch.zeros(4, D_IN), torch.zeros(3))]), ValueError, r"views\[0\] have different batch sizes"),
        (dict(views=["text"]), TypeError, r"views\[0\] must be a tensor"),
        (dict(views=[torch.zeros(0, D_IN)]), ValueError, "batch size 0"),
        (dict(loss_fn=lambda *f: torch.cat(f).sum(1)), ValueError, "must return a scalar tensor"),
        (dict(loss_fn=lambda *f: 1.0), ValueError, "must return a scalar tensor.*float"),
        (dict(loss_fn=lambda *f: f[0].detach().sum()), ValueError, "the loss does not require grad"),
        (dict(loss_fn=lambda *f: f[0].sum()), ValueError, r"does not depend on the model's output for views\[1\]"),
        (dict(loss_fn="loss"), TypeError, "loss_fn must be callable"),
        (dict(model=None), TypeError, "model must be a module or a callable"),
        (dict(batchnorm_stats="never"), ValueError, "batchnorm_stats must be one of first_pass, both_passes"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = dict(model=mlp(), views=views(torch.float32, n=6), loss_fn=lambda a, b: (a - b).pow(2).sum(), chunk_size=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        chunked_backward(**args)


def test_features_that_do_not_require_grad():
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="model's output does not require grad"):
        chunked_backward(frozen, views(torch.float32, n=6), lambda a, b: (a - b).pow(2).sum(), 4)
    with torch.no_grad(), pytest.raises(RuntimeError, match="grad mode is disabled"):
        chunked_backward(mlp(), views(torch.float32, n=6), lambda a, b: (a - b).pow(2).sum(), 4)


# --------------------------------------------------------------------------- DDP, two gloo ranks


def _ddp_with_distributed_loss(rank, world):
    """Each rank re-runs its own chunks; DDP averages once; the result is the single-process
    unchunked step on the concatenated batch."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pyhypersphere import distributed

    torch.manual_seed(0)
    model = mlp().double()
    full = views(n=2 * 11)  # the global batch; 11 rows per rank, chunks of 4 (4, 4, 3)
    _, ref = plain_step(copy.deepcopy(model), full, align_uniform)
    shard = [v[rank * 11 : (rank + 1) * 11] for v in full]

    def global_align_uniform(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return align_loss(a, b) + (distributed.uniform_loss(a) + distributed.uniform_loss(b)) / 2

    ddp = DDP(model)
    syncs = []

    def counting_hook(state, bucket):
        syncs.append(1)
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    loss = chunked_backward(ddp, shard, global_align_uniform, 4)
    assert rel_err(grads(model), ref) <= 1e-10, f"rank {rank}"
    chunked_syncs = len(syncs)
    ddp.zero_grad(set_to_none=True)
    global_align_uniform(*[ddp(v) for v in shard]).backward()  # a plain DDP step: one synchronization
    assert chunked_syncs == len(syncs) - chunked_syncs >= 1, (chunked_syncs, len(syncs))
    assert rel_err(grads(model), ref) <= 1e-10
    assert torch.isfinite(loss)

    # Ranks with different batch sizes and chunk counts (11 and 7 rows: 3 and 2 chunks) and a
    # model with buffers: DDP broadcasts buffers and all-reduces gradients once per step, so
    # nothing waits for a collective the other rank never calls; the gradients agree.
    torch.manual_seed(0)
    bn = DDP(conv_bn().double())
    local = [v[: 11 if rank == 0 else 7] for v in shard]
    for _ in range(2):
        bn.zero_grad(set_to_none=True)
        chunked_backward(bn, local, global_align_uniform, 4)
    flat = torch.cat([p.grad.reshape(-1) for p in bn.parameters()])
    both = [torch.empty_like(flat) for _ in range(world)]
    torch.distributed.all_gather(both, flat)
    assert torch.equal(both[0], both[1]) and torch.isfinite(flat).all()


def test_ddp_and_distributed_loss_on_two_ranks():
    from dist_harness import run

    run(_ddp_with_distributed_loss, world=2)


# --------------------------------------------------------------------------- the trainer's --chunk-size


def test_trainer_chunk_runs_both_views_of_its_samples_together():
    """Each encoder call holds both views of the same samples (BatchNorm over both, as in the
    unchunked step's single call); the loss sees the whole batch.  Reference: those calls
    made directly with a graph, the features reassembled by hand."""
    from pyhypersphere.train import TrainConfig, loop, models

    cfg = TrainConfig(batch_size=10).resolved()
    objective = loop._Objective(cfg, world=1)
    torch.manual_seed(0)
    model = models.Encoder(models.conv1d_trunk(width=4, hidden=8), 8, 4)
    v1, v2 = torch.randn(10, 40), torch.randn(10, 40)
    reference = copy.deepcopy(model)
    z1, z2 = [], []
    for s in range(0, 10, 3):
        _, z = reference(torch.cat([v1[s : s + 3], v2[s : s + 3]]))
        z1.append(z[: z.shape[0] // 2])
        z2.append(z[z.shape[0] // 2 :])
    ref_loss, ref_value, _, _ = objective(torch.cat(z1), torch.cat(z2))
    ref_loss.backward()
    value, align, unif = loop._chunked_step(model, objective, v1, v2, 3, progress=False)
    torch.testing.assert_close(value, ref_value, rtol=1e-6, atol=0)
    assert rel_err(grads(model), grads(reference)) <= 1e-5
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)  # running stats once


def test_trainer_shows_the_chunks_of_a_step(monkeypatch):
    from pyhypersphere.train import TrainConfig, loop, models

    bars = []

    class Bar:
        def __init__(self, total, desc, enabled):
            self.total, self.desc, self.updates, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.updates += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(loop, "_progress", Bar)
    objective = loop._Objective(TrainConfig(batch_size=10).resolved(), world=1)
    model = models.Encoder(models.conv1d_trunk(width=4, hidden=8), 8, 4)
    loop.backward_step(model, objective, torch.randn(10, 40), torch.randn(10, 40), 4, progress=True)
    (bar,) = bars
    assert (bar.desc, bar.total, bar.updates, bar.closed) == ("chunks", 6, 6, True)  # 2 passes x 3 chunks


def test_train_chunk_size_option(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    from pyhypersphere.train import TrainConfig, cli, train

    monkeypatch.setenv("PYHYPERSPHERE_CACHE", str(tmp_path / "cache"))
    base = dict(num_samples=400, epochs=1, batch_size=64, progress=False, plots=False, threads=1)
    chunked = train(TrainConfig(out=str(tmp_path / "chunked"), chunk_size=24, **base))
    assert (chunked["batch_size"], chunked["chunk_size"]) == (64, 24)
    assert 0.0 <= chunked["linear_probe_acc"] <= 1.0
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **base))
    whole = train(TrainConfig(out=str(tmp_path / "whole"), chunk_size=64, **base))
    assert (plain["batch_size"], plain["chunk_size"]) == (64, 64)
    for key in ("linear_probe_acc", "align", "uniform", "train_loss"):
        assert whole[key] == plain[key]  # one chunk of the whole batch is the unchunked step
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    assert cli.config_from_args(parser.parse_args(["--chunk-size", "128"])).chunk_size == 128
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        TrainConfig(chunk_size=0).resolved()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dropout_masks_are_replayed_on_cuda():
    torch.manual_seed(0)
    model = mlp(dropout=0.5).double().cuda()
    vs = [v.cuda() for v in views()]
    torch.manual_seed(123)
    ref = same_chunks_step(model, vs, align_uniform, 8)
    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    chunked_backward(model, vs, align_uniform, 8)
    assert rel_err(grads(model), ref) <= 1e-10
