"""The blocked AVX2 GEMM (csrc/cpu/gemm_blocked_avx2.cpp; csrc/cpu/blas.h blocked_gemm): the large
float32 GEMMs (at least 256 rows and 2^22 multiply-adds) on a CPU where the batch-lane and panel
GEMMs run their AVX2 kernels: a CPU without AVX-512F, or one with it after
rnnfast._C._set_lanes_avx512(False). It takes the weight gradients (core/weight_grads.h
product_into, CpuFamily::gemm_into), every raw blas_gemm call of that size (dL/dx = dG W_ih) and
the forward input projection of a W_ih under 3 MB.

The kernel is driven directly through rnnfast._C._gemm_into (CpuFamily::gemm_into: dst = [dst +]
a b where it takes them) against a float64 product, over its tails (rows past a 6-row sliver or a
120-row block, columns past a 16-column panel or a 2048-column block, k past a 256 block or below
one), both operands plain or transposed and with padded leading dimensions, beta 0 (dst's NaNs
ignored) and 1, and 1 against 2 threads bit for bit (the split is in whole micro-tiles; each
element's sum is the same). Then the layers' backward with it, against torch.nn, where the profiler
shows it ran, and the shapes it must decline.
"""
import contextlib

import pytest
import torch
from test_batch_lanes import HAS_LANES, lanes, threads
from test_ops_cpu import make, ours, reference, rel_err, run_with_grads
from test_vector_rows import switched

import rnnfast._C as _C

needs_avx2 = pytest.mark.skipif(not HAS_LANES, reason="CPU without AVX2 with FMA: the blocked GEMM never runs")


@contextlib.contextmanager
def avx2_kernels():
    """The batch-lane switch on and, where the CPU has AVX-512F, its AVX2 kernels chosen."""
    with lanes(True), switched(_C._set_lanes_avx512, False):
        yield


def operand(rows, cols, transposed, pad, gen):
    """A (rows, cols) float32 matrix: a plain one with row stride cols + pad, or the transpose of a
    (cols, rows + pad) one's leading columns."""
    if transposed:
        return torch.randn(cols, rows + pad, generator=gen)[:, :rows].t()
    return torch.randn(rows, cols + pad, generator=gen)[:, :cols]


def product64(a, b):
    return (a.double() @ b.double()).float()


# (m, n, k): 256, 257, 263, 300, 600, 1024 rows (tails of a 6-row sliver and of a 120-row block); n 17, 33, 100 (panel tails), 2100 (a second 2048-column
# block); k 1000 and 2100 (a 256 block's tail), 8 (one short block); at least 2^22 multiply-adds
SHAPES = [(256, 17, 1000), (257, 33, 2100), (263, 100, 300), (300, 2100, 8), (1024, 64, 256), (600, 528, 64)]


@needs_avx2
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "m{}n{}k{}".format(*s))
def test_matches_float64_product(shape, ta, tb, accumulate):
    m, n, k = shape
    gen = torch.Generator().manual_seed(m + n + k)
    a, b = operand(m, k, ta, 3, gen), operand(k, n, tb, 5, gen)
    # dst with a padded row stride; beta = 0 must never read its old contents (NaN here)
    start = torch.randn(m, n + 7, generator=gen) if accumulate else torch.full((m, n + 7), float("nan"))
    dst = start[:, :n]
    want = product64(a, b).double() + (dst.double() if accumulate else 0)
    with avx2_kernels():
        assert _C._gemm_into(dst, a, b, accumulate)
    err = (dst.double() - want).abs().max().item()
    assert err <= 1e-6 * k + 1e-5, f"max error {err}"


@needs_avx2
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "m{}n{}k{}".format(*s))
def test_threads_give_the_same_bits(shape):
    """Split by rows (m >= n) or columns over 2 threads, in whole micro-tiles: the same bits."""
    m, n, k = shape
    gen = torch.Generator().manual_seed(7)
    a, b = operand(m, k, True, 0, gen), operand(k, n, False, 0, gen)
    out = {}
    for nt in (1, 2):
        out[nt] = torch.empty(m, n)
        with avx2_kernels(), threads(nt):
            assert _C._gemm_into(out[nt], a, b, False)
    assert torch.equal(out[1], out[2])


