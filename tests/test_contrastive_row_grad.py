"""The contrastive_lse_row_grad operator (csrc/ops.h): a's lse and o_i = sum_j p_ij b_j from
one pass, its autograd (a's gradient scale g_i o_i, b's by contrastive_lse_backward), and
info_nce_loss running it whenever the queries need their gradient: MoCo's whole loss in
one pass over the pairs (2 GEMMs, 1 exp per pair) where contrastive_lse and its backward
took two (3 GEMMs, 2 exps).

Every implementation (the CPU kernel, the Triton launcher under the interpreter: tests/
implementations.py) against a dense float64 formula written here; which passes a loss
runs, recorded at the dispatcher (the operators) and at the Triton launches (the kernels).
"""

import math

import pytest
import torch

from dense_contrastive import dense_info_nce, dense_info_nce_rows, dense_reduce, value_and_grads
from helpers import RecordedOps
from implementations import (
    BACKENDS, CONTRASTIVE_GRAD_TOL, CONTRASTIVE_TOL, accumulate_dtype, backend_device, dispatching_to, implementations,
    rows,
)
from pyhypersphere import _C, gpu_backend, info_nce_loss
from pyhypersphere.ops.contrastive import contrastive_lse_row_grad

ops = torch.ops.pyhypersphere
F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ROW_GRAD = implementations("contrastive_lse_row_grad")


def dense_row_grad(a, b, scale, skip_positives):
    """(lse_i, o_i = sum_j softmax_j(s_ij) b_j) in float64 from the explicit logit matrix,
    the positives (a_i, b_i) left out with skip_positives; o_i = 0 for a row without partners."""
    a, b = a.cpu().double(), b.cpu().double()
    logits = scale * a @ b.T
    if skip_positives:
        i = torch.arange(min(a.shape[0], b.shape[0]))
        logits[i, i] = -math.inf
    lse = logits.logsumexp(1)
    p = torch.exp(logits - torch.where(torch.isneginf(lse), 0.0, lse)[:, None])
    return lse, p @ b


CASES = [  # na, nb, d, scale, skip, dtype
    (1, 1, 1, 2.0, False, F64),
    (1, 1, 3, 2.0, True, F64),  # no partner: lse -inf, o 0
    (3, 1, 4, 2.0, True, F32),  # rows past b's without a positive; row 0 without partners
    (130, 300, 8, 1 / 0.07, False, F32),  # MoCo: two row blocks, a queue not a multiple of the blocks
    (130, 300, 8, 1 / 0.07, True, F32),  # in-batch keys: the positives' span
    (20, 150, 100, 3.0, True, F64),  # chunked d (64-wide for float64), a tail
    (45, 40, 33, 14.3, True, F32),  # more rows than columns
    (65, 65, 4, 2.0, True, F64),  # a last column block of one column, row 64's positive (CPU: 64-wide blocks)
    (40, 150, 16, 60.0, False, F32),  # 2 scale > 80: no static shift (running max)
    (33, 200, 64, 10.0, False, BF16),
    (33, 200, 64, 10.0, True, F16),  # fp16's row gradient under the online max
]


@pytest.mark.parametrize("impl", ROW_GRAD)
@pytest.mark.parametrize("na,nb,d,scale,skip,dtype", CASES)
def test_values_against_float64(impl, na, nb, d, scale, skip, dtype):
    a, b = rows(na, d, dtype, 1), rows(nb, d, dtype, 2)
    lse, o = impl(*impl.on(a, b), scale, skip)
    acc = accumulate_dtype(dtype)
    assert lse.shape == (na,) and o.shape == (na, d) and lse.dtype == o.dtype == acc
    want_lse, want_o = dense_row_grad(a, b, scale, skip)
    tol = CONTRASTIVE_TOL[dtype]
    torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=tol, atol=tol * scale)
    # o is a convex combination of unit rows: an absolute tolerance.
    torch.testing.assert_close(o.cpu().double(), want_o, rtol=0, atol=CONTRASTIVE_GRAD_TOL[dtype])


@pytest.mark.parametrize("impl", ROW_GRAD)
def test_large_logits_are_stable(impl):
    # Unnormalized rows: logits near 900, where a plain exp overflows float32.
    a, b = rows(40, 6, F32, 5, scale=9.0), rows(60, 6, F32, 6, scale=9.0)
    assert (12.0 * a @ b.T).max() > 900
    lse, o = impl(*impl.on(a, b), 12.0, True)
    want_lse, want_o = dense_row_grad(a, b, 12.0, True)
    torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(o.cpu().double(), want_o, rtol=0, atol=1e-3 * 9.0)


