"""The modules' eager fast path (rnnfast._C.forward_layers, csrc/python.cpp) and the small-batch
GEMM (csrc/cpu/blas.h gemm_small).

The fast path runs the usual call of a module or cell in C++ with the same op calls as the Python
path, so the two must agree bit for bit, forward and backward; anything unusual must fall back to
the Python path (its checks, errors and features). Which path ran is observed by wrapping
rnnfast._ops.forward_layers (None: it declined) and forcing the Python path through
rnnfast._ops.eager_fast."""
import contextlib
import threading

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from rnnfast import _ops


@pytest.fixture
def fast_calls(monkeypatch):
    """Records what every forward_layers call returned: True (ran) or False (declined)."""
    calls = []
    orig = _ops.forward_layers

    def spy(*args):
        r = orig(*args)
        calls.append(r is not None)
        return r

    monkeypatch.setattr(_ops, "forward_layers", spy)
    return calls


def python_path(monkeypatch):
    monkeypatch.setattr(_ops, "eager_fast", lambda: False)


def _flat(r):
    """The tensors of a result, nested tuples flattened (a PackedSequence: its data)."""
    if hasattr(r, "batch_sizes"):
        return [r.data]
    out = []
    for t in r if isinstance(r, tuple) else (r,):
        out.extend(_flat(t) if isinstance(t, tuple) else [t])
    return out


MODULES = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("GRU", {}), ("GRU", {"reset_after": False}),
           ("LSTM", {})]


def _run(m, x, hx, grad):
    """Outputs (and with grad: the gradients of input, states and parameters) of one call."""
    params = [p for p in m.parameters()]
    for t in [x, *hx] + params:
        t.grad = None
    if not grad:
        with torch.inference_mode():
            return [t.clone() for t in _flat(m(x, *([tuple(hx)] if len(hx) == 2 else hx)))]
    out = _flat(m(x, *([tuple(hx)] if len(hx) == 2 else hx)))
    sum(o.sin().sum() for o in out).backward()
    return [o.detach() for o in out] + [t.grad for t in [x, *hx] + params]


@pytest.mark.parametrize("name,kw", MODULES, ids=lambda v: str(v))
@pytest.mark.parametrize("layers,bidir,batch_first,bias,with_hx",
                         [(1, False, False, True, False), (2, True, False, True, True), (2, False, True, False, True),
                          (1, True, True, True, False)])
@pytest.mark.parametrize("grad", [False, True])
def test_modules_fast_path_equals_python_path_bit_for_bit(monkeypatch, fast_calls, name, kw, layers, bidir,
                                                          batch_first, bias, with_hx, grad):
    torch.manual_seed(0)
    m = getattr(rnnfast, name)(5, 8, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias, **kw)
    x = torch.randn(3, 4, 5, requires_grad=grad)  # (T, B, I) or (B, T, I)
    D, B = 2 if bidir else 1, 3 if batch_first else 4
    hx = []
    if with_hx:
        hx = [torch.randn(layers * D, B, 8, requires_grad=grad) for _ in range(2 if name == "LSTM" else 1)]
    fast = _run(m, x, hx, grad)
    assert fast_calls == [True]
    python_path(monkeypatch)
    slow = _run(m, x, hx, grad)
    assert fast_calls == [True]  # the Python path never asked
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,kw", [("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}), ("GRUCell", {}),
                                     ("GRUCell", {"reset_after": False}), ("LSTMCell", {})], ids=lambda v: str(v))
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_fast_path_equals_python_path_bit_for_bit(monkeypatch, fast_calls, name, kw, with_hx, bias):
    torch.manual_seed(0)
    cell = getattr(rnnfast, name)(5, 8, bias=bias, **kw)
    x = torch.randn(4, 5, requires_grad=True)
    states = [torch.randn(4, 8, requires_grad=True) for _ in range(2 if name == "LSTMCell" else 1)]

    def run():
        for t in [x, *states, *cell.parameters()]:
            t.grad = None
        arg = (tuple(states) if len(states) == 2 else states[0]) if with_hx else None
        out = _flat(cell(x, arg))
        sum(o.sin().sum() for o in out).backward()
        return [o.detach() for o in out] + [t.grad for t in [x, *states, *cell.parameters()]]

    fast = run()
    assert fast_calls == [True]
    python_path(monkeypatch)
    for a, b in zip(fast, run()):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("name", ["GRU", "LSTM", "RNN"])
