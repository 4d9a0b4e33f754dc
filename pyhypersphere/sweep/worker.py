"""One run of a sweep in its own process: ``python -m pyhypersphere.sweep.worker RUN_DIR``.

Reads ``RUN_DIR/sweep_run.json`` (a TrainConfig), trains into RUN_DIR and exits 0; any error
prints its traceback to stderr (the runner keeps it in ``RUN_DIR/log.txt``) and exits 1.
A process per run keeps one run's crash, memory and threads away from the others.
"""

import json
import sys
from pathlib import Path

from pyhypersphere.train import TrainConfig, train

RUN_CONFIG = "sweep_run.json"  # the trainer writes its own config.json


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pyhypersphere.sweep.worker RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    config = TrainConfig.from_dict(json.loads((run_dir / RUN_CONFIG).read_text()))
    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
