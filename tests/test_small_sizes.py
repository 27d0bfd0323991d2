"""Small sizes (issue 12): the CPU recurrent GEMM packs W_hh only when that repays
(csrc/cpu/blas.h worth_packing: B >= 4 rows, T >= 2 steps and B*T >= 64, against MKL's unpacked
GEMM; worth_packing_over_small where gemm_small would take the rows: B*T >= 64 from 8 rows (from
16 when K >= 256), >= 128 below (>= 64 from 3 rows where the panel GEMM takes a weight of at most
1 MB), >= 256 above 3 MB of weight), else runs the unpacked GEMM per step. Both paths, on both sides of the threshold, against torch.nn forward and backward; which
path ran is read from the profiler (the pack has its own scope, rnnfast::pack_recurrent_weight).
Also: an in-place update of the weights (optimizer step, no_grad copy_, load_state_dict, .data)
is seen by the very next call, for modules and cells."""
import pytest
import torch
from test_batch_lanes import HAS_LANES, HAS_LANES_AVX512
from torch.profiler import ProfilerActivity, profile

import rnnfast

PACK_EVENT = "rnnfast::pack_recurrent_weight"
MODULES = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "gru": ("GRU", {}),
           "lstm": ("LSTM", {})}
CELLS = {"rnn_tanh": ("RNNCell", {}), "gru": ("GRUCell", {}), "lstm": ("LSTMCell", {})}


def takes_small(B, K, N):
    """blas.h's takes_small for a weight well under 3 MB: (N, K) = W_hh's rows and columns."""
    return B <= 16 or (B <= 32 and (K >= 256 or N <= 128))


def worth_packing(B, T, small=False, K=16, N=64):
    """blas.h's rule, restated: the test checks the extension follows it. Who packs: MKL's packed
    API, or on AVX-512F rnnfast's panel GEMM where panels_ok (K <= 128, a narrow W of at most 1 MB,
    or up to 7 rows; test_panels.py), which packs from B*T >= 64 already at 3-7 rows of a W of at
    most 1 MB; a torch without MKL on a CPU without AVX-512F packs only for the panels. small: a forward's W_hhᵀ (H a multiple of 16), where
    gemm_small would take the B rows when takes_small(B, K, N); K, N: W_hh's columns and rows."""
    odd_rows = B <= 7 or (B < 16 and B != 8 and K <= 256)
    panels = HAS_LANES and (K <= 128 or (N <= 512 and N * K * 4 <= 1 << 20) or odd_rows)  # blas.h panels_ok
    if small and takes_small(B, K, N) and panels and N * K * 4 <= 1 << 20 and 3 <= B <= 7:
        return T >= 2 and B * T >= 64  # kPanelsQuickRowSteps: the panels' pack is cheap
    if not (B >= 4 and T >= 2 and (torch.backends.mkl.is_available() or panels)):
        return False
    if small and takes_small(B, K, N):
        quick_small = B < 8 or (B < 16 and K >= 256)
        return B * T >= (128 if quick_small else 64)
    return B * T >= 64


# (T, B) on both sides of every clause of the rule
SHAPES = [(1, 1), (1, 64), (2, 31), (2, 32), (8, 7), (8, 8), (7, 8), (16, 4), (15, 4), (32, 4), (31, 4),
          (64, 3), (64, 1), (3, 2), (4, 17), (4, 16), (22, 3), (21, 3), (64, 2), (10, 7), (9, 7)]


def pair(kind, I, H, dtype=torch.float32, **extra):
    name, kw = MODULES[kind]
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(I, H, **kw, **extra).to(dtype)
    got = getattr(rnnfast, name)(I, H, **kw, **extra).to(dtype)
    got.load_state_dict(ref.state_dict())
    return ref, got


