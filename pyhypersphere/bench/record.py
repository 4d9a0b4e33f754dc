"""One measured case as a flat record: the fields of results.json and results.csv."""

from dataclasses import asdict, dataclass
from typing import Optional

# status values
OK = "ok"
OOM = "oom"
UNSUPPORTED = "unsupported"
TIMEOUT = "timeout"
ERROR = "error"
SKIPPED = "skipped"  # a smaller size of the same series already ran out of memory or time

FIELDS = (
    "impl", "n", "d", "dtype", "device", "status", "message",
    "fwd_ms", "fwdbwd_ms", "peak_mem_bytes", "fwd_peak_mem_bytes",
    "pairs", "fwd_pairs_per_s", "fwdbwd_pairs_per_s",
    "fwd_flops", "fwdbwd_flops", "mm_fwd_ms", "mm_fwdbwd_ms",
    "fwd_roofline_frac", "fwdbwd_roofline_frac",
    "fwd_status", "fwdbwd_status", "fwd_samples", "fwdbwd_samples",
    "loss", "t", "threads", "torch_version", "memory_method", "isolation",
    "loss_name", "tau",
)  # fmt: skip


@dataclass(frozen=True)
class CaseSpec:
    """What one worker measures, and how."""

    impl: str
    n: int
    d: int
    dtype: str
    device: str
    t: float = 2.0
    warmup: int = 1
    repeat: int = 5
    max_seconds: float = 10.0  # per phase, after which fewer than `repeat` samples are kept
    seed: int = 0
    host_mem_cap_bytes: Optional[int] = None  # CPU only: more raises out-of-memory
    threads: Optional[int] = None
    loss: str = "uniform"  # or a contrastive loss (bench/contrastive.py)
    tau: Optional[float] = None  # contrastive temperature (None: the loss's default)

    def as_dict(self) -> dict:
        return asdict(self)

    def series(self) -> tuple:
        """The cases that differ only in n."""
        return (self.loss, self.impl, self.d, self.dtype, self.device)


def new_record(spec: CaseSpec, status: str = OK, message: str = "") -> dict:
    record = dict.fromkeys(FIELDS)
    record.update(impl=spec.impl, n=spec.n, d=spec.d, dtype=spec.dtype, device=spec.device, t=spec.t)
    record.update(loss_name=spec.loss, tau=spec.tau)
    record.update(status=status, message=message)
    return record
