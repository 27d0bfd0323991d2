"""The batch-lane GEMM (csrc/cpu/gemm_avx512.cpp, and gemm_avx2.cpp where the CPU lacks AVX-512F):
the unpacked float32 GEMMs C = A Wᵀ of 16 to 64 rows (128 for a weight of 3 MB or more) on a CPU with
AVX-512F or AVX2 with FMA, the rows of A in vector lanes.

Each case runs the ops with the kernel on and off (rnnfast._C._set_batch_lanes) and checks, for every
cell: outputs, states and every gradient against torch.nn (the textbook loop for the reset-before
GRU); the two paths against each other; and the kernel's row independence, bit for bit: a row's
result depends on that row of the input only (reversing the batch reverses the outputs; replacing
every other row leaves it unchanged), also when the columns are split over two threads. The shapes
cover the kernel's tails: rows past a block of 16 or 32, columns past a block of 8 (G*H not a
multiple of 8), and K not a multiple of 16 (an input size of 7 or 28, a hidden size of 5 or 20).

The cases run whichever kernels the CPU has (the AVX2 ones where it lacks AVX-512F); where it has
both, test_avx2_kernels_give_the_avx512_bits runs the AVX2 ones too (rnnfast._C._set_lanes_avx512)
and checks they give the same bits. Where the CPU has neither, _set_batch_lanes(True) is refused and
the kernel's cases are skipped; the other suites then test the gemm_small / MKL paths the kernel
replaces."""
import contextlib

import pytest
import torch
from test_ops_cpu import make, ours, reference, rel_err, run_with_grads
from test_vector_rows import accepted, switched  # the AVX-512 switches' helpers; its test covers this switch too

import rnnfast
import rnnfast._C as _C


def lanes(on):
    return switched(_C._set_batch_lanes, on)


@contextlib.contextmanager
def threads(n):
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


