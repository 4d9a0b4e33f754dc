"""One run of a sweep in its own process: ``python -m pyhypersphere.sweep.worker RUN_DIR``.

Reads ``RUN_DIR/sweep_run.json`` (a TrainConfig), trains into RUN_DIR and exits as
``pyhypersphere train`` does (0 done; errors in one line on stderr, which the runner keeps
in ``RUN_DIR/log.txt``).  A process per run keeps one run's crash, memory and threads away
from the others.  The worker follows its driver: on Linux it asks the kernel for SIGTERM
when the driver dies (even by kill -9), and stops at once if the driver is already gone,
so no orphan keeps training (the run folder's lock would refuse a second trainer anyway).
"""

import json
import os
import signal
import sys
from pathlib import Path

from pyhypersphere.train import TrainConfig
from pyhypersphere.train.cli import train_reporting

RUN_CONFIG = "sweep_run.json"  # the trainer writes its own config.json
DRIVER_ENV = "PYHYPERSPHERE_SWEEP_DRIVER"
PR_SET_PDEATHSIG = 1


def follow_driver() -> bool:
    """SIGTERM to this process when the driver named in DRIVER_ENV dies; False if it is
    already gone."""
    driver = os.environ.get(DRIVER_ENV)
    if not driver:
        return True
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    return os.getppid() == int(driver)  # checked after prctl: a driver that died before it is seen here


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pyhypersphere.sweep.worker RUN_DIR", file=sys.stderr)
        return 2
    if not follow_driver():
        print("sweep worker: the sweep driver is gone; not starting", file=sys.stderr)
        return 128 + signal.SIGTERM
    run_dir = Path(argv[0])
    config = TrainConfig.from_dict(json.loads((run_dir / RUN_CONFIG).read_text()))
    code, _ = train_reporting(config, prog="sweep worker")
    return code


if __name__ == "__main__":
    sys.exit(main())
