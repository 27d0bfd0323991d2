"""The panel GEMM (csrc/cpu/gemm_avx512.cpp panels_pack / panels_gemm): where a recurrent weight is
packed once per call (blas.h RecurrentGemm: a sequence long enough) and the panels measure faster
than MKL's packed API (blas.h panels_ok: K <= 128, a narrow W of at most 1 MB, or up to 7 rows), on
a CPU with AVX-512F, the per-step GEMM runs on rnnfast's own packed panels instead of MKL's: the
forward's h W_hhᵀ (K = H) and the backward's dG W_hh (K = G*H).

Each case runs with the AVX-512 GEMMs on and off (rnnfast._C._set_batch_lanes, the switch the
panel GEMM shares with the batch-lane GEMM; off, MKL's packed API runs as before) and checks every
cell against torch.nn (the textbook loop for the reset-before GRU): outputs, states and every
gradient. The shapes cover the kernel's tails: rows in blocks (B = 4, 5, 7, 8, 13), columns
past a panel of 64 and a vector of 16 (G*H = 20, 80, 99, 132), K not a multiple of 16 (H = 5, 9,
33). The profiler shows which packs ran (rnnfast::pack_panels inside rnnfast::pack_recurrent_weight).
Row independence holds bit for bit (one FMA chain over k per output), also across threads."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from test_batch_lanes import (HAS_LANES, HAS_LANES_AVX512, _rows_of, lanes, non_finite_weights_propagate, rows_are_independent,
                              stacked_modules_match, threads)
from test_ops_cpu import make, ours, reference, rel_err, run_with_grads
from test_vector_rows import switched

import rnnfast

needs_panels = pytest.mark.skipif(not HAS_LANES, reason="CPU without AVX-512F or AVX2 with FMA")
PATHS = [pytest.param(True, id="panels", marks=needs_panels), pytest.param(False, id="without")]
CELLS = ["rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "lstm"]
# (T, B, I, H): every one packs W_hh (B * T >= 64 or 128, blas.h worth_packing_over_small)
SHAPES = [(40, 4, 7, 5), (20, 5, 28, 20), (24, 7, 16, 33), (12, 13, 9, 9), (35, 8, 64, 64), (10, 16, 20, 128)]
PACK_PANELS = "rnnfast::pack_panels"


def events(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


@pytest.mark.parametrize("on", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_training_call_matches_reference(cell, shape, on):
    torch.manual_seed(0)
    x, h0, c0, params = make(cell, *shape, torch.float32)
    want, gwant, up = run_with_grads(reference, cell, x, h0, c0, params, False)
    with lanes(on):
        seen = events(lambda: run_with_grads(ours, cell, x, h0, c0, params, False, up))
        got, ggot, _ = run_with_grads(ours, cell, x, h0, c0, params, False, up)
    for a, b in zip(got + ggot, want + gwant):
        assert rel_err(a, b) < 2e-5
    # the forward's W_hhᵀ (K = H <= 128) always goes to the panels when they are on; the backward's
    # W_hh (K = G*H, N = H: a narrow W) too
    assert (PACK_PANELS in seen) == on


@needs_panels
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_backward_weight_on_panels_too(cell):
    """H = 16: the backward's dG W_hh (K = G*H <= 64) is packed into panels as well as the
    forward's W_hhᵀ: two panel packs per training call, against the reference."""
    torch.manual_seed(1)
    x, h0, c0, params = make(cell, 30, 6, 10, 16, torch.float32)
    want, gwant, up = run_with_grads(reference, cell, x, h0, c0, params, False)
    with lanes(True):
        seen = events(lambda: run_with_grads(ours, cell, x, h0, c0, params, False, up))
        got, ggot, _ = run_with_grads(ours, cell, x, h0, c0, params, False, up)
    assert seen.count(PACK_PANELS) == 2
    for a, b in zip(got + ggot, want + gwant):
        assert rel_err(a, b) < 2e-5


def panel_packs(cell, T, B, I, H, train, n_threads=1):
    """How many weights one call packs into panels, and how many it packs at all, on the AVX-512
    GEMMs at n_threads threads; the call is checked against the reference (training: every gradient
    too)."""
    with threads(n_threads):
        return _panel_packs(cell, T, B, I, H, train)


