"""pytest-benchmark configuration for rnnfast's suites: the --device option and machine info
(torch version, device name, thread count, git commit) stored in every results JSON."""
import os
import re
import subprocess

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="device to benchmark on: cpu (default), cuda or cuda:N")


def _resolve_device(name):
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name}: CUDA is not available in this torch "
                                f"({torch.__version__})")
    if dev.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device must be cpu or cuda[:N], got {name!r}")
    return dev


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def device_name(dev):
    dev = torch.device(dev)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def device_slug(dev):
    """A file-name-safe id of the device: the GPU name, or cpu-<model>-<threads>c."""
    dev = torch.device(dev)
    name = device_name(dev)
    if dev.type == "cpu":
        name = f"cpu-{name}-{torch.get_num_threads()}c"
    name = re.sub(r"\((r|tm)\)|cpu @.*?(?=-\d+c$)", "", name, flags=re.I)
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def git_commit():
    """HEAD (+ '-dirty'), or RNNFAST_GIT_COMMIT where the tree is a copy without .git (a GPU machine)."""
    if os.environ.get("RNNFAST_GIT_COMMIT"):
        return os.environ["RNNFAST_GIT_COMMIT"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pytest_configure(config):
    _resolve_device(config.getoption("--device"))  # a bad --device fails before any test runs


@pytest.fixture
def threads(request):
    """torch's intra-op thread count for one benchmark (parametrize it indirectly: the value is the
    count); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def device(request):
    return _resolve_device(request.config.getoption("--device"))


def pytest_benchmark_update_machine_info(config, machine_info):
    dev = _resolve_device(config.getoption("--device"))
    machine_info["torch_version"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["device"] = str(dev)
    machine_info["device_name"] = device_name(dev)
    machine_info["device_slug"] = device_slug(dev)
    machine_info["cpu_model"] = cpu_model()
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["git_commit"] = git_commit()
    if dev.type == "cuda":  # the GEMM precision each side ran with (cuDNN's TF32 is on by default)
        machine_info["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        machine_info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    try:
        import rnnfast
        machine_info["rnnfast_version"] = rnnfast.__version__
    except ImportError:
        pass