def test_float64_fast_path_equals_python_path(monkeypatch, fast_calls, name):
    torch.manual_seed(0)
    m = getattr(rnnfast, name)(5, 8, num_layers=2).double()
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    fast = _run(m, x, [], True)
    python_path(monkeypatch)
    for a, b in zip(fast, _run(m, x, [], True)):
        assert torch.equal(a, b)
    assert fast_calls == [True]


def test_fast_path_matches_torch_nn_and_keeps_no_workspace_in_inference(fast_calls):
    torch.manual_seed(0)
    got, ref = rnnfast.LSTM(6, 16, num_layers=2), torch.nn.LSTM(6, 16, num_layers=2)
    ref.load_state_dict(got.state_dict())
    x = torch.randn(7, 3, 6)
    with torch.inference_mode():
        for a, b in zip(_flat(got(x)), _flat(ref(x))):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    (a, _), (b, _) = got(x), ref(x)
    assert a.grad_fn is not None  # parameters require grad: a graph (with its workspace) is built
    with torch.no_grad():
        assert got(x)[0].grad_fn is None
    assert fast_calls == [True, True, True]


class _Sub(torch.Tensor):
    pass


def _declined_cases():
    """(module, call) pairs the fast path must decline, and the Python path then runs."""
    x = torch.randn(3, 2, 4)
    yield "subclass input", rnnfast.GRU(4, 6), lambda m: m(x.as_subclass(_Sub))
    yield "hx list", rnnfast.LSTM(4, 6), lambda m: m(x, [torch.zeros(1, 2, 6), torch.zeros(1, 2, 6)])


@pytest.mark.parametrize("case", list(_declined_cases()), ids=lambda c: c[0])
def test_unusual_calls_take_the_python_path_with_the_same_results(monkeypatch, fast_calls, case):
    _, m, call = case
    torch.manual_seed(0)
    got = _flat(call(m))
    python_path(monkeypatch)
    ref = _flat(call(m))
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_the_fast_path_declines_what_it_does_not_run(fast_calls):
    x = torch.randn(3, 2, 4)
    rnnfast.GRU(4, 6)(x.as_subclass(_Sub))
    rnnfast.GRU(4, 6)(x, torch.zeros(1, 2, 6).as_subclass(_Sub))
    assert fast_calls == [False, False]
    # dropout between layers runs fast, training (torch.nn's draws) and eval; so do projections
    m = rnnfast.GRU(4, 6, num_layers=2, dropout=0.5)
    m(x)
    m.eval()
    m(x)
    rnnfast.LSTM(4, 6, proj_size=3)(x)
    assert fast_calls == [False, False, True, True, True]
    # a TorchFunctionMode sees the Python path's ops
    seen = []

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Mode():
        rnnfast.GRU(4, 6)(x)
    assert fast_calls[-1] is False and seen


def _packed(T, B, I, sort, grad=False):
    """(pack, x): pack() packs x (T, B, I), B random sequences of lengths 1..T (the longest T),
    sorted by length (enforce_sorted) or not (sorted_indices / unsorted_indices)."""
    lengths = torch.tensor([T] + [1 + (7 * b) % T for b in range(1, B)])
    if sort:
        lengths = lengths.sort(descending=True).values
    x = torch.randn(T, B, I, requires_grad=grad)
    return (lambda: pack_padded_sequence(x, lengths, enforce_sorted=sort)), x