def packs_seen(fn):
    """How many times fn packed a weight (profiler events named PACK_EVENT)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == PACK_EVENT)


def forward_backward(module, x):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out, state = module(x)
    h = state[0] if isinstance(state, tuple) else state
    (out.sum() + 0.5 * h.sum()).backward()
    grads = [p.grad for p in module.parameters()]
    return out, h, x.grad, grads


@pytest.mark.parametrize("T,B", SHAPES, ids=lambda v: str(v))
def test_pack_decision_follows_the_threshold(T, B):
    ref, got = pair("lstm", 8, 16)
    x = torch.randn(T, B, 8)
    with torch.no_grad():
        n_fwd = packs_seen(lambda: got(x))
    fwd = worth_packing(B, T, small=True)  # H = 16: the forward's W_hhᵀ is gemm_small's
    assert n_fwd == (1 if fwd else 0), (T, B, n_fwd)
    # forward + backward: one pack each when it repays (W_hhᵀ forward; W_hh backward, never gemm_small's)
    n_both = packs_seen(lambda: forward_backward(got, x))
    assert n_both == int(fwd) + int(worth_packing(B, T)), (T, B, n_both)


@pytest.mark.parametrize("T,B", [(8, 8), (15, 8), (16, 8), (8, 15), (9, 15), (4, 16), (2, 32)], ids=lambda v: str(v))
def test_pack_decision_long_k(T, B):
    """K = H = 256 (an LSTM's W_hh is 1 MB): 8-15 rows wait for B*T >= 128 before packing, 16 rows
    still pack from 64 (and 32 rows, gemm_small's too at K >= 256)."""
    ref, got = pair("lstm", 8, 256)
    x = torch.randn(T, B, 8)
    with torch.no_grad():
        n_fwd = packs_seen(lambda: got(x))
        want = ref(x)[0]
    assert n_fwd == (1 if worth_packing(B, T, small=True, K=256, N=1024) else 0), (T, B, n_fwd)
    torch.testing.assert_close(got(x)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,B", [(2, 128), (1, 128), (3, 64), (8, 64), (8, 32), (35, 8), (200, 8), (64, 4),
                                 (35, 12), (20, 12)], ids=lambda v: str(v))
def test_pack_decision_large_weight(T, B):
    """W_hh of 4 MB (LSTM H = 512): where the batch-lane kernel takes the rows (AVX-512F: 16, AVX2: 8,
    to 64), they never pack; 65-128 rows pack from B*T >= 256 again (blas.h kLanesNoPackMaxRows); up to 8
    rows (gemm_small's) never pack either (kSmallNoPackMaxRowsLarge), 9-15 from B*T >= 256; without
    the kernel, the 3 MB rule (up to 64 rows: gemm_small) or MKL's (128 rows) decides."""
    ref, got = pair("lstm", 4, 512)
    x = torch.randn(T, B, 4)
    with torch.no_grad():
        n_fwd = packs_seen(lambda: got(x))
        want = ref(x)[0]
    mkl = torch.backends.mkl.is_available()
    lanes_min = 16 if HAS_LANES_AVX512 else 8  # the AVX2 kernel takes from 8 rows (blas.h kLanesMinRowsAvx2)
    if HAS_LANES and lanes_min <= B <= 64:
        expected = False
    elif B <= 64:  # gemm_small's rows of a 3 MB weight
        expected = mkl and T >= 2 and B > 8 and B * T >= 256
    elif HAS_LANES:
        expected = B * T >= 256
    else:  # MKL's rule
        expected = mkl and T >= 2 and B * T >= 64
    assert n_fwd == int(expected), (T, B, n_fwd)
    torch.testing.assert_close(got(x)[0], want, rtol=1e-5, atol=1e-5)


def test_float64_never_packs():
    _, got = pair("gru", 8, 16, dtype=torch.float64)
    assert packs_seen(lambda: forward_backward(got, torch.randn(35, 32, 8, dtype=torch.float64))) == 0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T,B", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", list(MODULES))
