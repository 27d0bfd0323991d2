"""The panel GEMM (csrc/cpu/gemm_avx512.cpp panels_pack / panels_gemm): where a recurrent weight is
packed once per call (blas.h RecurrentGemm: a sequence long enough, B >= 4) and K <= 128, on a CPU
with AVX-512F, the per-step GEMM runs on rnnfast's own packed panels instead of MKL's packed API:
the forward's h W_hhᵀ (K = H) and the backward's dG W_hh (K = G*H, so H <= 32 for the LSTM).

Each case runs with the AVX-512 GEMMs on and off (rnnfast._C._set_batch_lanes, the switch the
panel GEMM shares with the batch-lane GEMM; off, MKL's packed API runs as before) and checks every
cell against torch.nn (the textbook loop for the reset-before GRU): outputs, states and every
gradient. The shapes cover the kernel's tails: rows past a block of 6 (B = 4, 5, 7, 13), columns
past a panel of 64 and a vector of 16 (G*H = 20, 80, 99, 132), K not a multiple of 16 (H = 5, 9,
33). The profiler shows which packs ran (rnnfast::pack_panels inside rnnfast::pack_recurrent_weight).
Row independence holds bit for bit (one FMA chain over k per output), also across threads."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from test_batch_lanes import (HAS_LANES, _rows_of, lanes, non_finite_weights_propagate, rows_are_independent,
                              stacked_modules_match, threads)
from test_ops_cpu import make, ours, reference, rel_err, run_with_grads

import rnnfast

needs_panels = pytest.mark.skipif(not HAS_LANES, reason="CPU without AVX-512F")
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
    # W_hh (K = G*H) too where G*H <= 128
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


@needs_panels
def test_wider_weights_keep_mkl():
    """K = 256 (H = 256 forward): MKL's packed API, as before (no panel pack)."""
    torch.manual_seed(2)
    x, h0, c0, params = make("gru", 35, 8, 16, 256, torch.float32)
    with lanes(True), torch.inference_mode():
        seen = events(lambda: ours("gru", x.detach(), h0.detach(), c0.detach(), [p.detach() for p in params], False))
    assert "rnnfast::pack_recurrent_weight" in seen and PACK_PANELS not in seen


@needs_panels
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("B", [4, 7, 13, 32])
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_a_row_depends_on_its_own_input_only(cell, B, n_threads):
    """Each output is one FMA chain over k: the same bits wherever the row sits in its block of 6
    and whatever the other rows hold; and the same at 2 threads as at 1 (H = 128, B = 4..7: the
    panels split over the threads; from B = 8 the batch split gives each thread its rows)."""
    torch.manual_seed(3)
    x, h0, c0, params = make(cell, 40, B, 128, 128, torch.float32)
    x, h0, c0 = x.detach(), h0.detach(), c0.detach()
    params = [p.detach() for p in params]
    out = rows_are_independent(cell, x, h0, c0, params, n_threads)
    with lanes(True), threads(1):
        assert torch.equal(_rows_of(cell, x, h0, c0, params), out)


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
