"""Build of record for rnnfast._C (DESIGN.md §5).

    pip install --no-build-isolation -e .

Sources are discovered, not listed: csrc/*.cpp and csrc/cpu/*.cpp always; csrc/cuda/*.cu and
csrc/kernels/*.cu only in a CUDA build. While csrc/ holds no source the package installs pure.

A CUDA build happens when torch was built with CUDA (torch.version.cuda) and nvcc is found
(CUDA_HOME); RNNFAST_CUDA=0 forces a CPU build, RNNFAST_CUDA=1 demands a CUDA build.
TORCH_CUDA_ARCH_LIST is honoured; without it and without a visible GPU we build for 8.0 and 9.0.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    found = []
    for pattern in patterns:
        found += glob.glob(os.path.join(ROOT, pattern))
    return sorted(os.path.relpath(p, ROOT) for p in found)


def _want_cuda(torch, cuda_home):
    flag = os.environ.get("RNNFAST_CUDA")
    if flag is not None and flag not in ("0", "1"):
        raise SystemExit(f"RNNFAST_CUDA must be 0 or 1, got {flag!r}")
    possible = bool(torch.version.cuda) and cuda_home is not None
    if flag == "1" and not possible:
        raise SystemExit(
            "RNNFAST_CUDA=1 but a CUDA build is impossible: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cuda_home!r}. "
            "Install a CUDA build of torch and the CUDA toolkit (nvcc), or unset RNNFAST_CUDA."
        )
    return possible if flag is None else flag == "1"


def extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as err:  # build isolation hides the installed torch
        raise SystemExit(
            "rnnfast builds against the torch you have installed, but torch cannot be imported "
            f"here ({err}). Install torch first (pip install torch==2.13.0) and build with "
            "`pip install --no-build-isolation -e .`."
        )
    cpp = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    if not cpp:
        return [], {}
    cxx_flags = ["-O3", "-fopenmp", "-DRNNFAST_BUILD"]
    # ATen's at::parallel_for is header-inlined OpenMP: without -fopenmp it silently runs serially.
    link_flags = ["-fopenmp"]
    if _want_cuda(torch, CUDA_HOME):
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        cu = _sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp", "csrc/kernels/*.cu")
        ext = CUDAExtension(
            "rnnfast._C",
            cpp + cu,
            extra_compile_args={
                "cxx": cxx_flags + ["-DRNNFAST_WITH_CUDA"],
                "nvcc": ["-O3", "-lineinfo", "-DRNNFAST_WITH_CUDA"],
            },
            extra_link_args=link_flags,
            py_limited_api=False,
        )
    else:
        ext = CppExtension("rnnfast._C", cpp, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