def test_both_paths_match_torch_nn(kind, T, B, threads):
    """float32 against torch.nn at the same shapes, forward and every gradient. Two threads at B >= 16
    and packed also run the batch-split recurrence (each thread its own block of rows)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, got = pair(kind, 12, 24)
        x = torch.randn(T, B, 12)
        for a, b in zip(forward_backward(got, x), forward_backward(ref, x)):
            if isinstance(a, list):
                for ga, gb in zip(a, b):
                    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("T,B", SHAPES, ids=lambda v: str(v))
def test_textbook_gru_both_paths_match_float64(T, B):
    """GRU reset_after=False (two recurrent GEMMs a step, both packed or neither): float32 on either
    side of the threshold against the same layer in float64 (never packed)."""
    torch.manual_seed(0)
    got = rnnfast.GRU(12, 24, reset_after=False)
    ref = rnnfast.GRU(12, 24, reset_after=False).double()
    ref.load_state_dict(got.state_dict())
    x = torch.randn(T, B, 12)
    assert packs_seen(lambda: forward_backward(got, x)) == (4 if worth_packing(B, T) else 0)
    for a, b in zip(forward_backward(got, x), forward_backward(ref, x.double())):
        for ga, gb in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            torch.testing.assert_close(ga, gb.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,B", [(1, 1), (1, 8), (2, 2), (8, 8)], ids=lambda v: str(v))
@pytest.mark.parametrize("kind", list(MODULES))
def test_both_paths_float64_to_1e10(kind, T, B):
    ref, got = pair(kind, 5, 7, dtype=torch.float64)
    x = torch.randn(T, B, 5, dtype=torch.float64)
    for a, b in zip(forward_backward(got, x), forward_backward(ref, x)):
        for ga, gb in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-10)


# ---- cells: one step of the same op --------------------------------------------------------------

def cell_pair(kind, I, H, dtype=torch.float32, **extra):
    """torch.nn's cell of `kind` (CELLS) and rnnfast's with the same weights (also
    test_grad_accumulation.py's); `extra`: more constructor arguments (bias=False)."""
    name, kw = CELLS[kind]
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(I, H, **kw, **extra).to(dtype)
    got = getattr(rnnfast, name)(I, H, **kw, **extra).to(dtype)
    got.load_state_dict(ref.state_dict())
    return ref, got


def cell_loop(cell, xs, state=None):
    """A decoder-style loop (what bench/test_cells.py times): outputs summed, then backward."""
    cell.zero_grad(set_to_none=True)
    xs = xs.detach().requires_grad_(True)
    total, hs = 0, []
    for x in xs:
        state = cell(x, state)
        h = state[0] if isinstance(state, tuple) else state
        hs.append(h)
        total = total + (h * h).sum()
    total.backward()
    return torch.stack(hs), xs.grad, [p.grad for p in cell.parameters()]


@pytest.mark.parametrize("B", [1, 3, 16])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cells_in_a_loop_match_torch_nn(kind, B):
    ref, got = cell_pair(kind, 6, 20)
    xs = torch.randn(6, B, 6)
    with torch.no_grad():
        assert packs_seen(lambda: got(xs[0])) == 0  # a single step never packs
    a, b = cell_loop(got, xs), cell_loop(ref, xs)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)
    for ga, gb in zip(a[2], b[2]):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cells_gradcheck_float64(kind, batched):
    _, got = cell_pair(kind, 3, 4, dtype=torch.float64)
    x = torch.randn(*((2, 3) if batched else (3,)), dtype=torch.float64, requires_grad=True)
    hshape = (2, 4) if batched else (4,)
    h = torch.randn(hshape, dtype=torch.float64, requires_grad=True)
    c = torch.randn(hshape, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in got.named_parameters()]

    def f(x, h, c, *ps):
        state = (h, c) if kind == "lstm" else h
        return torch.func.functional_call(got, dict(zip(names, ps)), (x, state))
    args = (x, h, c, *[p.detach().clone().requires_grad_(True) for p in got.parameters()])
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


# ---- in-place weight updates are seen by the next call --------------------------------------------

def _update_optimizer(module, _):
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    out = module(_inputs_for(module))
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    opt.step()


def _update_copy(module, source):
    with torch.no_grad():
        for p, q in zip(module.parameters(), source.parameters()):
            p.copy_(q)


def _update_load_state_dict(module, source):
    module.load_state_dict(source.state_dict())


def _update_data(module, source):
    for p, q in zip(module.parameters(), source.parameters()):
        p.data.copy_(q.data)  # the old idiom: no version-counter bump on p


UPDATES = {"optimizer_step": _update_optimizer, "no_grad_copy": _update_copy,
           "load_state_dict": _update_load_state_dict, "data_copy": _update_data}


def _inputs_for(module):
    g = torch.Generator().manual_seed(1)
    if isinstance(module, torch.nn.RNNCellBase):
        return torch.randn(32, module.input_size, generator=g)
    return torch.randn(35, 32, module.input_size, generator=g)  # packs (B*T >= 64)


