"""siglip_loss, nn.SigLIPLoss and distributed.siglip_loss (issue 25) against a dense float64
formula written here: values and gradients (x, y, t, b and weight), every reduction, tiles
with tails, float32/float64/bf16 inputs, autocast, opcheck, torch.compile,
large_batch.chunked_backward, 2 gloo ranks, errors, and the Triton kernel through the
interpreter.

The CPU kernel cuts rows into 64-row blocks below N = 2048 and its float epilogue into
16-lane vectors: N = 150 and d = 33 cross both with ragged tails, N_x != N_y the
rectangle of unequal blocks.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pyhypersphere import distributed, large_batch, nn as phnn
from pyhypersphere.ops import siglip as siglip_ops
from pyhypersphere import siglip_loss

from dist_harness import global_batch, run, shard

ops = torch.ops.pyhypersphere


def dense_rows(x, y, t, b):
    """Each row's -sum_j log sigmoid(z_ij (t <x_i, y_j> + b)), z_ii = +1, else -1, from the
    explicit logit and label matrices."""
    logits = t * (x @ y.T) + b
    labels = -torch.ones_like(logits)
    i = torch.arange(min(x.shape[0], y.shape[0]))
    labels[i, i] = 1.0
    return -F.logsigmoid(labels * logits).sum(1)


def dense_loss(x, y, t, b, reduction="mean", weight=None):
    rows = dense_rows(x, y, t, b)
    if weight is not None:
        rows = rows * weight
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (weight.sum() if weight is not None else x.shape[0])


def inputs(n, d, dtype=torch.float64, seed=0, ny=None):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(ny or n, d, generator=g, dtype=torch.float64), dim=1)
    # positives correlated with their anchors: the positive terms are not all alike
    y[: min(n, y.shape[0])] += 0.7 * x[: y.shape[0]]
    return x.to(dtype), F.normalize(y, dim=1).to(dtype)


def fused_and_dense(x, y, t, b, reduction="mean", weight=None):
    """(fused value, fused grads, dense value, dense grads) for x, y, t, b (and weight)."""
    leaves = [x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True),
              torch.tensor(t, dtype=torch.float64, requires_grad=True),
              torch.tensor(b, dtype=torch.float64, requires_grad=True)]
    w = None if weight is None else weight.detach().clone().requires_grad_(True)
    out = siglip_loss(*leaves, reduction=reduction, weight=w)
    upstream = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    got = torch.autograd.grad((out * upstream).sum(), leaves + ([w] if w is not None else []))
    refs = [v.detach().double().requires_grad_(True) for v in leaves] + ([w.detach().double().requires_grad_(True)]
                                                                          if w is not None else [])
    want_out = dense_loss(*refs[:4], reduction, refs[4] if w is not None else None)
    want = torch.autograd.grad((want_out * upstream.double()).sum(), refs)
    return out.detach(), got, want_out.detach(), want


def assert_close(got, want, rtol, what=""):
    got, want = got.double(), want.double()
    scale = want.abs().max().clamp_min(1e-30)
    err = (got - want).abs().max() / scale
    assert err <= rtol, f"{what}: max error {err:.3g} relative to max |ref| (tolerance {rtol:g})"


TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 2e-5}


@pytest.mark.parametrize("n,ny,d", [(1, 1, 1), (2, 2, 3), (150, 150, 33), (70, 131, 16), (131, 70, 20)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_values_and_gradients_of_x_y_t_b(n, ny, d, dtype):
    x, y = inputs(n, d, dtype, seed=n + d, ny=ny)
    if ny != n:  # the op's rectangle: rows of x against more (or fewer) rows of y
        coef = torch.full((n,), 1.0 / n, dtype=torch.float64)
        t, b = torch.tensor(3.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
        total, rows, gx, gy, gtb = ops.siglip(x, y, t, b, coef, True, True, True)
        refs = [v.double().requires_grad_(True) for v in (x, y, t, b)]
        want_rows = dense_rows(*refs)
        torch.autograd.backward((want_rows * coef).sum())
        assert_close(rows, want_rows.detach(), TOL[dtype], "rows")
        assert_close(total, (want_rows * coef).sum().detach(), TOL[dtype], "total")
        for got, ref, name in ((gx, refs[0], "x"), (gy, refs[1], "y")):
            assert_close(got, ref.grad, 10 * TOL[dtype], f"d/d{name}")
        assert_close(gtb, torch.stack([refs[2].grad, refs[3].grad]), 10 * TOL[dtype], "d/dt, d/db")
        return
    value, got, want_value, want = fused_and_dense(x, y, 10.0, -10.0)
    assert value.dtype == dtype
    # bf16 inputs: the reference runs on the same rounded inputs; only the output rounds.
    assert_close(value, want_value, 1e-2 if dtype == torch.bfloat16 else TOL[dtype], "loss")
    for g, w, name in zip(got, want, "xytb"):
        assert_close(g, w, 1e-2 if dtype == torch.bfloat16 else 10 * TOL[dtype], f"d/d{name}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_every_reduction_and_weights(reduction, weighted):
    x, y = inputs(90, 12, seed=3)
    weight = torch.rand(90, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.1 if weighted else None
    value, got, want_value, want = fused_and_dense(x, y, 5.0, -3.0, reduction, weight)
    assert value.shape == ((90,) if reduction == "none" else ())
    assert_close(value, want_value, 1e-12, "loss")
    for g, w, name in zip(got, want, ["x", "y", "t", "b", "weight"]):
        assert_close(g, w, 1e-11, f"d/d{name}")


def test_python_numbers_and_the_papers_defaults():
    x, y = inputs(40, 8, torch.float32, seed=5)
    assert siglip_ops.DEFAULT_T == 10.0 and siglip_ops.DEFAULT_B == -10.0
    want = dense_loss(x.double(), y.double(), 10.0, -10.0)
    assert_close(siglip_loss(x, y), want, 2e-6, "defaults")
    assert_close(siglip_loss(x, y, 2, 0.5), dense_loss(x.double(), y.double(), 2.0, 0.5), 2e-6, "ints")


@pytest.mark.parametrize("dtype,t,tol", [(torch.float64, 1000.0, 1e-11), (torch.float32, 200.0, 2e-5)])
def test_extreme_logits_stay_finite_and_exact(dtype, t, tol):
    # |l| up to t: log sigmoid in the stable form never overflows nor cancels; in float32
    # most terms lie below e^-87, where the vector epilogue keeps off denormal numbers.
    x, y = inputs(70, 4, dtype, seed=6)
    value, got, want_value, want = fused_and_dense(x, y, t, -10.0)
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in got)
    assert_close(value, want_value, tol, "loss")
    for g, w, name in zip(got, want, "xytb"):
        assert_close(g, w, 5 * tol, f"d/d{name}")


def test_nan_inputs_give_nan():
    x, y = inputs(10, 4, torch.float32)
    x[3, 1] = math.nan
    assert torch.isnan(siglip_loss(x, y))
    assert torch.isnan(siglip_loss(*inputs(10, 4), t=torch.tensor(math.nan)))


def test_gradients_computed_in_the_forward_are_those_of_a_second_pass():
    """'mean' takes the forward's gradients; 'none' with the same upstream recomputes
    them in the backward: both routes agree."""
    x, y = inputs(64, 8, torch.float32, seed=7)
    a, b_ = (x.clone().requires_grad_(True) for _ in range(2))
    (ga,) = torch.autograd.grad(siglip_loss(a, y), a)
    (gb,) = torch.autograd.grad(siglip_loss(b_, y, reduction="none").sum() / 64, b_)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_second_derivatives_and_torch_func(reduction):
    """create_graph=True and torch.func.grad take the differentiable form of the gradient."""
    x, y = inputs(12, 5, seed=16)
    weight = torch.rand(12, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.5
    probe = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def gradient_then_probe(fn):
        leaves = [v.clone().requires_grad_(True) for v in (x, y)]
        t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        out = fn(*leaves, t, b, reduction=reduction, weight=weight)
        (gx,) = torch.autograd.grad(out.sum(), leaves[0], create_graph=True)
        return torch.autograd.grad((gx * probe).sum(), [*leaves, t, b])

    for got, want in zip(gradient_then_probe(siglip_loss), gradient_then_probe(dense_loss)):
        assert_close(got, want, 1e-11, "second derivative")
    grad_fn = torch.func.grad(lambda a: siglip_loss(a, y, 3.0, -2.0, reduction, weight).sum())
    want = torch.func.grad(lambda a: dense_loss(a, y, 3.0, -2.0, reduction, weight).sum())(x)
    assert_close(grad_fn(x), want, 1e-12, "torch.func.grad")


def test_autocast_gives_a_float32_loss():
    x, y = inputs(48, 16, torch.float32, seed=8)
    for dtype in (torch.float32, torch.bfloat16):
        a = x.detach().to(dtype).clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = siglip_loss(a, y.to(dtype))
        assert out.dtype == torch.float32
        out.backward()
        assert a.grad.dtype == dtype
        assert_close(out, dense_loss(x.to(dtype).double(), y.to(dtype).double(), 10.0, -10.0), 2e-5, "autocast")


def _op_args(n=20, d=5, dtype=torch.float64, flags=(True, True, True)):
    x, y = inputs(n, d, dtype, seed=9)
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    coef = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    return (x.requires_grad_(True), y.requires_grad_(True), t, b, coef, *flags)


@pytest.mark.parametrize("flags", [(True, True, True), (False, False, False), (True, False, True)])
def test_opcheck(flags):
    torch.library.opcheck(ops.siglip, _op_args(flags=flags))
    torch.library.opcheck(ops.siglip, _op_args(dtype=torch.float32, flags=flags),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    x, y = inputs(40, 8, torch.float32, seed=10)
    module = phnn.SigLIPLoss()

    def step(a, b):
        return module(a, b)

    compiled = torch.compile(step, fullgraph=True)
    a, a2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, want = compiled(a, y), step(a2, y)
    torch.testing.assert_close(out, want)
    (g,) = torch.autograd.grad(out, a)
    (g2,) = torch.autograd.grad(want, a2)
    torch.testing.assert_close(g, g2)


def test_chunked_backward_matches_a_plain_step():
    torch.manual_seed(11)
    model = torch.nn.Linear(6, 8, dtype=torch.float64)
    loss_fn = phnn.SigLIPLoss()
    data = [torch.randn(37, 6, dtype=torch.float64) for _ in range(2)]

    def loss(a, b):
        return loss_fn(F.normalize(a, dim=1), F.normalize(b, dim=1))

    large_batch.chunked_backward(model, data, loss, chunk_size=10)
    chunked = [p.grad.clone() for p in (*model.parameters(), *loss_fn.parameters())]
    for p in (*model.parameters(), *loss_fn.parameters()):
        p.grad = None
    loss(model(data[0]), model(data[1])).backward()
    for got, want in zip(chunked, (*model.parameters(), *loss_fn.parameters())):
        torch.testing.assert_close(got, want.grad, rtol=1e-10, atol=1e-12)


def test_module_learns_t_and_b_as_the_paper_initializes_them():
    m = phnn.SigLIPLoss()
    assert {n for n, _ in m.named_parameters()} == {"logit_scale", "logit_bias"}
    assert m.logit_scale.item() == pytest.approx(math.log(10.0)) and m.logit_bias.item() == -10.0
    x, y = inputs(30, 6, seed=12)
    m(x, y).backward()
    t = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    dense_loss(x, y, t, b).backward()
    assert m.logit_scale.grad.item() == pytest.approx(t.grad.item() * 10.0, rel=1e-6)  # dt/dt' = t
    assert m.logit_bias.grad.item() == pytest.approx(b.grad.item(), rel=1e-6)
    fixed = phnn.SigLIPLoss(t=4.0, b=1.0, learn=False)
    assert list(fixed.parameters()) == []
    assert_close(fixed(x, y), dense_loss(x, y, 4.0, 1.0), 1e-12, "fixed")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"t": 0.0}, ValueError, "t must be a positive finite number"),
    ({"b": math.inf}, ValueError, "b must be a finite number"),
    ({"b": "x"}, TypeError, "b must be a number"),
    ({"learn": 1}, TypeError, "learn must be True or False"),
])
def test_module_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        phnn.SigLIPLoss(**kwargs)


@pytest.mark.parametrize("call,error,match", [
    (lambda x, y: siglip_loss(x[0], y), ValueError, r"siglip_loss: x must be a 2-D tensor"),
    (lambda x, y: siglip_loss(x, y[:-1]), ValueError, r"siglip_loss: y must have the same shape as x"),
    (lambda x, y: siglip_loss(x, y.float()), ValueError, r"y must have the same dtype as x"),
    (lambda x, y: siglip_loss(x.long(), y.long()), ValueError, r"x must be a floating-point tensor"),
    (lambda x, y: siglip_loss(x, [1]), TypeError, r"y must be a torch.Tensor"),
    (lambda x, y: siglip_loss(x, y, reduction="avg"), ValueError, r"reduction must be one of 'mean', 'sum', 'none'"),
    (lambda x, y: siglip_loss(x, y, weight=torch.ones(3)), ValueError, r"weight must be a floating-point tensor of shape \(6,\)"),
    (lambda x, y: siglip_loss(x, y, weight=torch.ones(6, dtype=torch.long)), ValueError, r"weight must be a floating"),
    (lambda x, y: siglip_loss(x, y, weight=[1.0] * 6), TypeError, r"siglip_loss: weight must be a torch.Tensor or None, got list"),
    (lambda x, y: siglip_loss(x, y, t=torch.ones(2)), ValueError, r"t must be a number or a one-element floating"),
    (lambda x, y: siglip_loss(x, y, b=math.nan), ValueError, r"b must be a finite number"),
    (lambda x, y: siglip_loss(x, y, t="10"), TypeError, r"t must be a number"),
    (lambda x, y: ops.siglip(x, y, torch.tensor(1.0), torch.tensor(0.0), torch.ones(5), False, False, False),
     ValueError, r"siglip_loss: coef must be a floating-point tensor of shape \[6\]"),
    (lambda x, y: ops.siglip(x, y[:, :2], torch.tensor(1.0), torch.tensor(0.0), torch.ones(6), False, False, False),
     ValueError, r"siglip_loss: y must have the same feature dimension as x"),
])
def test_clear_errors(call, error, match):
    x, y = inputs(6, 3)
    with pytest.raises(error, match=match):
        call(x, y)


def test_registry_names_the_op():
    from pyhypersphere import gpu_backend

    assert gpu_backend.OPS["siglip"] is False  # no C++ CUDA kernel: Triton serves CUDA tensors
    assert gpu_backend.IMPLEMENTATIONS["siglip"]["cpu"] == "cpu"


def test_bench_rows():
    from pyhypersphere.bench.contrastive import CONTRASTIVE_IMPLS, LOSSES, tau_for

    assert "siglip" in LOSSES
    x, y = inputs(32, 8, torch.float32, seed=13)
    fused = CONTRASTIVE_IMPLS["pyhypersphere"].build("siglip", tau_for("siglip", None))(x, y)
    dense = CONTRASTIVE_IMPLS["dense"].build("siglip", tau_for("siglip", None))(x, y)
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-5)
    assert_close(fused, dense_loss(x.double(), y.double(), 10.0, -10.0), 2e-6, "bench")


# ---------------------------------------------------------------- distributed (2 gloo ranks)

D = 6


def _two_ranks(rank, world):
    rows = [9, 5]
    n = sum(rows)
    full_x, full_y = global_batch(rows, D, 20), global_batch(rows, D, 21)
    g = torch.Generator().manual_seed(3)
    weight = 0.2 + torch.rand(n, generator=g, dtype=torch.float64)
    weight[0] = 0.0
    upstream = torch.randn(n, generator=g, dtype=torch.float64)  # 'none': one per row, each rank its own rows'
    for reduction in ("mean", "sum", "none"):
        per_row = reduction == "none"
        seed, scale = (upstream, 1) if per_row else (1.0, world)
        for w in (None, weight):
            x = shard(full_x, rows, rank).clone().requires_grad_(True)
            y = shard(full_y, rows, rank).clone().requires_grad_(True)
            t = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
            b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
            out = distributed.siglip_loss(x, y, t, b, reduction=reduction, weight=None if w is None else shard(w, rows, rank))
            (out * (shard(seed, rows, rank) if per_row else seed)).sum().backward()
            refs = [v.clone().requires_grad_(True) for v in (full_x, full_y)]
            tr = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
            br = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
            want = dense_loss(*refs, tr, br, reduction, w)
            (want * seed).sum().backward()
            singles = [v.clone().requires_grad_(True) for v in (full_x, full_y)]
            single = siglip_loss(*singles, 4.0, -2.0, reduction, w)
            (single * seed).sum().backward()
            if per_row:  # this rank's rows, in the order of its x rows
                want, single = shard(want, rows, rank), shard(single, rows, rank)
            assert_close(out.detach(), want.detach(), 1e-12, f"global loss {reduction}")
            assert_close(out.detach(), single.detach(), 1e-12, f"single-process loss {reduction}")
            # The DDP convention: W * g * dL/dx_r on each rank, t and b W * this rank's share
            # ('none': the single-process backward of the ranks' upstream gradients, t and b
            # this rank's rows' part).
            for got, dense_full, single_full in ((x.grad, refs[0].grad, singles[0].grad),
                                                 (y.grad, refs[1].grad, singles[1].grad)):
                assert_close(got, scale * shard(dense_full, rows, rank), 1e-11, f"d/dx_r, d/dy_r {reduction}")
                assert_close(got, scale * shard(single_full, rows, rank), 1e-11, f"d/dx_r, d/dy_r {reduction}")
            total = torch.stack([t.grad, b.grad])
            torch.distributed.all_reduce(total)
            assert_close(total / scale, torch.stack([tr.grad, br.grad]), 1e-11, f"d/dt, d/db {reduction}")
    mine = [shard(v, rows, rank) for v in (full_x, full_y)]
    here = r" \(here: reduction must be one of 'mean', 'sum', 'none', got 'avg'\)$" if rank == 1 else "$"
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\] passed something else" + here):
        distributed.siglip_loss(*mine, reduction="avg" if rank == 1 else "mean")
    here = r" \(here: weight must be a floating-point tensor of shape \(9,\)" if rank == 0 else "$"
    with pytest.raises(ValueError, match=r"rank\(s\) \[0\] passed something else" + here):
        distributed.siglip_loss(*mine, weight=torch.ones(rows[rank] + (rank == 0), dtype=torch.float64))
    with pytest.raises(ValueError, match="the ranks disagree on weighted"):
        distributed.siglip_loss(*mine, weight=torch.ones(rows[rank], dtype=torch.float64) if rank else None)
    with pytest.raises(ValueError, match="reduction='none' needs equal_shards=False"):
        distributed.siglip_loss(*mine, reduction="none", equal_shards=True)
    # One rank's bad input raises on every rank (none is left waiting in a collective).
    y_bad = shard(full_y, rows, rank)[:, : D - 1] if rank == 1 else shard(full_y, rows, rank)
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\] passed something else"):
        distributed.siglip_loss(shard(full_x, rows, rank), y_bad)
    with pytest.raises(ValueError, match=r"the ranks disagree on b"):
        distributed.siglip_loss(shard(full_x, rows, rank), shard(full_y, rows, rank), 10.0, -10.0 + rank)
    equal_rows = [7, 7]
    ex, ey = global_batch(equal_rows, D, 22), global_batch(equal_rows, D, 23)
    x = shard(ex, equal_rows, rank).clone().requires_grad_(True)
    out = distributed.siglip_loss(x, shard(ey, equal_rows, rank), 3.0, -1.0, equal_shards=True)
    out.backward()
    ref = ex.clone().requires_grad_(True)
    want = dense_loss(ref, ey, 3.0, -1.0)
    want.backward()
    assert_close(out.detach(), want.detach(), 1e-12, "no-sync loss")
    assert_close(x.grad, world * shard(ref.grad, equal_rows, rank), 1e-11, "no-sync d/dx_r")
    # ... with weights: the mean over the global batch's weights.
    w = 0.2 + torch.rand(sum(equal_rows), generator=g, dtype=torch.float64)
    x.grad = None
    out = distributed.siglip_loss(x, shard(ey, equal_rows, rank), 3.0, -1.0, weight=shard(w, equal_rows, rank),
                                  equal_shards=True)
    out.backward()
    ref = ex.clone().requires_grad_(True)
    want = dense_loss(ref, ey, 3.0, -1.0, "mean", w)
    want.backward()
    assert_close(out.detach(), want.detach(), 1e-12, "no-sync weighted loss")
    assert_close(x.grad, world * shard(ref.grad, equal_rows, rank), 1e-11, "no-sync weighted d/dx_r")


def test_two_gloo_ranks_match_the_dense_formula():
    run(_two_ranks, world=2)


def test_distributed_without_a_process_group_raises():
    with pytest.raises(RuntimeError, match="no torch.distributed process group is initialized"):
        distributed.siglip_loss(torch.randn(4, 3), torch.randn(4, 3))


# ---------------------------------------------------------------- Triton, through the interpreter


@pytest.fixture
def triton_kernels():
    """The Triton launcher, and the operator dispatching to it for CPU tensors under the
    interpreter (on a GPU with TRITON_INTERPRET=0 it is registered for CUDA already)."""
    pytest.importorskip("triton")
    from triton_device import DEVICE, INTERPRET

    from pyhypersphere.triton_kernels.siglip import siglip as launcher

    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 before triton is imported, or a CUDA device")
    if not INTERPRET:
        yield launcher, DEVICE
        return
    import warnings

    lib = torch.library.Library("pyhypersphere", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        lib.impl("siglip", launcher, "CPU")
    try:
        yield launcher, DEVICE
    finally:
        lib._destroy()


@pytest.mark.parametrize("n,ny,d,dtype", [
    (1, 1, 1, torch.float64), (70, 45, 20, torch.float64), (45, 70, 130, torch.float32), (40, 40, 16, torch.bfloat16),
    # float32 in one chunk: 16-row blocks against 32-column tiles (3xTF32), the diagonal
    # stage starting inside a column tile
    (50, 37, 24, torch.float32), (130, 150, 40, torch.bfloat16),
])
def test_triton_kernel_against_the_dense_formula(triton_kernels, monkeypatch, n, ny, d, dtype):
    # The two sweeps (the path under torch's deterministic mode): the one pass is below.
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    monkeypatch.setattr(module, "_one_pass", lambda *args: None)
    x, y = inputs(n, d, dtype, seed=14, ny=ny)
    coef = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t, b = torch.tensor(6.0), torch.tensor(-4.0)
    total, rows, gx, gy, gtb = launcher(*(v.to(device) for v in (x, y, t, b, coef)), True, True, True)
    refs = [v.double().requires_grad_(True) for v in (x, y, t, b)]
    want_rows = dense_rows(*refs)
    (want_rows * coef).sum().backward()
    tol = {torch.float64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 1e-2}[dtype]
    assert_close(rows.cpu(), want_rows.detach(), tol, "rows")
    assert_close(total.cpu(), (want_rows * coef).sum().detach(), tol, "total")
    for got, ref, name in ((gx, refs[0], "x"), (gy, refs[1], "y")):
        assert_close(got.cpu(), ref.grad, 5 * tol, f"d/d{name}")
    assert_close(gtb.cpu(), torch.stack([refs[2].grad, refs[3].grad]), 5 * tol, "d/dt, d/db")


def test_triton_loss_through_dispatch_and_its_errors(triton_kernels):
    launcher, device = triton_kernels
    x, y = inputs(33, 9, seed=15)
    weight = torch.rand(33, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    value, got, want_value, want = fused_and_dense(x.to(device), y.to(device), 7.0, -5.0, "mean", weight.to(device))
    assert_close(value.cpu(), want_value, 1e-11, "loss")
    for g, w, name in zip(got, want, ["x", "y", "t", "b", "weight"]):
        assert_close(g.cpu(), w, 1e-10, f"d/d{name}")
    nan = x.clone()
    nan[0, 0] = math.nan
    assert torch.isnan(launcher(nan.to(device), y.to(device), torch.tensor(1.0), torch.tensor(0.0),
                                 torch.ones(33, dtype=torch.float64, device=device), False, False, False)[0]).all()
    with pytest.raises(ValueError, match="y must have the same feature dimension as x"):
        launcher(x.to(device), y[:, :3].to(device), torch.tensor(1.0), torch.tensor(0.0),
                  torch.ones(33, device=device), False, False, False)


# One sweep for the loss and both gradients (y's gradient rows added with atomics), the
# launcher's path whenever d/dy is wanted and torch's deterministic mode is off.  Its
# blocks (siglip.one_pass_config; the interpreter takes sm_90's): 128 x 128 for 16-bit
# operands, 16 x 32 for float64, so these shapes have several row and column blocks,
# tails, rows past y's (N_x > N_y: no diagonal there) and columns past x's.
ONE_PASS_CASES = [
    (1, 1, 1, torch.float64), (70, 45, 20, torch.float64), (45, 100, 64, torch.float64),
    (300, 140, 40, torch.bfloat16), (130, 260, 16, torch.bfloat16), (150, 97, 128, torch.float16),
]


def _one_pass_case(launcher_module, n, ny, d, dtype, grad_x, device):
    x, y = inputs(n, d, dtype, seed=n + ny, ny=ny)
    coef = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) - 0.25
    t = torch.tensor(5.0, dtype=torch.float64)
    b = torch.tensor(-3.0, dtype=torch.float64)
    fmt = launcher_module.operand_format(dtype, launcher_module._precision(dtype))
    assert launcher_module.one_pass_config(fmt, d, launcher_module.device_arch(x.device)) is not None
    out = launcher_module.siglip(*(v.to(device) for v in (x, y, t, b, coef)), grad_x, True, True)
    return x, y, t, b, coef, out


def _forbid_two_sweeps(monkeypatch, module):
    def no_sweep(*args, **kwargs):
        raise AssertionError("the two-sweep path ran where the one-pass kernel should")

    monkeypatch.setattr(module, "_sweep", no_sweep)


def _assert_one_pass_matches_dense(module, n, ny, d, dtype, tol, device):
    x, y, t, b, coef, (total, rows, gx, gy, gtb) = _one_pass_case(module, n, ny, d, dtype, True, device)
    refs = [v.double().requires_grad_(True) for v in (x, y, t, b)]
    want_rows = dense_rows(*refs)
    (want_rows * coef).sum().backward()
    assert_close(rows.cpu(), want_rows.detach(), tol, "rows")
    assert_close(total.cpu(), (want_rows * coef).sum().detach(), tol, "total")
    for got, ref, name in ((gx, refs[0], "x"), (gy, refs[1], "y")):
        assert got.shape == ref.shape
        assert_close(got.cpu(), ref.grad, 5 * tol, f"d/d{name}")
    assert_close(gtb.cpu(), torch.stack([refs[2].grad, refs[3].grad]), 5 * tol, "d/dt, d/db")


@pytest.mark.parametrize("n,ny,d,dtype", ONE_PASS_CASES)
def test_triton_one_pass_against_the_dense_formula(triton_kernels, monkeypatch, n, ny, d, dtype):
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    _forbid_two_sweeps(monkeypatch, module)
    tol = {torch.float64: 1e-11, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    _assert_one_pass_matches_dense(module, n, ny, d, dtype, tol, device)


def test_triton_one_pass_on_older_tritons_blocks(triton_kernels, monkeypatch):
    # Under Triton 3.6 sm_90's 16-bit one pass runs on 64 x 32 tiles (its 128 x 128 spill),
    # float64 at d <= 32 on 16 x 16, d padded to 32: several row and column blocks, the
    # diagonal across them, tails, n_x != n_y.
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    _forbid_two_sweeps(monkeypatch, module)
    monkeypatch.setattr(module, "triton_before_newest", lambda: True)
    assert module.one_pass_config("bf16", 128, 90)["BLOCK_N"] == 32
    _assert_one_pass_matches_dense(module, 150, 97, 128, torch.bfloat16, 1e-2, device)
    _assert_one_pass_matches_dense(module, 45, 70, 20, torch.float16, 2e-3, device)
    assert module.one_pass_config("fp64", 12, 90)["BLOCK_D"] == 32
    _assert_one_pass_matches_dense(module, 37, 30, 12, torch.float64, 1e-11, device)


@pytest.mark.parametrize("precision,arch,older", [("tf32x3", 90, False), ("tf32x3", 80, False), ("tf32", 90, False),
                                                  ("tf32", 80, False), ("tf32x3", 90, True), ("tf32", 90, True)])
def test_triton_float32_one_pass_against_the_dense_formula(triton_kernels, monkeypatch, precision, arch, older):
    # float32 on mma.sync tiles (siglip.FLOAT32_ONE_PASS_BLOCKS, and Triton 3.6's own
    # where older), every width's blocks of the format and arch: 16- and 32-row tiles,
    # 16- and 32-column tiles, sm_90's TMA descriptors and sm_80's plain loads, sm_80's
    # 3xTF32 padding d <= 16 to 32.
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    _forbid_two_sweeps(monkeypatch, module)
    monkeypatch.setattr(module, "device_arch", lambda device: arch)
    monkeypatch.setattr(module, "_precision", lambda dtype: precision)
    monkeypatch.setattr(module, "triton_before_newest", lambda: older)
    monkeypatch.setattr(module, "kmajor_config", lambda *args: None)  # as past sm_90: no K-major kernel
    # The interpreter computes TF32 products in float32: a dropped 3xTF32 product would
    # still show at this tolerance only on a GPU, so this checks the kernel's indexing,
    # masks and sums.
    for n, ny, d in ((37, 50, 12), (50, 37, 24), (40, 45, 64), (35, 33, 128)):
        _assert_one_pass_matches_dense(module, n, ny, d, torch.float32, 2e-5, device)


# Past the one-chunk width (siglip.ONE_CHUNK_MAX_D: 128, float64 64) the one pass splits
# the gradients' features into slices of that width, a second grid axis: S over every
# chunk per slice, the losses and the weights' sum from slice 0, d/dt's sum in parts
# (siglip.SLICED_ONE_PASS_BLOCKS: every format and arch that has them).  Two and three
# slices (d = 150 in float64), the last partly padding; several row and column blocks
# (sm_90's 128 x 64 16-bit tiles against 66 columns, sm_80's 32 x 16, float32's and
# float64's 16- and 32-row ones).  Past six slices (3xTF32 on sm_90: two) S's other
# chunks take a loop at run time: 16-bit at d = 1100 (nine slices, the last partly
# padding) and 1536 (twelve), 3xTF32 at 300 (three); TF32 past nine, at 1200 (ten).
WIDE_ONE_PASS_CASES = [
    (torch.bfloat16, "ieee", 90, 70, 45, 130), (torch.bfloat16, "ieee", 80, 45, 70, 200),
    (torch.bfloat16, "ieee", 90, 40, 66, 256), (torch.float64, "ieee", 80, 50, 37, 100),
    (torch.float64, "ieee", 80, 37, 50, 150), (torch.float32, "tf32x3", 90, 45, 50, 200),
    (torch.float32, "tf32x3", 90, 50, 45, 256), (torch.float32, "tf32", 90, 37, 50, 130),
    (torch.float32, "tf32", 80, 50, 37, 256), (torch.bfloat16, "ieee", 90, 40, 33, 1100),
    (torch.bfloat16, "ieee", 80, 40, 33, 1536), (torch.float32, "tf32x3", 90, 40, 33, 300),
    (torch.float32, "tf32", 80, 40, 33, 1200),
]


WIDE_ONE_PASS_TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 1e-2}


def _as_if_on(monkeypatch, module, dtype, precision, arch):
    """The launcher as on `arch` with `precision` for float32, the two sweeps forbidden:
    the operand format."""
    _forbid_two_sweeps(monkeypatch, module)
    monkeypatch.setattr(module, "device_arch", lambda device: arch)
    if dtype == torch.float32:
        monkeypatch.setattr(module, "_precision", lambda dtype: precision)
    return module.operand_format(dtype, precision)


@pytest.mark.parametrize("dtype,precision,arch,n,ny,d", WIDE_ONE_PASS_CASES)
def test_triton_one_pass_past_one_chunk_against_the_dense_formula(triton_kernels, monkeypatch, dtype, precision,
                                                                   arch, n, ny, d):
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    fmt = _as_if_on(monkeypatch, module, dtype, precision, arch)
    assert d > module.ONE_CHUNK_MAX_D[fmt]
    # the runtime chunk loop exactly where the cases' comment says
    unrolled = {"tf32x3": 2, "tf32": 9}.get(fmt, 6)
    assert module.one_pass_config(fmt, d, arch)["CHUNK_LOOP"] is (d > unrolled * 128)
    _assert_one_pass_matches_dense(module, n, ny, d, dtype, WIDE_ONE_PASS_TOL[dtype], device)


# Triton 3.6's own slice blocks (siglip.SLICED_ONE_PASS_BLOCKS_OLDER_TRITON): sm_90 16-bit
# on sm_80's mma.sync tiles (32 x 16 unrolled, 32 x 32 in the chunk loop), sm_80 16-bit's
# loop on 16 x 32, 3xTF32 on sm_90 16 x 16 at two slices.
@pytest.mark.parametrize("dtype,precision,arch,n,ny,d", [
    (torch.bfloat16, "ieee", 90, 40, 33, 300), (torch.bfloat16, "ieee", 90, 40, 33, 1100),
    (torch.bfloat16, "ieee", 80, 40, 33, 1100), (torch.float32, "tf32x3", 90, 40, 33, 256),
])
def test_triton_one_pass_past_one_chunk_on_older_triton_blocks(triton_kernels, monkeypatch, dtype, precision, arch,
                                                               n, ny, d):
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    fmt = _as_if_on(monkeypatch, module, dtype, precision, arch)
    newest = module.one_pass_config(fmt, d, arch)
    monkeypatch.setattr(module, "triton_before_newest", lambda: True)
    assert module.one_pass_config(fmt, d, arch) != newest  # the older table's blocks run
    _assert_one_pass_matches_dense(module, n, ny, d, dtype, WIDE_ONE_PASS_TOL[dtype], device)


def test_triton_one_pass_without_the_gradient_of_x(triton_kernels):
    # LiT's case (x frozen): d/dy and the (t, b) sums only.
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    x, y, t, b, coef, (total, rows, gx, gy, gtb) = _one_pass_case(module, 150, 97, 24, torch.float64, False, device)
    refs = [v.double().requires_grad_(True) for v in (x, y, t, b)]
    (dense_rows(*refs) * coef).sum().backward()
    assert gx.numel() == 0
    assert_close(gy.cpu(), refs[1].grad, 1e-10, "d/dy")
    assert_close(gtb.cpu(), torch.stack([refs[2].grad, refs[3].grad]), 1e-10, "d/dt, d/db")


def test_triton_one_pass_at_zero_logits(triton_kernels):
    # t = b = 0: every e^-|l| = 1, so a 128-column tile's prod (1 + e) reaches 2^128 and
    # overflows float32 (the kernel then takes the tile's sum, 128 log 2, exactly enough).
    launcher, device = triton_kernels
    x, y = inputs(200, 16, torch.bfloat16, seed=3, ny=260)
    zero = torch.tensor(0.0)
    total, rows, gx, gy, gtb = launcher(x.to(device), y.to(device), zero, zero,
                                        torch.ones(200, dtype=torch.float64, device=device), True, True, True)
    assert torch.allclose(rows.cpu().double(), torch.full((200,), 260 * math.log(2), dtype=torch.float64), rtol=1e-6)
    assert torch.all(gx == 0) and torch.all(gy == 0)  # d/dx = t sum_j w_ij y_j: 0 at t = 0
    # d/db = sum_ij -z_ij sigmoid(0): 1/2 for each of the 260 - 1 negatives, -1/2 for the positive
    assert gtb[1].item() == pytest.approx(200 * (259 - 1) * 0.5, rel=1e-6)


def test_triton_deterministic_mode_takes_the_two_sweeps_bitwise_repeatable(triton_kernels, monkeypatch):
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module

    def no_one_pass(*args, **kwargs):
        raise AssertionError("the one-pass kernel (atomics) ran under torch's deterministic mode")

    monkeypatch.setattr(module, "_one_pass", no_one_pass)
    x, y = inputs(70, 20, torch.float64, seed=5, ny=45)
    coef = torch.rand(70, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    t, b = torch.tensor(4.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    args = [v.to(device) for v in (x, y, t, b, coef)]
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = launcher(*args, True, True, True)
        second = launcher(*args, True, True, True)
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    refs = [v.double().requires_grad_(True) for v in (x, y, t, b)]
    (dense_rows(*refs) * coef).sum().backward()
    assert_close(first[3].cpu(), refs[1].grad, 1e-10, "d/dy")