def _calls():
    """(id, module or cell, call, inputs that require grad) of the calls the fast path runs beyond
    the usual one: a PackedSequence (sorted and not, with and without hx), unbatched input of modules
    and cells, dropout between layers while training (also on packed rows)."""
    torch.manual_seed(1)
    p_sorted, xs = _packed(5, 4, 3, True, grad=True)
    p_unsorted, xu = _packed(6, 5, 3, False, grad=True)
    h = torch.randn(2 * 2, 5, 4, requires_grad=True)
    yield "packed sorted gru 2 layers bidirectional", rnnfast.GRU(3, 4, num_layers=2, bidirectional=True), \
        lambda m: m(p_sorted()), [xs]
    yield "packed unsorted lstm hx", rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True), \
        lambda m: m(p_unsorted(), (h, h * 0.5)), [xu, h]
    yield "packed unsorted rnn relu batch_first", rnnfast.RNN(3, 4, nonlinearity="relu", batch_first=True), \
        lambda m: m(p_unsorted()), [xu]
    yield "packed dropout training", rnnfast.GRU(3, 4, num_layers=3, dropout=0.4, bidirectional=True), \
        lambda m: m(p_unsorted()), [xu]
    x = torch.randn(5, 3, requires_grad=True)
    h1 = torch.randn(2, 4, requires_grad=True)
    yield "unbatched gru", rnnfast.GRU(3, 4), lambda m: m(x), [x]
    yield "unbatched lstm 2 layers hx", rnnfast.LSTM(3, 4, num_layers=2), lambda m: m(x, (h1, h1 * 2)), [x, h1]
    yield "unbatched rnn bidirectional batch_first", rnnfast.RNN(3, 4, bidirectional=True, batch_first=True), \
        lambda m: m(x, h1), [x, h1]
    v, hv = torch.randn(3, requires_grad=True), torch.randn(4, requires_grad=True)
    yield "unbatched lstm cell", rnnfast.LSTMCell(3, 4), lambda m: m(v), [v]
    yield "unbatched gru cell hx", rnnfast.GRUCell(3, 4, reset_after=False), lambda m: m(v, hv), [v, hv]
    yield "unbatched rnn cell hx", rnnfast.RNNCell(3, 4, nonlinearity="relu"), lambda m: m(v, hv), [v, hv]
    xb = torch.randn(4, 6, 3, requires_grad=True)
    yield "dropout training lstm batch_first", rnnfast.LSTM(3, 4, num_layers=3, dropout=0.5, batch_first=True), \
        lambda m: m(xb), [xb]
    yield "dropout 1.0 training rnn", rnnfast.RNN(3, 4, num_layers=2, dropout=1.0), lambda m: m(xb), [xb]
    # LSTM projections (proj_size: lstm_proj_forward per layer-direction; h P wide, c H wide)
    xt = torch.randn(6, 4, 3, requires_grad=True)
    yield "lstm proj 2 layers", rnnfast.LSTM(3, 5, num_layers=2, proj_size=2), lambda m: m(xt), [xt]
    hp, cp = torch.randn(4, 5, 2, requires_grad=True), torch.randn(4, 5, 4, requires_grad=True)
    yield "packed unsorted lstm proj hx bidirectional", \
        rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2), lambda m: m(p_unsorted(), (hp, cp)), \
        [xu, hp, cp]
    yield "dropout training lstm proj batch_first no bias", \
        rnnfast.LSTM(3, 4, num_layers=3, dropout=0.5, batch_first=True, proj_size=3, bias=False), \
        lambda m: m(xb), [xb]
    h2, c2 = torch.randn(1, 1, requires_grad=True), torch.randn(1, 4, requires_grad=True)
    yield "unbatched lstm proj hx", rnnfast.LSTM(3, 4, proj_size=1), lambda m: m(x, (h2, c2)), [x, h2, c2]


def _outputs_and_grads(m, call, inputs, grad):
    """A call's outputs (and with grad: the gradients of its inputs and the parameters), the dropout
    seed fixed so both paths draw the same masks."""
    params = list(m.parameters())
    for t in inputs + params:
        t.grad = None
    torch.manual_seed(7)
    if not grad:
        with torch.inference_mode():
            return [t.clone() for t in _flat(call(m))]
    out = _flat(call(m))
    sum(o.sin().sum() for o in out).backward()
    return [o.detach() for o in out] + [t.grad for t in inputs + params]


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", list(_calls()), ids=lambda c: c[0])
def test_packed_unbatched_and_dropout_run_fast_bit_for_bit(monkeypatch, fast_calls, case, grad):
    """PackedSequence input, unbatched input and dropout while training run in C++, with the Python
    path's results bit for bit (the same ops, the same dropout draws), forward and backward."""
    _, m, call, inputs = case
    fast = _outputs_and_grads(m, call, inputs, grad)
    assert fast_calls == [True]
    python_path(monkeypatch)
    slow = _outputs_and_grads(m, call, inputs, grad)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("name,kw", [("GRU", {}), ("LSTM", {}), ("LSTM", {"proj_size": 2})], ids=str)
