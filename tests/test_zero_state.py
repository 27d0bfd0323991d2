"""The first step's recurrent GEMM skipped when the initial state is zero (csrc/cpu/backend.h
zero_first_recurrence): h_{-1} W_hhᵀ is exactly zero when hx is all zeros and W_hh all finite.
The outputs and gradients stay torch.nn's, an inf or NaN in W_hh or hx still propagates as in
torch.nn, and the profiler mark shows when the skip is taken (from 8 rows)."""
import pytest
import torch

import rnnfast

SKIP_MARK = "rnnfast::zero_state_skip"


def make(mode, I=12, H=10, **kw):
    torch.manual_seed(0)
    if mode == "LSTMP":
        mode, kw = "LSTM", dict(kw, proj_size=6)
    ref = getattr(torch.nn, mode)(I, H, **kw)
    mine = getattr(rnnfast, mode)(I, H, **kw)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def initial_state(ref, B, how):
    """hx for `ref`'s layers: None, zeros, -0.0 everywhere (h only) or random (h and c)."""
    if how == "none":
        return None
    layers = ref.num_layers * (2 if ref.bidirectional else 1)
    is_lstm = isinstance(ref, torch.nn.LSTM)
    P = (ref.proj_size or ref.hidden_size) if is_lstm else ref.hidden_size
    h = {"zeros": torch.zeros, "negzero": lambda *size: -torch.zeros(*size), "random": torch.randn}[how](layers, B, P)
    if not is_lstm:
        return h
    return h, (torch.randn if how == "random" else torch.zeros)(layers, B, ref.hidden_size)


def skipped(fn):
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.name == SKIP_MARK for e in prof.events())


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM", "LSTMP"])
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("B", [8, 33])
@pytest.mark.parametrize("how", ["none", "zeros", "negzero", "random"])
@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_and_gradients_match_torch(mode, T, B, how, threads):
    ref, mine = make(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, 12)
    state = initial_state(ref, B, how)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            want, _ = ref(x, state)
            got, _ = mine(x, state)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
        xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
        ref(xr, state)[0].sin().sum().backward()
        mine(xm, state)[0].sin().sum().backward()
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(xm.grad, xr.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_variable_lengths_and_float64(mode):
    ref, mine = make(mode)
    ref, mine = ref.double(), mine.double()
    x = torch.randn(6, 9, 12, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4, 1, 6])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.inference_mode():
        want, _ = torch.nn.utils.rnn.pad_packed_sequence(ref(packed)[0])
        got, _ = torch.nn.utils.rnn.pad_packed_sequence(mine(packed)[0])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_skip_is_taken_only_where_exact(mode):
    ref, mine = make(mode)
    x8, x4 = torch.randn(1, 8, 12), torch.randn(1, 4, 12)
    with torch.inference_mode():
        assert skipped(lambda: mine(x8)) == 1               # zero state, 8 rows: skipped
        assert skipped(lambda: mine(x4)) == 0               # fewer rows: the GEMM is cheaper than the check
        assert skipped(lambda: mine(x8, initial_state(ref, 8, "random"))) == 0
        assert skipped(lambda: mine(x8, initial_state(ref, 8, "negzero"))) == 1


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("where", ["w_hh", "hx"])
def test_non_finite_weight_or_state_propagates(mode, value, where):
    """0 * inf and 0 * NaN are NaN: with a non-finite W_hh (zero state) or a NaN in hx the GEMM
    runs, and the outputs' NaNs sit where torch.nn's do."""
    ref, mine = make(mode)
    state = initial_state(ref, 16, "zeros")
    with torch.no_grad():
        if where == "w_hh":
            ref.weight_hh_l0[3, 5] = value
            mine.weight_hh_l0[3, 5] = value
        else:
            (state[0] if isinstance(state, tuple) else state)[0, 2, 4] = value
    x = torch.randn(2, 16, 12)
    with torch.inference_mode():
        assert skipped(lambda: mine(x, state)) == 0
        want, _ = ref(x, state)
        got, _ = mine(x, state)
    if where == "w_hh" or value != value:  # 0 * inf, and NaN anywhere: NaN outputs (an inf hx saturates)
        assert want.isnan().any()
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("where", ["first", "last"])
def test_one_nonzero_anywhere_in_a_large_state_is_seen(mode, where):
    """all_zero reads hx in blocks and stops at the first nonzero one: a state of zeros but one
    element, in the first or the last block of a state much larger than a block, is not zero."""
    ref, mine = make(mode, H=300)
    state = initial_state(ref, 8, "zeros")
    h = state[0] if isinstance(state, tuple) else state
    with torch.no_grad():
        h.view(-1)[0 if where == "first" else -1] = 0.5
    x = torch.randn(1, 8, 12)
    with torch.inference_mode():
        assert skipped(lambda: mine(x, state)) == 0
        want, _ = ref(x, state)
        got, _ = mine(x, state)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