@pytest.mark.parametrize("impl", ROW_GRAD)
@pytest.mark.parametrize("where", ["a", "b"])
def test_nonfinite_inputs_give_nan(impl, where):
    a, b = rows(10, 4, F32, 33), rows(12, 4, F32, 34)
    (a if where == "a" else b)[3, 1] = math.nan if where == "a" else math.inf
    lse, o = impl(*impl.on(a, b), 1.0, False)
    assert torch.isnan(lse).all() and torch.isnan(o).all()


def _zeros(*shape, dtype=F32):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize("impl", ROW_GRAD)
@pytest.mark.parametrize("a,b,scale,match", [
    (_zeros(5), _zeros(4, 5), 1.0, "contrastive_lse_row_grad: a must be a 2-D tensor"),
    (_zeros(4, 3), _zeros(4, 2), 1.0, "contrastive_lse_row_grad: b must have the same feature dimension"),
    (_zeros(4, 3), _zeros(4, 3, dtype=F64), 1.0, "contrastive_lse_row_grad: b must have the same dtype"),
    (_zeros(4, 3), _zeros(4, 3), 0.0, "contrastive_lse_row_grad: scale must be a positive finite"),
    (_zeros(4, 3), _zeros(0, 3), 1.0, "contrastive_lse_row_grad: b must have at least 1 row"),
])  # fmt: skip
def test_bad_input_is_named(impl, a, b, scale, match):
    with pytest.raises(ValueError, match=match):
        impl(*impl.on(a, b), scale, False)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_cpu_two_pass_fallback_matches_the_strips(monkeypatch, dtype):
    # A queue too long for a strip takes contrastive_lse's two passes.
    a, b = rows(300, 9, dtype, 15), rows(500, 9, dtype, 16)
    strips = ops.contrastive_lse_row_grad(a, b, 5.0, True)
    monkeypatch.setenv("PYHYPERSPHERE_STRIP_BUDGET_BYTES", "0")
    assert _C._mean_lse_strip_rows(300, 500, a.element_size()) == 0
    fallback = ops.contrastive_lse_row_grad(a, b, 5.0, True)
    want = dense_row_grad(a, b, 5.0, True)
    tol = 1e-11 if dtype == F64 else 2e-5
    for got in (strips, fallback):
        for x, w in zip(got, want):
            torch.testing.assert_close(x.double(), w, rtol=tol, atol=tol * 5.0)


def test_cpu_bitwise_reproducible_across_threads():
    a, b = rows(300, 24, F32, 13), rows(1300, 24, F32, 14)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (threads, 1, 3):
            torch.set_num_threads(n)
            results.append(ops.contrastive_lse_row_grad(a, b, 10.0, False))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(u, v) for u, v in zip(results[0], other))


# ---------------------------------------------------------------- autograd


def dense_lse_grads(a, b, scale, skip, g):
    """d/da and d/db of sum_i g_i lse_i in float64 by autograd on the logit matrix."""
    ar, br = (t.detach().cpu().double().requires_grad_() for t in (a, b))
    logits = scale * ar @ br.T
    if skip:
        i = torch.arange(min(ar.shape[0], br.shape[0]))
        logits = logits.index_put((i, i), torch.tensor(-math.inf, dtype=F64))
    (g.cpu().double() * logits.logsumexp(1)).sum().backward()
    return ar.grad, br.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b_grad", [False, True])
@pytest.mark.parametrize("skip", [False, True])
def test_gradients_against_float64(backend, b_grad, skip):
    # a's from the forward's o (O(N d)); b's, when b requires grad, from the gradient pass.
    device = backend_device(backend)
    a, b = rows(37, 12, F64, 21).to(device).requires_grad_(), rows(50, 12, F64, 22).to(device).requires_grad_(b_grad)
    g = torch.rand(37, generator=torch.Generator().manual_seed(3), dtype=F64).to(device)
    with dispatching_to(backend):
        lse, o = contrastive_lse_row_grad(a, b, 4.0, skip_positives=skip)
        assert not o.requires_grad
        got = torch.autograd.grad((g * lse).sum(), (a, b) if b_grad else (a,))
    want = dense_lse_grads(a, b, 4.0, skip, g)
    for x, w in zip(got, want):
        torch.testing.assert_close(x.cpu(), w, rtol=1e-10, atol=1e-12)


