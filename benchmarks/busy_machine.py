"""The fused losses next to the reference formula on a busy machine (issue 26, item 8).

    python benchmarks/busy_machine.py [--competitors 2] [--threads 2] [--n 16,64,256,1024,4096]

Starts `--competitors` processes that keep torch matmuls running on the same cores (as data
loader workers or another job do), then times forward+backward of uniform_loss, the
reference formula and clip_loss side by side, medians over the repeats, and stops the
competitors.  Prints one line per N.  The machine's own load adds to the competitors':
read the ratios, not the absolute times.
"""

import argparse
import statistics
import subprocess
import sys
import time

import torch

import pyhypersphere as ph
from pyhypersphere.reference import reference_uniform_loss

COMPETITOR = "import torch\nx = torch.randn(512, 512)\nwhile True:\n    x @ x\n"


def fwd_bwd_ms(loss_fn, x, reps):
    times = []
    for _ in range(reps):
        z = x.clone().requires_grad_()
        start = time.perf_counter()
        loss_fn(z).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--competitors", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--n", default="16,64,256,1024,4096")
    parser.add_argument("--d", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    competitors = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(args.competitors)]
    try:
        time.sleep(2)  # the competitors' imports done
        for n in (int(v) for v in args.n.split(",")):
            x = torch.nn.functional.normalize(torch.randn(n, args.d), dim=1)
            reps = 30 if n <= 1024 else 5
            fused = fwd_bwd_ms(lambda z: ph.uniform_loss(z), x, reps)
            reference = fwd_bwd_ms(reference_uniform_loss, x, reps)
            clip = fwd_bwd_ms(lambda z: ph.clip_loss(z, z.flip(0)), x, reps)
            print(f"N={n} threads={args.threads} competitors={args.competitors}: uniform fused {fused:.2f} ms, "
                  f"reference {reference:.2f} ms ({reference / fused:.1f}x), clip fused {clip:.2f} ms", flush=True)
    finally:
        for process in competitors:
            process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
