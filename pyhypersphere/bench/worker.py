"""Measures one case, (impl, n, d, dtype, device), into a record.

`python -m pyhypersphere.bench.worker SPEC_JSON OUT_JSON` does it in a fresh process,
which is how a sweep keeps one implementation's memory, caches and threads from
touching the next one's figures, and a crash or out-of-memory from ending the sweep.
"""

import json
import sys
from typing import Optional

import torch

from . import contrastive, memory, roofline
from .impls import IMPLS, ROOFLINE
from .record import ERROR, OK, OOM, SKIPPED, UNSUPPORTED, CaseSpec, new_record
from .timing import median_time

# CPU runs first touch every library (thread pools, KeOps' compiled modules) at this
# size, before the address-space cap is set.
WARM_UP_N = 64

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc")
_UNSUPPORTED_MESSAGES = ("not implemented", "not supported", "does not support", "unsupported")


def classify(exc: BaseException) -> str:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return OOM
    text = str(exc).lower()
    if any(m in text for m in _OOM_MESSAGES):
        return OOM
    if isinstance(exc, NotImplementedError) or any(m in text for m in _UNSUPPORTED_MESSAGES):
        return UNSUPPORTED
    return ERROR


def describe(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


def _is_contrastive(spec: CaseSpec) -> bool:
    return spec.loss != contrastive.UNIFORM


def unsupported_reason(spec: CaseSpec) -> Optional[str]:
    """Why the case cannot run at all here, known before running it; None if it may."""
    if spec.loss not in contrastive.LOSSES:
        return f"unknown loss {spec.loss!r}; expected one of {', '.join(contrastive.LOSSES)}"
    impls = contrastive.CONTRASTIVE_IMPLS if _is_contrastive(spec) else IMPLS
    if spec.impl not in impls and (spec.impl != ROOFLINE or _is_contrastive(spec)):
        return f"unknown implementation {spec.impl!r} for loss {spec.loss}; expected one of {', '.join(impls)}"
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        return f"dtype {spec.dtype!r} is not a torch floating-point dtype"
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    if device.type not in ("cpu", "cuda"):
        return f"device {spec.device!r}: only cpu and cuda are benchmarked"
    if _is_contrastive(spec):
        return impls[spec.impl].unsupported(spec.loss, device, dtype)
    if spec.impl == ROOFLINE:
        return None
    return IMPLS[spec.impl].unsupported(device, dtype)


def unit_rows(n: int, d: int, dtype, device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).to(device=device, dtype=dtype)


def _loss_phases(spec: CaseSpec, n: int, dtype, device):
    """(phase, callable, flop-time scale) for a loss implementation at size n."""
    loss_fn = IMPLS[spec.impl].build(n, device, dtype, spec.t)
    x = unit_rows(n, spec.d, dtype, device, spec.seed)
    x_grad = x.clone().requires_grad_(True)

    def forward():
        with torch.no_grad():
            return loss_fn(x)

    def forward_backward():
        loss = loss_fn(x_grad)
        loss.backward()
        x_grad.grad = None
        return loss

    return [("fwd", forward, 1.0), ("fwdbwd", forward_backward, 1.0)]


def _contrastive_phases(spec: CaseSpec, n: int, dtype, device):
    """As _loss_phases, for a loss of two inputs (both differentiated)."""
    loss_fn = contrastive.CONTRASTIVE_IMPLS[spec.impl].build(spec.loss, contrastive.tau_for(spec.loss, spec.tau))
    x = unit_rows(n, spec.d, dtype, device, spec.seed)
    y = unit_rows(n, spec.d, dtype, device, spec.seed + 1)
    x_grad, y_grad = x.clone().requires_grad_(True), y.clone().requires_grad_(True)

    def forward():
        with torch.no_grad():
            return loss_fn(x, y)

    def forward_backward():
        loss = loss_fn(x_grad, y_grad)
        loss.backward()
        x_grad.grad = y_grad.grad = None
        return loss

    return [("fwd", forward, 1.0), ("fwdbwd", forward_backward, 1.0)]


def _roofline_phases(spec: CaseSpec, n: int, dtype, device):
    a = unit_rows(n, spec.d, dtype, device, spec.seed)
    return [
        (
            phase,
            roofline.blocked_mm(a, roofline.mm_columns(phase, n), spec.seed + 1),
            roofline.mm_scale(phase, n, spec.d),
        )
        for phase in roofline.PHASES
    ]


def phases(spec: CaseSpec, n: Optional[int] = None):
    """[(phase, callable, factor turning its time into the phase's time)] for spec at size n
    (default spec.n).  Inputs and per-size set-up are built here, outside any timing."""
    n = spec.n if n is None else n
    device, dtype = torch.device(spec.device), getattr(torch, spec.dtype)
    if _is_contrastive(spec):
        return _contrastive_phases(spec, n, dtype, device)
    if spec.impl == ROOFLINE:
        return _roofline_phases(spec, n, dtype, device)
    return _loss_phases(spec, n, dtype, device)


def measure(spec: CaseSpec, *, isolation: str = "process") -> dict:
    reason = unsupported_reason(spec)
    if reason is not None:
        return new_record(spec, UNSUPPORTED, reason)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    record = new_record(spec)
    n, d = spec.n, spec.d
    record.update(
        pairs=roofline.pairs(n), threads=torch.get_num_threads(), torch_version=torch.__version__,
        isolation=isolation, fwd_flops=roofline.flops("fwd", n, d), fwdbwd_flops=roofline.flops("fwdbwd", n, d),
    )  # fmt: skip
    if _is_contrastive(spec):  # no roofline model for these: the pairs are the logits
        record.update(pairs=contrastive.logits(spec.loss, n), fwd_flops=None, fwdbwd_flops=None)
        record["tau"] = contrastive.tau_for(spec.loss, spec.tau)
    record["memory_method"] = (
        "cuda-allocator-peak"
        if device.type == "cuda"
        else ("rss-hwm-growth" if memory.cpu_method_available() else None)
    )

    try:
        if device.type == "cpu":
            for _phase, fn, _scale in phases(spec, min(n, WARM_UP_N)):
                fn()
            if spec.host_mem_cap_bytes:
                memory.cap_address_space(spec.host_mem_cap_bytes)
        timed_phases = phases(spec)
    except Exception as exc:  # set-up failed (e.g. the input itself does not fit)
        record.update(status=classify(exc), message=describe(exc))
        return record

    failed = None
    for phase, fn, scale in timed_phases:
        if failed is not None:
            record[f"{phase}_status"] = SKIPPED
            continue
        try:
            timing = median_time(fn, device, warmup=spec.warmup, repeat=spec.repeat, max_seconds=spec.max_seconds)
            ms = timing.median_ms * scale
            record[f"{phase}_ms"] = ms
            record[f"{phase}_samples"] = timing.samples
            record[f"{phase}_pairs_per_s"] = record["pairs"] / (ms / 1e3) if ms > 0 else None
            peak = memory.peak_extra_bytes(fn, device)
            record["peak_mem_bytes" if phase == "fwdbwd" else "fwd_peak_mem_bytes"] = peak
            if phase == "fwd" and spec.impl != ROOFLINE:
                with torch.no_grad():
                    record["loss"] = float(fn())
            record[f"{phase}_status"] = OK
        except Exception as exc:
            failed = classify(exc)
            record[f"{phase}_status"] = failed
            record.update(status=failed, message=f"{phase}: {describe(exc)}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return record


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m pyhypersphere.bench.worker SPEC_JSON OUT_JSON", file=sys.stderr)
        return 2
    spec = CaseSpec(**json.loads(argv[0]))
    try:
        record = measure(spec)
    except Exception as exc:  # never leave the sweep without a record
        record = new_record(spec, ERROR, describe(exc))
    with open(argv[1], "w") as f:
        json.dump(record, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
