"""pytest-benchmark options for benchmarks/: large sizes run only with --bench-large."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-large", action="store_true", default=False,
                     help="also run the cases marked `large` (N=16384: minutes on a small CPU)")  # fmt: skip


def pytest_configure(config):
    config.addinivalue_line("markers", "large: a long benchmark case, run only with --bench-large")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bench-large"):
        return
    skip_large = pytest.mark.skip(reason="large size: run with --bench-large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip_large)
