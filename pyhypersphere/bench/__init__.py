"""Benchmarks of the fused uniformity loss against its peers and a GEMM roofline.

`pyhypersphere bench` (cli.py) sweeps sizes, dtypes, devices and implementations
(impls.py), measures each case in a fresh worker process (worker.py) and writes
results.json, results.csv, plots and a table (report.py).
"""
