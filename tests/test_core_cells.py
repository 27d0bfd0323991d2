"""The seams of csrc/core (each cell defined once, for every backend).

- csrc/core/cells.h compiles standalone with a plain C++17 compiler (no ATen, no CUDA) and its traits
  (tests/core_traits.cpp prints them) agree with what torch.nn's weights, the compiled CPU ops and
  the Python fakes (the shapes torch.compile sees) allocate: gates, workspace slots.
- the backend-neutral headers include no framework header; nothing in csrc/cuda or csrc/kernels
  includes csrc/cpu (the CPU backend is not a shared library of the others).
"""
import glob
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

import rnnfast  # noqa: F401  (loads the ops)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NN = {"rnn_tanh": lambda I, H: torch.nn.RNN(I, H), "rnn_relu": lambda I, H: torch.nn.RNN(I, H, nonlinearity="relu"),
      "gru": lambda I, H: torch.nn.GRU(I, H), "gru_reset_before": lambda I, H: torch.nn.GRU(I, H),
      "lstm": lambda I, H: torch.nn.LSTM(I, H)}


@pytest.fixture(scope="module")
def traits(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    assert cxx, "a C++ compiler is needed (the extension itself is built with one)"
    exe = str(tmp_path_factory.mktemp("core") / "core_traits")
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", ROOT,
                    os.path.join(ROOT, "tests", "core_traits.cpp"), "-o", exe], check=True)
    out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    return {r["key"]: r for r in rows}


def test_every_cell_is_described(traits):
    assert sorted(traits) == sorted(NN)
    assert traits["gru_reset_before"]["name"] == "gru"  # the gru op with reset_after=False
    for key, t in traits.items():
        assert 1 <= t["phases"] <= 2 and (t["phases"] == 2) == (t["gemm_slot"] >= 0), key
        assert t["phase0_gates"] <= t["gates"], key


@pytest.mark.parametrize("key", sorted(NN))
def test_gates_match_torch_nn(traits, key):
    H = 5
    assert NN[key](3, H).weight_ih_l0.shape[0] == traits[key]["gates"] * H


def _forward(key, device, T=2, B=3, I=4, H=5):
    G = NN[key](I, H).weight_ih_l0.shape[0] // H
    x = torch.randn(T, B, I, device=device)
    h = torch.randn(B, H, device=device)
    w_ih, w_hh = torch.randn(G * H, I, device=device), torch.randn(G * H, H, device=device)
    b = torch.randn(G * H, device=device)
    ops = torch.ops.rnnfast
    if key == "lstm":
        return ops.lstm_forward(x, h, torch.randn(B, H, device=device), w_ih, w_hh, b, b, False)[3]
    if key.startswith("gru"):
        return ops.gru_forward(x, h, w_ih, w_hh, b, b, False, key == "gru")[2]
    return getattr(ops, key + "_forward")(x, h, w_ih, w_hh, b, b, False)[2]


@pytest.mark.parametrize("key", sorted(NN))
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_workspace_is_the_cells_slots(traits, key, device):
    """The compiled op (cpu) and the Python fake (meta) allocate traits.slots * H per (t, b)."""
    T, B, H = 2, 3, 5
    ws = _forward(key, device, T=T, B=B, H=H)
    slots = traits[key]["slots"]
    assert tuple(ws.shape) == ((0,) if slots == 0 else (T, B, slots * H))


def test_lstm_proj_workspace_is_lstm_slots_and_m(traits):
    T, B, I, H, P = 2, 3, 4, 5, 2
    args = [torch.randn(T, B, I), torch.randn(B, P), torch.randn(B, H), torch.randn(4 * H, I),
            torch.randn(4 * H, P), torch.randn(P, H), None, None, False]
    ws = torch.ops.rnnfast.lstm_proj_forward(*args)[3]
    assert tuple(ws.shape) == (T, B, (traits["lstm"]["slots"] + 1) * H)


def _includes(path):
    with open(path, encoding="utf-8") as f:
        return re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', f.read(), re.M)


def test_core_math_headers_are_framework_free():
    for name in ("cells.h", "sequence.h", "norm_kind.h"):
        for inc in _includes(os.path.join(ROOT, "csrc", "core", name)):
            assert not re.match(r"(torch|ATen|c10|cuda|Python)", inc), f"csrc/core/{name} includes {inc}"


def test_cuda_and_kernels_do_not_include_cpu():
    files = [p for d in ("cuda", "kernels") for p in glob.glob(os.path.join(ROOT, "csrc", d, "*"))]
    assert files
    for path in files:
        for inc in _includes(path):
            assert "cpu/" not in inc, f"{os.path.relpath(path, ROOT)} includes {inc}"


def test_cpu_row_passes_vectorize(tmp_path):
    """Each cell's float32 CPU row pass (the cell math force-inlined into one `omp simd` loop over H)
    is vectorized by GCC at the extension's -O3 -fopenmp: one report per row-pass function."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    assert cxx, "g++ is needed (the extension is built with it)"
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    assert "Free Software Foundation" in version or "g++" in version.lower(), f"not GCC: {version!r}"
    src = os.path.join(ROOT, "tests", "core_rows_vec.cpp")
    out = subprocess.run([cxx, "-std=c++17", "-O3", "-fopenmp", "-I", ROOT, "-c", src, "-o",
                          str(tmp_path / "rows.o"), "-fopt-info-vec-all"], check=True, capture_output=True,
                         text=True).stderr
    with open(src, encoding="utf-8") as f:
        lines = f.read().splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("// ---- one row pass")) + 1
    funcs = {i: lines[i - 1].split("(")[0].split()[-1] for i in range(first, len(lines) + 1)}
    vectorized = {int(m) for m in re.findall(r"core_rows_vec\.cpp:(\d+):\d+: note: vectorized [1-9]\d* loops? in function", out)}
    missing = [name for i, name in funcs.items() if i not in vectorized]
    assert len(funcs) == 11 and not missing, f"row passes not vectorized: {missing}"
