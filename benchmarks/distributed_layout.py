"""Host-side cost of the global-batch layout at large world sizes (no processes needed).

    .venv/bin/python benchmarks/distributed_layout.py [--world 4096]

Times (median of 5) the previous per-rank offset loop ``[sum(rows[:s]) for s in range(W)]``
(O(W^2)) against ``Layout.build`` (O(W)), ``pair_rows`` (O(log N) per rank) and the padded
positions of every row (vectorized, O(N), cached per shard sizes), for unequal shards of 64-66 rows.
"""

import argparse
import statistics
import time

import torch

from pyhypersphere import _global_batch, distributed


def median_ms(fn, reps=5):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=4096)
    world = parser.parse_args().world
    rows = [64 + (s % 3) for s in range(world)]
    cpu = torch.device("cpu")
    build = lambda: _global_batch.Layout.build(0, world, rows, 128, 2, torch.float32, cpu, cpu)  # noqa: E731
    layout = build()
    print(f"W = {world}, N = {layout.total}:")
    print(f"  previous offset loop  {median_ms(lambda: [sum(rows[:s]) for s in range(world)]):8.2f} ms")
    print(f"  Layout.build          {median_ms(build):8.2f} ms")
    print(f"  pair_rows (one rank)  {median_ms(lambda: distributed.pair_rows(layout.total, world, world // 2)):8.3f} ms")
    positions = lambda: layout.padded_positions(layout.padded_rows(4))  # noqa: E731
    _global_batch._padded_positions.cache_clear()
    print(f"  padded positions      {median_ms(positions, reps=1):8.2f} ms first, "
          f"{median_ms(positions):.3f} ms for the same shard sizes again (cached)")


if __name__ == "__main__":
    main()