def test_packed_fast_path_matches_torch_nn_with_dropout(fast_calls, name, kw, sort):
    """The fast path's packed and dropout results against torch.nn's, the same dropout masks drawn
    (float64, so the comparison is tight)."""
    torch.manual_seed(0)
    got = getattr(rnnfast, name)(3, 5, num_layers=3, dropout=0.3, bidirectional=True, **kw).double()
    ref = getattr(torch.nn, name)(3, 5, num_layers=3, dropout=0.3, bidirectional=True, **kw).double()
    ref.load_state_dict(got.state_dict())
    pack, _ = _packed(7, 6, 3, sort)
    packed = pack()
    packed = PackedSequence(packed.data.double(), packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    results = []
    for m in (got, ref):
        torch.manual_seed(3)
        out, state = m(packed)
        results.append([out.data] + _flat(state))
    assert fast_calls == [True]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", [
    "batch_sizes increasing", "batch_sizes zero", "rows", "not a permutation", "not the inverse",
    "float batch_sizes", "unbatched hx 3-D", "unbatched cell hx 2-D", "dropout out of range", "proj hx H wide",
    "proj cx P wide", "proj weight_hr replaced"])
def test_calls_the_fast_path_declines_raise_the_python_paths_errors(monkeypatch, case):
    """Malformed PackedSequences, unbatched input with batched states and a bad dropout: the fast
    path declines and the Python path raises its named error, the same with it forced."""
    def call():
        if case == "batch_sizes increasing":
            return rnnfast.GRU(3, 4)(PackedSequence(torch.randn(3, 3), torch.tensor([1, 2])))
        if case == "batch_sizes zero":
            return rnnfast.GRU(3, 4)(PackedSequence(torch.randn(2, 3), torch.tensor([2, 0])))
        if case == "rows":
            return rnnfast.LSTM(3, 4)(PackedSequence(torch.randn(4, 3), torch.tensor([2, 1])))
        if case == "not a permutation":
            return rnnfast.GRU(3, 4)(PackedSequence(torch.randn(6, 3), torch.tensor([3, 2, 1]), torch.tensor([0, 0, 1]),
                                                    torch.tensor([0, 2, 1])))
        if case == "not the inverse":
            return rnnfast.GRU(3, 4)(PackedSequence(torch.randn(6, 3), torch.tensor([3, 2, 1]), torch.tensor([2, 0, 1]),
                                                    torch.tensor([2, 0, 1])))
        if case == "float batch_sizes":
            return rnnfast.RNN(3, 4)(PackedSequence(torch.randn(3, 3), torch.tensor([2.0, 1.0])))
        if case == "unbatched hx 3-D":
            return rnnfast.GRU(3, 4)(torch.randn(5, 3), torch.zeros(1, 1, 4))
        if case == "unbatched cell hx 2-D":
            return rnnfast.GRUCell(3, 4)(torch.randn(3), torch.zeros(1, 4))
        if case == "proj hx H wide":
            return rnnfast.LSTM(3, 4, proj_size=2)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
        if case == "proj cx P wide":
            return rnnfast.LSTM(3, 4, proj_size=2)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)))
        if case == "proj weight_hr replaced":
            m = rnnfast.LSTM(3, 4, proj_size=2)
            m.weight_hr_l0 = torch.nn.Parameter(torch.randn(3, 4))
            return m(torch.randn(5, 2, 3))
        m = rnnfast.GRU(3, 4, num_layers=2)
        m.dropout = 1.5
        return m(torch.randn(5, 2, 3))

    with pytest.raises(Exception) as fast:
        call()
    python_path(monkeypatch)
    with pytest.raises(Exception) as slow:
        call()
    assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)
    assert isinstance(fast.value, (ValueError, TypeError, RuntimeError))


def test_parametrized_weights_are_used(fast_calls):
    """A parametrization moves the weight out of _parameters: the fast path declines, and the
    parametrized weight is what runs."""
    torch.manual_seed(0)
    m = rnnfast.RNN(4, 6)
    ref = torch.nn.RNN(4, 6)
    ref.load_state_dict(m.state_dict())
    torch.nn.utils.parametrize.register_parametrization(m, "weight_hh_l0", _Double())
    with torch.no_grad():
        ref.weight_hh_l0.mul_(2)
    x = torch.randn(3, 2, 4)
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    assert fast_calls == [False]