def test_float32_inputs_get_float32_gradients():
    a, b = rows(20, 5, F32, 23).requires_grad_(), rows(30, 5, F32, 24).requires_grad_()
    lse, _ = contrastive_lse_row_grad(a, b, 3.0)
    ga, gb = torch.autograd.grad(lse.sum(), (a, b))
    assert ga.dtype == gb.dtype == F32
    want = dense_lse_grads(a, b, 3.0, False, torch.ones(20))
    for x, w in zip((ga, gb), want):
        torch.testing.assert_close(x.double(), w, rtol=0, atol=3e-5 * w.abs().max())


def test_second_derivatives_match_float64():
    a, b = rows(10, 3, F64, 25).requires_grad_(), rows(12, 3, F64, 26).requires_grad_()
    lse, _ = contrastive_lse_row_grad(a, b, 2.0, skip_positives=True)
    ga, gb = torch.autograd.grad(lse.sum(), (a, b), create_graph=True)
    got = torch.autograd.grad(ga.pow(2).sum() + gb.sum(), (a, b))
    ar, br = (t.detach().clone().requires_grad_() for t in (a, b))
    logits = (2.0 * ar @ br.T).index_put((torch.arange(10), torch.arange(10)), torch.tensor(-math.inf, dtype=F64))
    wa, wb = torch.autograd.grad(logits.logsumexp(1).sum(), (ar, br), create_graph=True)
    want = torch.autograd.grad(wa.pow(2).sum() + wb.sum(), (ar, br))
    for x, w in zip(got, want):
        torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    device = backend_device(backend)
    a, b = (t.to(device) for t in (rows(9, 4, F64, 27), rows(11, 4, F64, 28)))
    with dispatching_to(backend):
        for args in [
            (a, b, 2.0),
            (a.clone().requires_grad_(), b, 1.5, True),
            (a.clone().requires_grad_(), b.clone().requires_grad_(), 1.5, False),
            (a.float(), b.float(), 2.0, True),
        ]:
            torch.library.opcheck(ops.contrastive_lse_row_grad.default, args)


def test_registered_on_every_backend():
    assert gpu_backend.TABLE["contrastive_lse_row_grad"]["cuda"][0] in ("triton", "none")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_lse_row_grad", "CPU")


# ---------------------------------------------------------------- info_nce_loss's passes


def passes(fn, *leaves):
    with RecordedOps() as seen:
        out = fn()
        if leaves:
            torch.autograd.grad(out, leaves)
    return seen.names


MOCO_CASES = [  # in_batch, options
    (False, {}),  # MoCo v1/v2
    (False, {"reduction": "none"}),
    (False, {"decoupled": True, "weight": True}),
    (True, {"reduction": "sum"}),  # momentum keys in-batch and a queue, per-row options
    (True, {"decoupled": True}),
]


@pytest.mark.parametrize("in_batch,options", MOCO_CASES)
def test_moco_runs_one_pass_over_the_pairs(in_batch, options):
    # Keys and queue from the momentum encoder: the loss and q's gradient from the one
    # forward pass; no contrastive_lse, no contrastive_lse_backward.
    q = rows(20, 6, F64, 29).requires_grad_()
    k, queue = rows(20, 6, F64, 30), rows(45, 6, F64, 31)
    kw = dict(options, weight=torch.rand(20, dtype=F64)) if options.get("weight") else dict(options)

    def loss(q):
        return info_nce_loss(q, k, 0.1, queue=queue, in_batch=in_batch, **kw).sum()

    assert passes(lambda: loss(q), q) == ["contrastive_lse_row_grad"]
    got, (got_q,) = value_and_grads(loss, q)
    want, (want_q,) = value_and_grads(
        lambda q: dense_reduce(dense_info_nce_rows(q, k, 0.1, queue, in_batch, kw.get("decoupled", False)),
                               kw.get("reduction", "mean"), kw.get("weight")).sum(), q)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_q, want_q, rtol=1e-10, atol=1e-12)


