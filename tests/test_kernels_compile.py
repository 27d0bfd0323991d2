"""CUDA compile checks that need nvcc but no GPU (docs/design.md §7): how CI catches kernel and glue
errors on a machine with a CPU torch wheel.

- every csrc/kernels/*.cu compiles standalone (no torch) for sm_80 and sm_90, and ptxas reports
  no register spills for any kernel;
- nothing under csrc/kernels includes a torch / ATen / c10 header;
- every torch CUDA glue file csrc/cuda/*.cu|*.cpp compiles against the installed torch's headers.
  A CPU wheel ships ATen/cuda and c10/cuda headers but not the generated
  c10/cuda/impl/cuda_cmake_macros.h, and a bare nvcc install has no cuBLAS/cuSPARSE/cuSOLVER
  headers (which ATen/cuda/CUDAContext.h includes for a few types); we write minimal stand-ins for
  exactly the missing ones into tmp_path, never shadowing a real header.

Skipped (with the reason) only where nvcc cannot be found.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu")))
KERNEL_TREE = sorted(
    glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu"))
    + glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cuh"))
    + glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.h"))
)
GLUE = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
ARCHS = ["80", "90"]


def find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for env in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(env)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    return None


NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)")


def rel(path):
    return os.path.relpath(path, ROOT)


def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


# ptxas -v prints, per kernel and arch:
#   ptxas info    : Compiling entry function '_Z...' for 'sm_90'
#   ptxas info    : Function properties for _Z...
#       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 32 registers, ...
ENTRY_RE = re.compile(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?")
SPILL_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS_RE = re.compile(r"Used (\d+) registers")


def parse_ptxas(log):
    """[(function, stack, spill_stores, spill_loads)] and {function: registers}."""
    spills, regs, current = [], {}, None
    for line in log.splitlines():
        m = ENTRY_RE.search(line)
        if m:
            current = m.group(1)
            continue
        m = SPILL_RE.search(line)
        if m:
            spills.append((current, int(m.group(1)), int(m.group(2)), int(m.group(3))))
            continue
        m = REGS_RE.search(line)
        if m and current:
            regs[current] = int(m.group(1))
    return spills, regs


def test_parse_ptxas_finds_spills():
    log = (
        "ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z3fooPf\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 0 barriers\n"
    )
    spills, regs = parse_ptxas(log)
    assert spills == [("_Z3fooPf", 8, 4, 12)]
    assert regs == {"_Z3fooPf": 255}


def test_kernel_sources_exist():
    names = {os.path.basename(p) for p in KERNELS}
    assert "recurrent.cu" in names, f"csrc/kernels/*.cu: {sorted(names)}"


@pytest.mark.parametrize("path", KERNEL_TREE, ids=rel)
def test_kernels_are_framework_free(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    bad = re.findall(r'^\s*#\s*include\s*[<"]((?:torch|ATen|c10|caffe2|pybind11)/[^>"]*|Python\.h)[>"]', text, re.M)
    assert not bad, f"{rel(path)} includes framework headers {bad}; csrc/kernels must not know torch"


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", KERNELS, ids=rel)
def test_kernel_compiles_without_spills(path, arch, tmp_path):
    obj = tmp_path / (os.path.basename(path) + f".sm{arch}.o")
    cmd = [NVCC, "-std=c++17", "-O3", "-lineinfo", "-c", path, "-o", str(obj),
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v"]
    code, log = run(cmd, ROOT)
    assert code == 0, f"nvcc failed for {rel(path)} sm_{arch}:\n{' '.join(cmd)}\n{log}"
    spills, regs = parse_ptxas(log)
    if "__global__" in open(path, encoding="utf-8").read():
        assert spills, f"no ptxas resource report parsed for {rel(path)} sm_{arch}:\n{log}"
    spilling = [s for s in spills if s[2] > 0 or s[3] > 0]
    assert not spilling, (
        f"register spills in {rel(path)} sm_{arch} (function, stack, spill stores, spill loads): {spilling}\n{log}"
    )
    print(f"{rel(path)} sm_{arch}: registers {regs}")


# ---- the torch glue, compiled against the installed torch's headers --------------------------------

CUDA_MACROS_STUB = """// Generated by tests/test_kernels_compile.py: the header CMake writes for a CUDA build of torch
// (c10/cuda/impl/cuda_cmake_macros.h.in), absent from CPU wheels. c10 is built as shared libraries.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
"""

# ATen/cuda/CUDAContext.h (and ATen/cuda/Exceptions.h) include the cuBLAS/cuSPARSE/cuSOLVER headers
# for a few handle and status types; a bare nvcc install has none of them. These declarations are
# just enough for those torch headers; glue that calls the libraries itself gets a clear error.
# Written only where the toolkit lacks the real header (stubs never shadow real ones).
LIBRARY_STUBS = {
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\n"
                   "typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1 } cublasStatus_t;\n",
    "cublasLt.h": "#include <cublas_v2.h>\ntypedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\n"
                  "typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;\n"
                  "const char* cusparseGetErrorString(cusparseStatus_t);\n",
    "cusolver_common.h": "typedef enum { CUSOLVER_STATUS_SUCCESS = 0, CUSOLVER_STATUS_INVALID_VALUE = 3 } cusolverStatus_t;\n",
    "cusolverDn.h": "#include <cusolver_common.h>\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n",
}


def write_stubs(stub_dir):
    """Writes the generated/stub headers the CPU wheel and a bare toolkit lack; returns their names."""
    written = []
    torch_inc = torch_include_dirs()[0]
    if not os.path.isfile(os.path.join(torch_inc, "c10", "cuda", "impl", "cuda_cmake_macros.h")):
        path = os.path.join(stub_dir, "c10", "cuda", "impl", "cuda_cmake_macros.h")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(CUDA_MACROS_STUB)
        written.append("c10/cuda/impl/cuda_cmake_macros.h")
    cuda_inc = os.path.join(os.path.dirname(os.path.dirname(NVCC)), "include")
    for name, body in LIBRARY_STUBS.items():
        if not os.path.isfile(os.path.join(cuda_inc, name)):
            with open(os.path.join(stub_dir, name), "w") as f:
                f.write(f"// stub written by tests/test_kernels_compile.py\n#pragma once\n{body}")
            written.append(name)
    return written


def torch_include_dirs():
    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        return None
    return include_paths()


def glue_command(path, obj, stub_dir):
    incs = torch_include_dirs()
    flags = [
        NVCC, "-c", path, "-o", str(obj), "-std=c++20", "-O0",
        "-gencode=arch=compute_90,code=sm_90",  # the glue launches nothing itself; one arch suffices
        "--expt-relaxed-constexpr", "--compiler-options", "-fPIC",
        # torch.utils.cpp_extension's flags for every CUDA source
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
        "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", "-DRNNFAST_WITH_CUDA",
        "-diag-suppress", "3306",  # torch headers use C++20 bit-field initializers (harmless)
    ]
    try:
        import torch

        flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    except (ImportError, AttributeError):
        pass
    for d in incs:
        flags += ["-I", d]
    flags += ["-I", str(stub_dir), "-I", sysconfig.get_paths()["include"]]
    return flags


def glue_headers_missing():
    incs = torch_include_dirs()
    if not incs:
        return "torch is not importable"
    base = incs[0]
    for header in ("c10/cuda/CUDAMacros.h", "c10/cuda/CUDAGuard.h", "c10/cuda/CUDAStream.h", "torch/library.h"):
        if not os.path.isfile(os.path.join(base, header)):
            return f"the installed torch ships no {header}"
    if not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "Python.h (python3-dev) not found"
    return None


@needs_nvcc
@pytest.mark.parametrize("path", GLUE, ids=rel)
def test_glue_compiles_against_torch_headers(path, tmp_path):
    missing = glue_headers_missing()
    if missing:
        pytest.skip(f"cannot compile the torch CUDA glue here: {missing}")
    stub = tmp_path / "stub"
    stub.mkdir()
    stubs = write_stubs(str(stub))
    cmd = glue_command(path, tmp_path / (os.path.basename(path) + ".o"), stub)
    code, log = run(cmd, ROOT)
    assert code == 0, (f"torch CUDA glue {rel(path)} does not compile (stub headers used: {stubs}):\n"
                       f"{' '.join(cmd)}\n{log}")


def test_glue_sources_exist():
    assert any(os.path.basename(p) == "recurrent.cu" for p in GLUE), [rel(p) for p in GLUE]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
