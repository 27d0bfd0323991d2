import pytest
import torch


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
