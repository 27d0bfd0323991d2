"""The AVX-512 forward row passes (csrc/cpu/rows_avx512.cpp over csrc/cpu/vec512.h) and the portable
ones (csrc/cpu/rows.h): each against torch.nn (the textbook loop for the reset-before GRU) and the
two against each other, for every cell, at widths with and without a partial last vector, in
inference and training calls, with variable lengths; and the activations' accuracy, saturation and
NaN through both.

On a CPU with AVX-512F the forward passes take the vector path by default, so the other suites test
it; this file also pins the portable path, which such a CPU otherwise never runs. Where the CPU
lacks AVX-512F, rnnfast._C._set_vector_rows(True) is refused and the vector-path cases are skipped
(they have nothing to run there)."""
import contextlib
import platform

import pytest
import torch
from test_edges import gate_values  # tests/ is on sys.path under pytest
from test_ops_cpu import make, ours, reference, rel_err, run_with_grads

import rnnfast
import rnnfast._C as _C
import rnnfast.functional as F


@contextlib.contextmanager
def switched(setter, on):
    """With one of the AVX-512 switches (rnnfast._C._set_vector_rows, _set_batch_lanes) set to on."""
    prev = setter(on)
    try:
        yield
    finally:
        setter(prev)


def accepted(setter):
    """Whether the switch can be on here (the CPU has AVX-512F)."""
    prev = setter(True)
    return setter(prev)  # what asking for True gave


def rows(vector):
    return switched(_C._set_vector_rows, vector)


HAS_VECTOR = accepted(_C._set_vector_rows)
PATHS = [pytest.param(True, id="avx512", marks=pytest.mark.skipif(not HAS_VECTOR, reason="CPU without AVX-512F")),
         pytest.param(False, id="portable")]
CELLS = ["rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "lstm"]
WIDTHS = [1, 5, 16, 17, 40]  # a partial vector only, one full vector, full + partial, two + partial


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return None


@pytest.mark.parametrize("name", ["_set_vector_rows", "_set_batch_lanes", "_set_lanes_avx512"])
def test_switch_reports_and_restores(name):
    """The SIMD switches (the AVX-512 row passes; the batch-lane GEMM, tests/test_batch_lanes.py; its
    AVX-512 kernels over its AVX2 ones): each reports the previous setting, and can be on exactly
    where the CPU has what it needs (read from /proc/cpuinfo where there is one)."""
    setter = getattr(_C, name)
    prev = setter(False)
    try:
        assert setter(False) is False
        assert setter(True) is False
        can = setter(prev)
        assert can is accepted(setter)
        flags = _cpu_flags()
        if flags is not None and platform.machine() == "x86_64":
            avx512, avx2 = "avx512f" in flags, {"avx2", "fma"} <= flags
            assert can is (avx512 or avx2 if name == "_set_batch_lanes" else avx512)
    finally:
        setter(prev)


@pytest.mark.parametrize("vector", PATHS)
@pytest.mark.parametrize("H", WIDTHS)
@pytest.mark.parametrize("cell", CELLS)
def test_training_call_matches_reference(cell, H, vector):
    """Outputs, final states and every gradient (the backward reads the forward's workspace)."""
    x, h0, c0, params = make(cell, 6, 3, 5, H, torch.float32)
    want, gwant, up = run_with_grads(reference, cell, x, h0, c0, params, False)
    with rows(vector):
        got, ggot, _ = run_with_grads(ours, cell, x, h0, c0, params, False, up)
    for a, b in zip(got + ggot, want + gwant):
        assert rel_err(a, b) < 2e-5


@pytest.mark.parametrize("H", WIDTHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.skipif(not HAS_VECTOR, reason="CPU without AVX-512F")
def test_vector_and_portable_paths_agree(cell, H):
    """Inference (the gate values are not stored) and training calls: the two paths evaluate the same
    formulas, so they agree to a few ulp per step (10 steps here)."""
    x, h0, c0, params = make(cell, 10, 4, 7, H, torch.float32)
    detached = [x.detach(), h0.detach(), c0.detach(), [p if p is None else p.detach() for p in params]]
    up = run_with_grads(ours, cell, x, h0, c0, params, False)[2]
    results = {}
    for vector in (True, False):
        with rows(vector):
            with torch.inference_mode():
                inference = list(ours(cell, *detached, False))
            outs, grads, _ = run_with_grads(ours, cell, x, h0, c0, params, False, up)
        results[vector] = inference + outs + grads
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("vector", PATHS)
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_variable_lengths(mode, vector):
    """Rows that end early are frozen (state carried): the vector path must leave them to it."""
    torch.manual_seed(1)
    ref = getattr(torch.nn, mode)(6, 21)
    mine = getattr(rnnfast, mode)(6, 21)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(7, 4, 6)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [7, 5, 2, 1])
    with rows(vector), torch.inference_mode():
        out, state = mine(packed)
        ref_out, ref_state = ref(packed)
    torch.testing.assert_close(out.data, ref_out.data, rtol=1e-5, atol=1e-6)
    for a, b in zip(state if mode == "LSTM" else (state,), ref_state if mode == "LSTM" else (ref_state,)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vector", PATHS)
def test_activation_accuracy(vector):
    """float32 tanh and sigmoid within 1e-6 relative of float64, both signs, near 0 (relative
    accuracy where tanh(x) ~ x) and out to saturation."""
    x = torch.linspace(-20, 20, 400001)
    x = torch.cat([x, torch.logspace(-30, 1, 20001), -torch.logspace(-30, 1, 20001)])
    z = torch.zeros(1, 1)
    with rows(vector):
        out, _ = F.rnn_tanh(x.view(-1, 1, 1), z, torch.ones(1, 1), torch.zeros(1, 1))
        sig, tanh = gate_values(x)
    ref = torch.tanh(x.double())
    assert ((out.flatten().double() - ref).abs() / ref.abs().clamp_min(1e-37)).max() < 1e-6
    assert ((tanh.double() - ref).abs() / ref.abs().clamp_min(1e-37)).max() < 1e-6
    ref_sig = torch.sigmoid(x.double())
    assert ((sig.double() - ref_sig).abs() / ref_sig).max() < 1e-6


@pytest.mark.parametrize("vector", PATHS)
def test_saturation_and_nan_as_torch(vector):
    """Exactly 0 / 1 / -1 where torch's float sigmoid and tanh are, the subnormal tail of sigmoid
    within 1e-38, and NaN kept."""
    x = torch.cat([torch.linspace(-120, 120, 24001), torch.tensor([-1e30, 1e30, -float("inf"), float("inf")])])
    import numpy as np
    lo, hi = (np.frombuffer(np.float32(v).tobytes(), np.int32)[0] for v in (8.9, 9.1))
    edge = torch.from_numpy(np.arange(lo, hi, 64, dtype=np.int32).view(np.float32).copy())
    x = torch.cat([x, edge, -edge])
    with rows(vector):
        sig, tanh = gate_values(x)
        nan_sig, nan_tanh = gate_values(torch.tensor([float("nan")] * 3))
    for mine, ref in ((sig, torch.sigmoid(x)), (tanh, torch.tanh(x))):
        for exact in (-1.0, 0.0, 1.0):
            at = ref == exact
            assert torch.equal(mine[at], ref[at]), f"{exact}: {x[at][mine[at] != ref[at]][:5]}"
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-38)
        assert torch.equal(mine.abs() == 1, ref.abs() == 1), x[(mine.abs() == 1) != (ref.abs() == 1)][:5]
    assert torch.isnan(nan_sig).all() and torch.isnan(nan_tanh).all()