@needs_avx2
def test_declines_what_it_does_not_take():
    """Below 256 rows or 2^22 multiply-adds, float64, a stride-0 operand, a non-unit column stride
    of dst, and with the AVX2 kernels switched off: False, dst untouched (the caller runs ATen)."""
    gen = torch.Generator().manual_seed(3)
    cases = [
        (torch.empty(255, 512), torch.randn(255, 64, generator=gen), torch.randn(64, 512, generator=gen)),
        (torch.empty(256, 16), torch.randn(256, 512, generator=gen), torch.randn(512, 16, generator=gen)),
        (torch.empty(512, 512, dtype=torch.float64), torch.randn(512, 64, dtype=torch.float64),
         torch.randn(64, 512, dtype=torch.float64)),
        (torch.empty(512, 512), torch.randn(1, 64).expand(512, 64), torch.randn(64, 512)),
        (torch.empty(512, 512).t(), torch.randn(512, 64), torch.randn(64, 512)),
    ]
    with avx2_kernels():
        for dst, a, b in cases:
            before = dst.clone()
            assert not _C._gemm_into(dst, a, b, False)
            assert torch.equal(dst.nan_to_num(), before.nan_to_num())
    with lanes(False):
        assert not _C._gemm_into(torch.empty(512, 512), torch.randn(512, 64), torch.randn(64, 512), False)


def blocked_ran(fn):
    with torch.profiler.profile() as prof:
        fn()
    return any(e.name == "rnnfast::blocked_gemm" for e in prof.events())


# H per cell so that a weight gradient has at least 256 rows (G * H) and 2^22 multiply-adds at
# T * B = 300 rows, with tails: RNN 259 (fused [X | H | 1] product), GRU 90 (split: dW_hh and its
# bias column), reset-before GRU 130 (dW_ih on its own), LSTM 70 (fused)
HIDDEN = {"rnn_tanh": 259, "gru": 90, "gru_reset_before": 130, "lstm": 70}


@needs_avx2
@pytest.mark.parametrize("tbi", [(10, 30, 64), (3, 100, 28)], ids=lambda s: "T{}B{}I{}".format(*s))
@pytest.mark.parametrize("cell", list(HIDDEN))
def test_layer_gradients_match_reference(cell, tbi):
    """A layer's backward with the blocked GEMM taking its weight gradients: outputs and every
    gradient against torch.nn, as tests/test_batch_lanes.py, and the profiler shows it ran."""
    torch.manual_seed(0)
    x, h0, c0, params = make(cell, *tbi, HIDDEN[cell], torch.float32)
    want, gwant, up = run_with_grads(reference, cell, x, h0, c0, params, False)
    with avx2_kernels():
        assert blocked_ran(lambda: run_with_grads(ours, cell, x, h0, c0, params, False, up))
        got, ggot, _ = run_with_grads(ours, cell, x, h0, c0, params, False, up)
    for a, b in zip(got + ggot, want + gwant):
        assert rel_err(a, b) < 2e-5


@needs_avx2
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_forward_projection_of_a_small_weight(cell):
    """Inference: the input projection X W_ihᵀ (T * B = 1120 rows) of a W_ih under 3 MB (I = H = 256)
    runs the blocked GEMM on the AVX2 kernels (blas.h RecurrentGemm::run); outputs against torch.nn."""
    torch.manual_seed(1)
    x, h0, c0, params = make(cell, 35, 32, 256, 256, torch.float32)
    detached = [p.detach() for p in params]
    with avx2_kernels(), torch.inference_mode():
        assert blocked_ran(lambda: ours(cell, x.detach(), h0.detach(), c0.detach(), detached, False))
        got = ours(cell, x.detach(), h0.detach(), c0.detach(), detached, False)
        want = reference(cell, x.detach(), h0.detach(), c0.detach(), detached, False)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 2e-5