def test_passes_with_gradients_to_the_keys_and_without_any():
    q, k, queue = (rows(20, 6, F64, s) for s in (32, 33, 34))
    q.requires_grad_()
    queue.requires_grad_()

    def moco():
        return info_nce_loss(q, k, 0.1, queue=queue, in_batch=False)

    # A queue that learns: its gradient by the gradient pass, for it alone.
    assert passes(moco, q, queue) == ["contrastive_lse_row_grad", "contrastive_lse_backward"]
    with torch.no_grad():  # evaluation: the lse alone
        assert passes(moco) == ["contrastive_lse"]
    # The in-batch mean keeps its own fused op.
    assert passes(lambda: info_nce_loss(q, k, 0.1, queue=queue.detach()), q) == ["contrastive_mean_lse"]


def test_moco_tau_tensor_gets_its_gradient_and_q_its_own():
    q, k, queue = rows(25, 5, F64, 35), rows(25, 5, F64, 36), rows(40, 5, F64, 37)
    tau = torch.tensor(0.2, dtype=F64)

    def fused(q, tau):
        return info_nce_loss(q, k, tau, queue=queue, in_batch=False, reduction="sum")

    def dense(q, tau):
        return dense_reduce(dense_info_nce_rows(q, k, tau, queue, in_batch=False), "sum")

    got, got_grads = value_and_grads(fused, q, tau)
    want, want_grads = value_and_grads(dense, q, tau)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for x, w in zip(got_grads, want_grads):
        torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-12)


def test_moco_under_torch_func_and_compile():
    q, k, queue = rows(30, 6, F64, 38), rows(30, 6, F64, 39), rows(50, 6, F64, 40)

    def fused(q):
        return info_nce_loss(q, k, 0.1, queue=queue, in_batch=False)

    want, (want_q,) = value_and_grads(lambda q: dense_info_nce(q, k, 0.1, queue=queue, in_batch=False), q)
    torch.testing.assert_close(torch.func.grad(fused)(q), want_q, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    leaf = q.clone().requires_grad_()
    got = compiled(leaf)
    (got_q,) = torch.autograd.grad(got, leaf)
    torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_q, want_q, rtol=1e-10, atol=1e-12)


def test_moco_under_autocast_gives_a_float32_loss():
    q, k, queue = rows(30, 16, F32, 41).requires_grad_(), rows(30, 16, F32, 42), rows(50, 16, F32, 43)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = info_nce_loss(q, k, 0.1, queue=queue, in_batch=False)
    assert loss.dtype == F32
    (got_q,) = torch.autograd.grad(loss, q)
    want, (want_q,) = value_and_grads(
        lambda q: dense_info_nce(q, k.double(), 0.1, queue=queue.double(), in_batch=False), q)
    torch.testing.assert_close(loss.double(), want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got_q.double(), want_q, rtol=0, atol=3e-5 * want_q.abs().max())


# ---------------------------------------------------------------- the Triton launches


def test_moco_launches_one_triton_kernel_with_the_row_gradient(monkeypatch):
    pytest.importorskip("triton")
    if "triton-interpreter" not in BACKENDS:
        pytest.skip("needs TRITON_INTERPRET=1")
    from pyhypersphere.triton_kernels import contrastive as tc
    from pyhypersphere.triton_kernels import loop_gate

    launches = []

    class Recording:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(self.name + ("_grad" if kwargs.get("ROW_GRAD") else ""))
                return self.kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(tc, "_lse_rows_kernel", Recording("lse", tc._lse_rows_kernel))
    monkeypatch.setattr(tc, "_grad_rows_kernel", Recording("grad", tc._grad_rows_kernel))
    q = rows(20, 8, F32, 44).requires_grad_()
    k, queue = rows(20, 8, F32, 45), rows(150, 8, F32, 46)
    with dispatching_to("triton-interpreter"):
        loss = info_nce_loss(q, k, 0.1, queue=queue, in_batch=False)
        (got_q,) = torch.autograd.grad(loss, q)
    # The one pass loop_gate counts for MoCo (compile_check's loss line, its minimum 2/1).
    assert launches == ["lse_grad"] == [kernel for kernel, _ in loop_gate.LOSS_MIN_WORK["moco_info_nce"][1]]
    want, (want_q,) = value_and_grads(
        lambda q: dense_info_nce(q, k.double(), 0.1, queue=queue.double(), in_batch=False), q)
    torch.testing.assert_close(loss.double(), want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got_q.double(), want_q, rtol=0, atol=3e-5 * want_q.abs().max())
