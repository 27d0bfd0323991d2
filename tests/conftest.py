import importlib
import os
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def pytest_collection_modifyitems(config, items):
    # `cuda` tests need a GPU; on a CPU-only machine they are reported as skipped, never as passed.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def bench_module():
    """importlib.import_module with bench/ on sys.path for the test: bench/'s scripts (run, recheck)
    import their siblings by plain name."""
    sys.path.insert(0, BENCH)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(BENCH)