HAS_LANES = accepted(_C._set_batch_lanes)
HAS_LANES_AVX512 = accepted(_C._set_lanes_avx512)
needs_lanes = pytest.mark.skipif(not HAS_LANES, reason="CPU without AVX-512F or AVX2 with FMA")
PATHS = [pytest.param(True, id="lanes", marks=needs_lanes), pytest.param(False, id="without")]
CELLS = ["rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "lstm"]
# (T, B, I, H): rows 16 (one block), 17 (a block of 32 with 15 of padding), 33 and 64 (blocks of 32,
# then 1 row / none), T * B rows of the input projection from 16 to 64; K = I or H of 5, 7, 20, 28
# (a one-hot's size), 64; G * H of 5 to 256 (a last block of 1 to 7 columns where it is not a
# multiple of 8)
SHAPES = [(1, 16, 7, 5), (1, 17, 28, 20), (1, 33, 16, 64), (1, 64, 64, 9), (2, 16, 5, 16), (3, 20, 28, 33)]


@pytest.mark.parametrize("on", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_training_call_matches_reference(cell, shape, on):
    """Outputs, final states and every gradient: the forward's GEMMs run on the kernel, the backward
    reads what they produced."""
    torch.manual_seed(0)
    x, h0, c0, params = make(cell, *shape, torch.float32)
    want, gwant, up = run_with_grads(reference, cell, x, h0, c0, params, False)
    with lanes(on):
        got, ggot, _ = run_with_grads(ours, cell, x, h0, c0, params, False, up)
    for a, b in zip(got + ggot, want + gwant):
        assert rel_err(a, b) < 2e-5


@needs_lanes
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_with_and_without_agree(cell, shape):
    """The two paths sum in different orders, so they agree to rounding."""
    torch.manual_seed(1)
    x, h0, c0, params = make(cell, *shape, torch.float32)
    detached = [x.detach(), h0.detach(), c0.detach(), [p if p is None else p.detach() for p in params]]
    results = {}
    for on in (True, False):
        with lanes(on), torch.inference_mode():
            results[on] = ours(cell, *detached, False)
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


def _rows_of(cell, x, h0, c0, params):
    with torch.inference_mode():
        return ours(cell, x, h0, c0, params, False)[0]


def rows_are_independent(cell, x, h0, c0, params, n_threads):
    """With the AVX-512 GEMMs on and n_threads threads, the output of a row depends on that row's
    input only, bit for bit: reversing the batch reverses the outputs, and replacing every row but
    one (x, h0, c0) leaves that one unchanged. Returns the output (also test_panels.py's)."""
    B = x.size(1)
    with lanes(True), threads(n_threads):
        out = _rows_of(cell, x, h0, c0, params)
        rev = torch.arange(B - 1, -1, -1)
        assert torch.equal(_rows_of(cell, x[:, rev], h0[rev], c0[rev], params), out[:, rev])
        keep = B // 3
        y, g0, d0 = torch.randn_like(x), torch.randn_like(h0), torch.randn_like(c0)  # the other rows replaced
        y[:, keep], g0[keep], d0[keep] = x[:, keep], h0[keep], c0[keep]
        assert torch.equal(_rows_of(cell, y, g0, d0, params)[:, keep], out[:, keep])
    return out


@needs_lanes
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("B", [16, 23, 32, 64])
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_a_row_depends_on_its_own_input_only(cell, B, n_threads):
    """Every output of the kernel is one FMA chain over k in order: the same bits wherever the row
    sits in its block and whatever the other rows hold, at 1 and 2 threads (H = 256: the input
    projection's columns are split over the threads), and the same at 1 as at 2 threads where the
    batch split leaves each thread 16 rows or more (fewer go to gemm_small, another order)."""
    torch.manual_seed(2)
    x, h0, c0, params = make(cell, 1, B, 256, 256, torch.float32)
    x, h0, c0 = x.detach(), h0.detach(), c0.detach()
    params = [p.detach() for p in params]
    out = rows_are_independent(cell, x, h0, c0, params, n_threads)
    if B >= 32:  # two threads split the batch (csrc/cpu/backend.h) into blocks of >= 16 rows, still the kernel's
        with lanes(True), threads(1):
            assert torch.equal(_rows_of(cell, x, h0, c0, params), out)  # the thread split changes no bits


def stacked_modules_match(mode, on, T, B):
    """A torch.nn module of two layers, both directions (an LSTM with a projection) against
    rnnfast's with the AVX-512 GEMMs on or off, input (T, B, 28): outputs and the gradients of the
    input and the weights (also test_panels.py's)."""
    kw = {"proj_size": 12} if mode == "LSTM" else {}
    ref = getattr(torch.nn, mode)(28, 40, num_layers=2, bidirectional=True, **kw)
    mine = getattr(rnnfast, mode)(28, 40, num_layers=2, bidirectional=True, **kw)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, 28)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    with lanes(on):
        out, _ = mine(xm)
        out.sin().sum().backward()
    ref_out, _ = ref(xr)
    ref_out.sin().sum().backward()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(xm.grad, xr.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("on", PATHS)
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_modules_bidirectional_stacked_and_projected(mode, on):
    """Batch 32: every GEMM of 32 rows runs on the kernel."""
    torch.manual_seed(3)
    stacked_modules_match(mode, on, 1, 32)


@pytest.mark.parametrize("on", PATHS)
def test_variable_lengths(on):
    """Frozen rows of a packed batch: the GEMMs still read them; the cell leaves them to it."""
    torch.manual_seed(4)
    ref, mine = torch.nn.LSTM(6, 21), rnnfast.LSTM(6, 21)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, 20, 6)
    lengths = [3] * 5 + [2] * 10 + [1] * 5
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    with lanes(on), torch.inference_mode():
        out, (h, c) = mine(packed)
        ref_out, (rh, rc) = ref(packed)
    torch.testing.assert_close(out.data, ref_out.data, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, rc, rtol=1e-5, atol=1e-6)


def non_finite_weights_propagate(on, H, T, B):
    """An inf in W_hh and a NaN in W_ih of a GRU (I = 16) reach the outputs they multiply into
    exactly as in torch.nn (the zero initial state times inf is NaN), with the AVX-512 GEMMs on or
    off (also test_panels.py's)."""
    ref, mine = torch.nn.GRU(16, H), rnnfast.GRU(16, H)
    with torch.no_grad():
        ref.weight_hh_l0[3, 5] = float("inf")
        ref.weight_ih_l0[7, 2] = float("nan")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, 16)
    with lanes(on), torch.inference_mode():
        out, _ = mine(x)
        want, _ = ref(x)
    assert torch.equal(out.isnan(), want.isnan())
    torch.testing.assert_close(out.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("on", PATHS)
def test_non_finite_weights_propagate(on):
    """The kernel skips nothing."""
    torch.manual_seed(5)
    non_finite_weights_propagate(on, 16, 1, 16)


def lanes_isa(avx512):
    return switched(_C._set_lanes_avx512, avx512)


# (T, B, I, H): the batch-lane kernel's tails as SHAPES, and the panel GEMM's (a pack: B of 1-15 rows
# over T steps; G * H not a multiple of 8 or 16, a last panel of 1-63 columns; K = H of 5-300)
ISA_SHAPES = SHAPES + [(20, 1, 7, 5), (20, 3, 28, 33), (35, 7, 16, 64), (35, 8, 64, 100), (30, 13, 20, 300),
                       (40, 5, 64, 129)]


@pytest.mark.skipif(not HAS_LANES_AVX512, reason="CPU without AVX-512F: only the AVX2 kernels run here")
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", ISA_SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_avx2_kernels_give_the_avx512_bits(cell, shape, n_threads):
    """The batch-lane and panel GEMMs' AVX2 kernels (gemm_avx2.cpp: 8 lanes, other blocks) compute
    every C[m, n] as the AVX-512 ones do, one FMA chain over k in order: outputs, states and every
    gradient are the same bits."""
    torch.manual_seed(3)
    x, h0, c0, params = make(cell, *shape, torch.float32)
    results = {}
    for avx512 in (True, False):
        with lanes(True), lanes_isa(avx512), threads(n_threads):
            got, ggot, _ = run_with_grads(ours, cell, x, h0, c0, params, False)
        results[avx512] = got + ggot
    for a, b in zip(results[True], results[False]):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("env", [{"RNNFAST_DISABLE_AVX512": "1"}, {"RNNFAST_DISABLE_AVX512": "1", "RNNFAST_DISABLE_AVX2": "1"}],
                         ids=["no-avx512", "no-avx512-no-avx2"])
def test_environment_switches(env):
    """RNNFAST_DISABLE_AVX512=1: the GEMMs keep their AVX2 kernels where the CPU has AVX2 with FMA
    (isa.h lanes_avx512 off); with RNNFAST_DISABLE_AVX2=1 too, neither (gemm_small and MKL run).
    The results still match torch.nn. In a fresh process: the switches are read at load."""
    import os
    import subprocess
    import sys
    code = (
        "import json, torch, rnnfast, rnnfast._C as C\n"
        "torch.manual_seed(0)\n"
        "ref = torch.nn.LSTM(24, 40); got = rnnfast.LSTM(24, 40); got.load_state_dict(ref.state_dict())\n"
        "x = torch.randn(20, 17, 24)\n"
        "with torch.no_grad(): err = (got(x)[0] - ref(x)[0]).abs().max().item()\n"
        "print(json.dumps([C._set_batch_lanes(True), C._set_lanes_avx512(True), err]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import json
    lanes_on, avx512_on, err = json.loads(out.stdout.strip().splitlines()[-1])
    assert avx512_on is False  # off at load; the switch reports the previous setting
    avx2_allowed = "RNNFAST_DISABLE_AVX2" not in env
    assert lanes_on is (HAS_LANES and avx2_allowed)  # every CPU with AVX-512F has AVX2 with FMA
    assert err < 1e-5