def _panel_packs(cell, T, B, I, H, train):
    torch.manual_seed(7)
    x, h0, c0, params = make(cell, T, B, I, H, torch.float32)
    if train:
        want, gwant, up = run_with_grads(reference, cell, x, h0, c0, params, False)
        with lanes(True):
            seen = events(lambda: run_with_grads(ours, cell, x, h0, c0, params, False, up))
            got, ggot, _ = run_with_grads(ours, cell, x, h0, c0, params, False, up)
        pairs = zip(got + ggot, want + gwant)
    else:
        detached = [p.detach() for p in params]
        with lanes(True), torch.inference_mode():
            seen = events(lambda: ours(cell, x.detach(), h0.detach(), c0.detach(), detached, False))
            got = ours(cell, x.detach(), h0.detach(), c0.detach(), detached, False)
            want = reference(cell, x.detach(), h0.detach(), c0.detach(), detached, False)
        pairs = zip(got, want)
    for a, b in pairs:
        assert rel_err(a, b) < 2e-5
    return seen.count(PACK_PANELS), seen.count("rnnfast::pack_recurrent_weight")


@needs_panels
@pytest.mark.parametrize("B", [3, 5, 7])
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_up_to_seven_rows_on_panels_whatever_k(cell, B):
    """K = 256 (H = 256 forward), 3-7 rows: the panel GEMM, not MKL's packed API, which packs 3-4x
    slower at these rows and steps slower too (blas.h kPanelsMaxRows); and it packs from B*T >= 64
    (T = 22 at B = 3: kPanelsQuickRowSteps)."""
    assert panel_packs(cell, 22, B, 16, 256, False) == (1, 1)


@needs_panels
@pytest.mark.parametrize("B,panels", [(8, 0), (10, 1), (13, 1), (16, 0)])
def test_rows_between_multiples_of_8_on_panels_at_k_256(B, panels):
    """LSTM H = 256 (W_hhᵀ 1024 x 256, wide): 9-15 rows go to the panels while K <= 256
    (kPanelsOddRowsMaxK), where MKL's step pays for its tails; 8 and 16 rows stay with MKL."""
    assert panel_packs("lstm", 22, B, 16, 256, False) == (on_avx2_panels(panels), 1)


def on_avx2_panels(avx512_panels):
    """What the AVX-512 rule says, or on the AVX2 kernels (a CPU without AVX-512F) the panels for
    every weight that is packed, at any row count (blas.h panels_ok)."""
    if HAS_LANES_AVX512:
        return avx512_panels
    return 1


@needs_panels
@pytest.mark.parametrize("B,n_threads,panels", [(20, 1, 0), (20, 2, 1), (8, 2, 1), (26, 2, 1), (32, 2, 0)])
def test_batch_split_rows_pick_the_kernel(B, n_threads, panels):
    """At 2 threads a W_hh of at most 1 MB runs batch-split (csrc/cpu/backend.h): each thread steps
    on B/2 rows, and the kernel is picked by those (batch_split_rows): LSTM H = 256 B = 20 runs 10
    rows a thread on the panels, B = 8 four; B = 32 sixteen on MKL; at 1 thread B = 20 is MKL's."""
    assert panel_packs("lstm", 22, B, 16, 256, False, n_threads) == (on_avx2_panels(panels), 1)


@needs_panels
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_narrow_weights_on_panels_at_any_batch(cell):
    """B = 32, H = 256: an RNN's W_hh (256 x 256) is narrow and goes to the panels, forward and
    backward; an LSTM's forward W_hhᵀ (1024 x 256) is wide and stays with MKL, while its backward's
    dG W_hh (256 columns of C, K = 1024, 1 MB) is narrow: one panel pack of two (kPanelsNarrowMaxN)."""
    assert panel_packs(cell, 35, 32, 8, 256, True) == ((2, 2) if cell == "rnn_tanh" else (on_avx2_panels(0) + 1, 2))