@pytest.mark.parametrize("how", list(UPDATES))
@pytest.mark.parametrize("name", ["GRU", "LSTM", "GRUCell", "LSTMCell"])
def test_in_place_weight_update_is_seen_by_the_next_call(name, how):
    torch.manual_seed(0)
    got = getattr(rnnfast, name)(10, 16)
    ref = getattr(torch.nn, name)(10, 16)
    ref.load_state_dict(got.state_dict())
    source = getattr(torch.nn, name)(10, 16)  # other weights to copy in
    x = _inputs_for(got)
    with torch.no_grad():
        before = got(x)
    UPDATES[how](got, source)
    if how == "optimizer_step":
        # the two backwards sum the weight gradients in orders of their own (MKL's depends on the CPU), so
        # the stepped weights differ by rounding, which 35 steps grow past 1e-5 on some CPUs: the
        # reference takes the weights rnnfast's step wrote
        ref.load_state_dict(got.state_dict())
    else:
        UPDATES[how](ref, source)
    with torch.no_grad():
        after, want = got(x), ref(x)
    flat = lambda r: torch.cat([t.reshape(-1) for t in (r if isinstance(r, tuple) else (r,))  # noqa: E731
                                for t in (t if isinstance(t, tuple) else (t,))])
    torch.testing.assert_close(flat(after), flat(want), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(flat(after), flat(before))  # the update changed the answer


# ---- the module/cell fast path: plain arguments go straight to the op -----------------------------

@pytest.fixture
def functional_calls(monkeypatch):
    """Records every run of rnnfast.functional's Python argument checks (still running them): the
    modules, cells and functional API call the op first and check in Python only what it refuses."""
    from rnnfast import functional as rf
    calls = []
    for fn in ("check_layer_args", "check_lengths"):
        orig = getattr(rf, fn)
        monkeypatch.setattr(rf, fn, lambda *a, _orig=orig, _fn=fn, **k: calls.append(_fn) or _orig(*a, **k))
    return calls


def _flat(r):
    return [t for t in (r if isinstance(r, tuple) else (r,)) for t in (t if isinstance(t, tuple) else (t,))]


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"])
def test_valid_calls_go_straight_to_the_op(name, functional_calls):
    """Modules and cells call the op directly (no functional checks per call), with the same numbers
    as torch.nn, and under autocast (the op's autocast kernel casts, as functional does)."""
    torch.manual_seed(0)
    got = getattr(rnnfast, name)(4, 6)
    ref = getattr(torch.nn, name)(4, 6)
    ref.load_state_dict(got.state_dict())
    x = torch.randn(3, 2, 4) if "Cell" not in name else torch.randn(2, 4)
    for u, v in zip(_flat(got(x)), _flat(ref(x))):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _flat(got(x.bfloat16()))
    assert all(t.dtype == torch.float32 for t in out)
    for u, v in zip(out, _flat(got(x.bfloat16().float()))):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert functional_calls == []


def test_packed_and_projected_calls_go_straight_to_the_op(functional_calls):
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(0)
    got, ref = rnnfast.LSTM(4, 6, proj_size=3), torch.nn.LSTM(4, 6, proj_size=3)
    ref.load_state_dict(got.state_dict())
    x = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 2, 4]), enforce_sorted=False)
    (a, (ha, ca)), (b, (hb, cb)) = got(x), ref(x)
    for u, v in ((a.data, b.data), (ha, hb), (ca, cb)):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    assert functional_calls == []


@pytest.mark.parametrize("name", ["GRU", "LSTMCell"])
def test_a_bad_weight_still_gets_functionals_named_error(name, functional_calls):
    m = getattr(rnnfast, name)(4, 6)
    x = torch.randn(3, 2, 4) if "Cell" not in name else torch.randn(2, 4)
    hh = "weight_hh_l0" if "Cell" not in name else "weight_hh"
    G = 3 if name == "GRU" else 4
    setattr(m, hh, torch.nn.Parameter(torch.randn(G * 6, 5)))
    with pytest.raises(ValueError, match="w_hh must have shape") as info:
        m(x)
    assert info.value.__context__ is None  # not shown as raised while handling the op's refusal
    setattr(m, hh, torch.nn.Parameter(torch.randn(G * 6, 6, dtype=torch.float64)))
    with pytest.raises(TypeError, match="w_hh has dtype torch.float64"):
        m(x)
    assert functional_calls.count("check_layer_args") == 2  # the op refused, functional named the problem


# ---- generation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_predict_same_text_as_the_torch_backend_and_the_model_trains_after(cell):
    from rnnfast.data import Vocab
    from rnnfast.models import RNNLM
    from rnnfast.train import predict
    vocab = Vocab(list("abcdefghijklmnopqrstuvwxyz "))
    torch.manual_seed(0)
    fast = RNNLM(len(vocab), 32, cell=cell, backend="rnnfast")
    ref = RNNLM(len(vocab), 32, cell=cell, backend="torch")
    ref.load_state_dict(fast.state_dict())
    assert predict("time traveller ", 40, fast, vocab) == predict("time traveller ", 40, ref, vocab)
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    assert (predict("the ", 40, fast, vocab, temperature=1.0, generator=gens[0])
            == predict("the ", 40, ref, vocab, temperature=1.0, generator=gens[1]))
    # nothing of the generation (inference_mode) leaks into training
    X = torch.randint(0, len(vocab), (4, 6))
    logits, _ = fast(X)
    logits.sum().backward()
    assert all(p.grad is not None for p in fast.parameters())


def test_functional_api_checks_only_what_the_op_refuses(functional_calls):
    """rnnfast.functional's public functions take the same one path: a valid call runs no Python
    check, a refused one gets the named error (each argument validated once per call)."""
    from rnnfast import functional as rf
    torch.manual_seed(0)
    x, h = torch.randn(3, 2, 4), torch.zeros(2, 6)
    w_ih, w_hh = torch.randn(18, 4), torch.randn(18, 6)
    out, hy = rf.gru(x, h, w_ih, w_hh)
    ref = torch.nn.GRU(4, 6, bias=False)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(w_ih), ref.weight_hh_l0.copy_(w_hh)
    torch.testing.assert_close(out, ref(x, h.unsqueeze(0))[0], rtol=1e-5, atol=1e-5)
    assert functional_calls == []
    with pytest.raises(ValueError, match="w_hh must have shape"):
        rf.gru(x, h, w_ih, torch.randn(18, 5))
    assert functional_calls.count("check_layer_args") == 1