class _Double(torch.nn.Module):
    def forward(self, w):
        return 2 * w


def test_functional_call_uses_the_given_parameters(fast_calls):
    torch.manual_seed(0)
    m, other = rnnfast.LSTM(4, 6), rnnfast.LSTM(4, 6)
    x = torch.randn(3, 2, 4)
    got = torch.func.functional_call(m, dict(other.named_parameters()), (x,))
    for a, b in zip(_flat(got), _flat(other(x))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["GRU", "LSTMCell"])
def test_errors_are_the_python_paths(monkeypatch, name):
    """A call the op refuses (a bad weight, a bad hx) raises what the Python path raises."""
    x = torch.randn(3, 2, 4) if "Cell" not in name else torch.randn(2, 4)

    def errors():
        got = []
        m = getattr(rnnfast, name)(4, 6)
        hh = "weight_hh_l0" if "Cell" not in name else "weight_hh"
        G = 3 if name == "GRU" else 4
        setattr(m, hh, torch.nn.Parameter(torch.randn(G * 6, 5)))
        bad_h = torch.zeros(1, 2, 5) if "Cell" not in name else (torch.zeros(2, 5), torch.zeros(2, 6))
        for call in (lambda: m(x), lambda: getattr(rnnfast, name)(4, 6)(x, bad_h),
                     lambda: getattr(rnnfast, name)(4, 6)(x.double())):
            with pytest.raises(Exception) as info:
                call()
            got.append((type(info.value), str(info.value)))
        return got

    fast = errors()
    python_path(monkeypatch)
    assert fast == errors()


def test_threads_call_modules_concurrently():
    """forward_layers releases the GIL around the ops (but for calls of a few us, which keep it):
    calls from several threads stay correct, on both sides of that bound."""
    torch.manual_seed(0)
    m = rnnfast.GRU(8, 16)
    xs = [torch.randn(5, 3, 8) for _ in range(2)] + [torch.randn(50, 9, 8) for _ in range(2)]
    with torch.inference_mode():
        want = [m(x)[0] for x in xs]
    got = [None] * len(xs)

    def work(i):
        with torch.inference_mode():
            for _ in range(50):
                got[i] = m(xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# ---- the small-batch GEMM --------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("size, shapes", [
    ("H64", ((1, 2), (1, 3), (1, 5), (1, 7), (1, 16), (3, 5), (2, 8))),  # W in L2: up to 16 rows
    ("H256", ((1, 17), (1, 32), (2, 16), (1, 6))),  # K >= 256: up to 32 rows
    ("3MB", ((1, 8), (1, 16), (1, 3), (2, 5), (1, 17), (1, 33), (1, 64))),  # W of 3-4 MB: up to 64
    ("narrow", ((1, 17), (1, 20), (1, 24), (1, 32), (2, 16))),  # W of <= 128 rows: up to 32
])
def test_small_batches_row_by_row(cell, threads, size, shapes):
    """Up to 16 rows (32 when K >= 256 or W has at most 128 rows, 64 above 3 MB of weight) an
    unpacked GEMM runs gemm_small
    (csrc/cpu/blas.h: tiles of 4 x 4, the rows left over in tiles of 1-3, one row alone in its own
    shape), whose every output is summed in an order that depends on K only: each row of a batch is
    bit for bit its batch-of-one call, and all match torch.nn in float32 and a float64 reference.
    (The shapes keep every GEMM of the call in that range: the input projection takes T x B rows.)
    From 16 rows a CPU with AVX-512F runs the batch-lane kernel instead (tests/test_batch_lanes.py
    checks its own row independence), so this test pins gemm_small with the kernel off."""
    with _batch_lanes_off():
        _small_batches_row_by_row(cell, threads, size, shapes)


@contextlib.contextmanager
def _batch_lanes_off():
    prev = rnnfast._C._set_batch_lanes(False)
    try:
        yield
    finally:
        rnnfast._C._set_batch_lanes(prev)


