"""Build of record for rnnfast._C (docs/core.md, "Build").

    pip install --no-build-isolation -e .

Sources are discovered, not listed: csrc/*.cpp and csrc/cpu/*.cpp always; csrc/cuda/*.cu and
csrc/kernels/*.cu only in a CUDA build. While csrc/ holds no source the package installs pure.

A CUDA build happens when torch was built with CUDA (torch.version.cuda) and a CUDA toolkit is
found (find_cuda_home); RNNFAST_CUDA=0 forces a CPU build, RNNFAST_CUDA=1 demands a CUDA build.
TORCH_CUDA_ARCH_LIST is honoured; without it and without a visible GPU we build for 8.0 and 9.0.
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    found = []
    for pattern in patterns:
        found += glob.glob(os.path.join(ROOT, pattern))
    return sorted(os.path.relpath(p, ROOT) for p in found)


def _is_toolkit(home):
    """A CUDA toolkit root: nvcc in bin/, the runtime library in lib64/ or lib/ (what torch links)."""
    if not home or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return False
    return any(glob.glob(os.path.join(home, lib, "libcudart.so*")) for lib in ("lib64", "lib"))


def _nvcc_home(nvcc, run=subprocess.run):
    """The toolkit an nvcc belongs to, also through a wrapper script (/usr/local/bin/nvcc running
    /usr/local/cuda-13.0/bin/nvcc): `nvcc --dryrun` prints the real driver's folder as _HERE_."""
    try:
        out = run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True,
                  text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ _HERE_=(.+)$", (out.stdout or "") + (out.stderr or ""), flags=re.M)
    return os.path.dirname(m.group(1).strip()) if m else None


def find_cuda_home(torch_guess, environ=os.environ, which=shutil.which, run=subprocess.run,
                   search=("/usr/local/cuda", "/usr/local/cuda-*")):
    """The CUDA toolkit to build with, or None when there is no nvcc at all (then: a CPU build).

    CUDA_HOME / CUDA_PATH, when set, win as they are (torch reads them too). Otherwise torch's guess
    is the parent of the `nvcc` on PATH, which is wrong when that nvcc is a wrapper or a symlink
    outside the toolkit (/usr/local/bin/nvcc: torch guesses /usr/local, compiles, then fails to link
    with `cannot find -lcudart`). So: torch's guess if it is a toolkit, else the real nvcc's own
    toolkit (symlinks resolved, or the folder its --dryrun reports), else /usr/local/cuda*. An nvcc
    with no toolkit to be found is an error that says what to set."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            return environ[var]
    nvcc = which("nvcc")
    candidates = [torch_guess]
    if nvcc:
        candidates += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), _nvcc_home(nvcc, run)]
    for pattern in search:
        candidates += sorted(glob.glob(pattern), reverse=True)
    for home in candidates:
        if _is_toolkit(home):
            return home
    if nvcc or torch_guess:
        raise SystemExit(
            f"rnnfast: found nvcc ({nvcc or os.path.join(torch_guess, 'bin', 'nvcc')}) but no CUDA toolkit with it "
            f"(bin/nvcc and lib64/libcudart.so; looked in {[c for c in candidates if c]}). Set CUDA_HOME to the "
            "toolkit's root (e.g. CUDA_HOME=/usr/local/cuda-13.0), or RNNFAST_CUDA=0 for a CPU-only build.")
    return None


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
    if torch.version.cuda and os.environ.get("RNNFAST_CUDA") != "0":
        import torch.utils.cpp_extension as cpp_extension

        found = find_cuda_home(CUDA_HOME)
        if found != CUDA_HOME:  # torch reads its module global when it builds the nvcc and link lines
            print(f"rnnfast: CUDA toolkit {found} (torch guessed {CUDA_HOME})")
            CUDA_HOME = cpp_extension.CUDA_HOME = found
            os.environ["CUDA_HOME"] = found
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


if __name__ == "__main__":  # pip and setuptools run this file as __main__; tests import its helpers
    ext_modules, cmdclass = extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