@needs_panels
def test_wider_weights_keep_mkl():
    """K = 256 (H = 256 forward), 8 rows of a wide W (768 x 256), 1 thread: MKL's packed API, as
    before (no panel pack); on the AVX2 kernels the panels (every packed weight)."""
    torch.manual_seed(2)
    x, h0, c0, params = make("gru", 35, 8, 16, 256, torch.float32)
    with lanes(True), threads(1), torch.inference_mode():
        seen = events(lambda: ours("gru", x.detach(), h0.detach(), c0.detach(), [p.detach() for p in params], False))
    assert "rnnfast::pack_recurrent_weight" in seen and (PACK_PANELS in seen) == bool(on_avx2_panels(0))


@needs_panels
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("B,H", [(4, 128), (7, 128), (8, 128), (13, 128), (32, 128), (7, 256), (8, 256)])
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_a_row_depends_on_its_own_input_only(cell, B, H, n_threads):
    """Each output is one FMA chain over k: the same bits wherever the row sits in its block (up
    to 6 rows against the whole panel, 7 or 8 against half of it at a time) and whatever the other
    rows hold; and the same at 2 threads as at 1 (B = 4..7: the panels split over the threads;
    from B = 8 the batch split gives each thread its rows). Where the 1-thread call runs 8 rows of a
    wide W (GRU and LSTM at H = 256) on MKL's packed GEMM instead, the two agree to rounding only:
    MKL's order of summation depends on the CPU (the same bits as the panels' on AVX-512 Sapphire
    Rapids at K <= 384, not on an AVX2 Zen 2)."""
    torch.manual_seed(3)
    x, h0, c0, params = make(cell, 40, B, 128, H, torch.float32)
    x, h0, c0 = x.detach(), h0.detach(), c0.detach()
    params = [p.detach() for p in params]
    out = rows_are_independent(cell, x, h0, c0, params, n_threads)
    with lanes(True), threads(1):
        one = _rows_of(cell, x, h0, c0, params)
    if B == 8 and H == 256 and cell != "rnn_tanh":
        torch.testing.assert_close(one, out, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(one, out)


@pytest.mark.parametrize("on", PATHS)
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_modules_bidirectional_stacked_and_projected(mode, on):
    """T = 30, B = 6: every recurrent weight packs (an LSTM's projected W_hh is (4H, P))."""
    torch.manual_seed(4)
    stacked_modules_match(mode, on, 30, 6)


@pytest.mark.parametrize("on", PATHS)
def test_non_finite_weights_propagate(on):
    """H = 21 (G*H = 63, a partial panel): the zero padding of the last panel never meets the inf."""
    torch.manual_seed(5)
    non_finite_weights_propagate(on, 21, 20, 5)


@pytest.mark.parametrize("on", PATHS)
def test_weight_update_between_calls(on):
    """The panels are packed per call: an in-place update of W_hh is seen by the next call."""
    torch.manual_seed(6)
    ref, mine = torch.nn.LSTM(8, 32), rnnfast.LSTM(8, 32)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(20, 6, 8)
    with lanes(on), torch.inference_mode():
        mine(x)
        with torch.no_grad():
            for m in (ref, mine):
                m.weight_hh_l0.mul_(1.5)
        out, _ = mine(x)
        want, _ = ref(x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-6)


@needs_panels
@pytest.mark.parametrize("cell,B,H,packs", [("rnn_tanh", 8, 1024, True), ("rnn_tanh", 4, 1024, True),
                                              ("rnn_tanh", 2, 1024, False), ("lstm", 8, 512, False),
                                              ("gru", 8, 1024, False)])
def test_avx2_packs_few_rows_of_long_k(cell, B, H, packs):
    """3 to 8 rows of a W_hh with K >= 1024 of at most 8 MB (RNN H = 1024: 4 MB) go to the panels on
    the AVX2 kernels, where the batch-lane kernel streams 12 rows of W at a time poorly (blas.h
    kPanelsQuickMinKAvx2); not 2 rows, not K = 512 (LSTM H = 512), not a W of 12 MB (GRU H = 1024).
    Inference, T = 35, the AVX2 kernels chosen where the CPU also has AVX-512F."""
    with switched(rnnfast._C._set_lanes_avx512, False):
        assert panel_packs(cell, 35, B, 16, H, False)[0] == int(packs)