def _small_batches_row_by_row(cell, threads, size, shapes):
    torch.manual_seed(0)
    H = {"H64": 64, "H256": 256, "3MB": 1024 if cell == "RNN" else 512,
         "narrow": 128 if cell == "RNN" else 32}[size]  # G*H <= 128
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m = getattr(rnnfast, cell)(H, H)
        ref = getattr(torch.nn, cell)(H, H)
        ref.load_state_dict(m.state_dict())
        ref64 = getattr(torch.nn, cell)(H, H).double()
        ref64.load_state_dict(m.state_dict())
        for T, B in shapes:
            x = torch.randn(T, B, H)
            with torch.inference_mode():
                out, _ = m(x)
                rows = torch.cat([m(x[:, b:b + 1])[0] for b in range(B)], dim=1)
                assert torch.equal(out, rows), (T, B)
                torch.testing.assert_close(out, ref(x)[0], rtol=1e-5, atol=2e-6)
                torch.testing.assert_close(out.double(), ref64(x.double())[0], rtol=1e-5, atol=2e-6)
    finally:
        torch.set_num_threads(prev)


def test_small_batches_with_a_large_weight_backward_matches_torch_nn():
    torch.manual_seed(0)
    H = 512
    m, ref = rnnfast.LSTM(H, H), torch.nn.LSTM(H, H)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 4, H, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    m(x)[0].sum().backward()
    ref(xr)[0].sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.weight_ih_l0.grad, ref.weight_ih_l0.grad, rtol=1e-4, atol=1e-5)


# ---- two threads at small batches: the batch split from 4 rows a block, sequential small steps -----

@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("B", [4, 5, 8, 9, 15])
@pytest.mark.parametrize("T", [20, 5])
def test_two_threads_small_batches_match_one_thread_and_torch_nn(cell, B, T):
    """B = 8..15 now splits over two threads (blocks of >= 4 rows, csrc/cpu/backend.h
    kBatchSplitMinRows) and smaller steps run MKL single-threaded (kSequentialStepMacs): forward and
    backward match torch.nn at both thread counts. T = 20 packs W_hh from B = 8; T = 5 does not,
    and the forward's split blocks run gemm_small on their rows."""
    torch.manual_seed(0)
    m, ref = getattr(rnnfast, cell)(16, 64), getattr(torch.nn, cell)(16, 64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(T, B, 16)
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xx = x.clone().requires_grad_()
            out, _ = m(xx)
            m.zero_grad()
            out.sin().sum().backward()
            results.append((out.detach(), xx.grad, m.weight_hh_l0.grad.clone()))
    finally:
        torch.set_num_threads(prev)
    xr = x.clone().requires_grad_()
    out_r, _ = ref(xr)
    out_r.sin().sum().backward()
    for out, gx, gw in results:
        torch.testing.assert_close(out, out_r, rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(gx, xr.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gw, ref.weight_hh_l0.grad, rtol=1e-4, atol=1e-5)


# ---- Python code under the ops: its exceptions propagate, and checkpointing works ------------------

@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_matches_torch_nn(fast_calls, reentrant):
    """torch.utils.checkpoint recomputes the forward in backward; the non-reentrant form stops the
    recomputation by raising from a saved-tensor hook under the op, which must propagate (the
    fallback to the Python path once ran the op again and tripped checkpoint's own assertion)."""
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    m, ref = rnnfast.LSTM(8, 16, num_layers=2), torch.nn.LSTM(8, 16, num_layers=2)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 3, 8, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    checkpoint(lambda t: m(t)[0], x, use_reentrant=reentrant).sin().sum().backward()
    ref(xr)[0].sin().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-6)
    for name, p in m.named_parameters():
        torch.testing.assert_close(p.grad, getattr(ref, name).grad, rtol=1e-4, atol=1e-6)
    assert all(fast_calls)


def test_an_exception_from_a_saved_tensor_hook_propagates_once(fast_calls):
    class Stop(Exception):
        pass

    calls = []

    def pack(t):
        calls.append(1)
        raise Stop("from the hook")

    m = rnnfast.GRU(4, 6)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with pytest.raises(Stop, match="from the hook"):
            m(torch.randn(3, 2, 4))
    assert len(calls) == 1  # raised once, not again by a second run on the Python path


def test_an_op_refusal_under_autocast_gets_the_python_paths_error(monkeypatch):
    """Under autocast the op is called from its (Python) autocast kernel, so its refusal comes back
    as a Python RuntimeError: that still goes to the Python path, which names the problem."""
    def error():
        m = rnnfast.GRU(4, 6)
        m.weight_hh_l0 = torch.nn.Parameter(torch.randn(18, 5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.raises(Exception) as info:
                m(torch.randn(3, 2, 4))
        return type(info.value), str(info.value)

    fast = error()
    assert fast[0] is ValueError and "w_hh must have shape" in fast[1]
    python_path(monkeypatch)
    assert fast == error()


@pytest.mark.parametrize("case", ["packed B1 H1 T1", "packed expanded data and hx", "unbatched H1 expanded hx",
                                  "unbatched cell H1 expanded", "packed proj P1 expanded data and states"])
def test_new_fast_paths_at_the_edges_match_torch_nn(fast_calls, case):
    """The packed and unbatched fast paths at batch 1, hidden 1, T = 1 and with stride-0 (expanded)
    data and states, forward and backward, against torch.nn in float64."""
    f64 = dict(dtype=torch.float64)
    if case == "packed B1 H1 T1":
        make, arg = (lambda lib: lib.GRU(1, 1)), (lambda: (pack_padded_sequence(x, [1]),))
        x = torch.randn(1, 1, 1, **f64, requires_grad=True)
        leaves = [x]
    elif case == "packed expanded data and hx":
        x = torch.randn(1, 1, 3, **f64, requires_grad=True)
        h = torch.randn(1, 1, 2, **f64, requires_grad=True)
        make = lambda lib: lib.LSTM(3, 2, num_layers=2, bidirectional=True)  # noqa: E731
        arg = lambda: (pack_padded_sequence(x.expand(4, 3, 3), [2, 4, 1], enforce_sorted=False),  # noqa: E731
                       (h.expand(4, 3, 2), h.expand(4, 3, 2)))
        leaves = [x, h]
    elif case == "packed proj P1 expanded data and states":
        x = torch.randn(1, 1, 3, **f64, requires_grad=True)
        h = torch.randn(1, 1, 1, **f64, requires_grad=True)
        c = torch.randn(1, 1, 2, **f64, requires_grad=True)
        make = lambda lib: lib.LSTM(3, 2, num_layers=2, bidirectional=True, proj_size=1)  # noqa: E731
        arg = lambda: (pack_padded_sequence(x.expand(4, 3, 3), [2, 4, 1], enforce_sorted=False),  # noqa: E731
                       (h.expand(4, 3, 1), c.expand(4, 3, 2)))
        leaves = [x, h, c]
    elif case == "unbatched H1 expanded hx":
        x = torch.randn(1, 2, **f64, requires_grad=True)
        h = torch.randn(1, **f64, requires_grad=True)
        make, arg = (lambda lib: lib.RNN(2, 1, num_layers=2)), (lambda: (x.expand(5, 2), h.expand(2, 1)))
        leaves = [x, h]
    else:
        x = torch.randn(1, **f64, requires_grad=True)
        h = torch.randn(1, **f64, requires_grad=True)
        make, arg = (lambda lib: lib.LSTMCell(2, 1)), (lambda: (x.expand(2), (h.expand(1), h * 2)))
        leaves = [x, h]
    results = []
    for lib in (rnnfast, torch.nn):
        torch.manual_seed(1)
        m = make(lib).double()
        for t in leaves:
            t.grad = None
        out = _flat(m(*arg()))
        sum(o.sin().sum() for o in out).backward()
        results.append([o.detach() for o in out] + [t.grad.clone() for t in leaves])
    assert fast_calls == [True]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layers,dropout", [(1, 0.0), (2, 0.0), (2, 0.5)])
def test_packed_fast_path_gradcheck(fast_calls, layers, dropout):
    """The fast path's padded batch and packed output (block copies with their own autograd
    functions, csrc/python.cpp PadRows / GatherRows) under gradcheck, ragged lengths, float64; with
    dropout the masks are redrawn from the same seed on each call."""
    torch.manual_seed(0)
    m = rnnfast.GRU(3, 4, num_layers=layers, dropout=dropout, bidirectional=True).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1])

    def f(x):
        torch.manual_seed(5)
        out, h = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return out.data, h

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
    assert fast_calls and all(fast_calls)
