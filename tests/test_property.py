"""Property test (issue 10): every recurrent module and cell against torch.nn over the small shapes
where edge cases live (batch 1, hidden 1, one step), float32 and float64, losses on the output,
on h_n or on both, and states and incoming gradients that are contiguous, expanded (stride 0) or
transposed. Every output and every gradient (parameters, input, initial states) is compared, with
the same state_dict loaded in both.

A BLAS library that rejects an argument prints to the process's stdout and skips the call; that
output is captured at the file-descriptor level (capfd) and fails the test.

CI runs a bounded, derandomized search (reproducible); RNNFAST_FUZZ_EXAMPLES=N runs N random
examples per test instead, for local fuzzing.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import rnnfast

_FUZZ = int(os.environ.get("RNNFAST_FUZZ_EXAMPLES", "0"))


def bounded(n_ci):
    return settings(max_examples=_FUZZ or n_ci, deadline=None, derandomize=not _FUZZ, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
LAYOUTS = ["contiguous", "expanded", "stride0", "transposed"]


def laid_out(shape, layout, dtype, g):
    """A tensor of `shape` (..., B, H) with values from g in the given memory layout."""
    *lead, B, H = shape
    if layout == "contiguous":
        return torch.randn(shape, generator=g, dtype=dtype)
    if layout == "expanded":  # every batch row the same: stride 0 along B
        return torch.randn(*lead, 1, H, generator=g, dtype=dtype).expand(shape)
    if layout == "stride0":  # stride 0 along every dimension but the last
        return torch.randn(H, generator=g, dtype=dtype).as_strided(shape, (0,) * (len(shape) - 1) + (1,))
    # transposed: batch-major memory seen (..., B, H)
    t = torch.randn(*lead, H, B, generator=g, dtype=dtype)
    return t.transpose(-1, -2)


def loss_weight(like, layout, g):
    """The loss is (y * w).sum(): its gradient w reaches backward with w's layout ("ones": the
    stride-0 gradient autograd makes for y.sum())."""
    if layout == "ones":
        return None
    return laid_out(tuple(like.shape), layout, like.dtype, g)


def weighted_sum(y, w):
    return y.sum() if w is None else (y * w).sum()


def collect_grads(net, x, states):
    """Every gradient of one run: the parameters', the input's and each initial state's."""
    grads = {name: p.grad for name, p in net.named_parameters()}
    grads["input"] = x.grad
    for i, t in enumerate(states or ()):
        grads[f"state{i}"] = t.grad
    return grads


def assert_matches(mine, ref, dtype, what):
    tol = TOL[dtype]
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(mine, ref, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def assert_no_blas_error(capfd):
    out, err = capfd.readouterr()
    assert "Parameter" not in out + err and "MKL ERROR" not in out + err, out + err


@bounded(160)
@given(mode=st.sampled_from(["RNN_TANH", "RNN_RELU", "GRU", "LSTM"]), batch=st.sampled_from([1, 2, 3]),
       hidden=st.sampled_from([1, 2, 3, 17]), steps=st.sampled_from([1, 2, 5]), layers=st.sampled_from([1, 2]),
       bidirectional=st.booleans(), input_size=st.sampled_from([1, 4]), dtype=st.sampled_from([torch.float32,
                                                                                               torch.float64]),
       loss_on=st.sampled_from(["output", "h_n", "both"]), state=st.sampled_from(LAYOUTS + ["none"]),
       grad=st.sampled_from(["ones"] + LAYOUTS), batch_first=st.booleans(), proj=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_modules_match_torch(capfd, mode, batch, hidden, steps, layers, bidirectional, input_size, dtype, loss_on,
                             state, grad, batch_first, proj, seed):
    cls = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "GRU": "GRU", "LSTM": "LSTM"}[mode]
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    if mode == "RNN_RELU":
        kw["nonlinearity"] = "relu"
    proj_size = 1 if (proj and mode == "LSTM" and hidden > 1) else 0
    if proj_size:
        kw["proj_size"] = proj_size
    torch.manual_seed(seed)
    ref = getattr(torch.nn, cls)(input_size, hidden, **kw).to(dtype)
    mine = getattr(rnnfast, cls)(input_size, hidden, **kw).to(dtype)
    mine.load_state_dict(ref.state_dict())

    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(steps, batch, input_size, generator=g, dtype=dtype)
    x0 = x0.transpose(0, 1).contiguous() if batch_first else x0
    D = 2 if bidirectional else 1
    h_width = proj_size or hidden
    states = None
    if state != "none":
        states = [laid_out((layers * D, batch, h_width), state, dtype, g)]
        if mode == "LSTM":
            states.append(laid_out((layers * D, batch, hidden), state, dtype, g))
    out_shape = (batch, steps, D * h_width) if batch_first else (steps, batch, D * h_width)
    w_out = loss_weight(torch.empty(out_shape, dtype=dtype), grad, g)
    w_h = loss_weight(torch.empty(layers * D, batch, h_width, dtype=dtype), grad, g)
    w_c = loss_weight(torch.empty(layers * D, batch, hidden, dtype=dtype), grad, g)

    results = []
    for net in (ref, mine):
        x = x0.clone().requires_grad_()
        s = None if states is None else [t.detach().requires_grad_() for t in states]  # layout kept
        arg = None if s is None else (tuple(s) if mode == "LSTM" else s[0])
        out, hn = net(x, arg) if arg is not None else net(x)
        h_n, c_n = hn if mode == "LSTM" else (hn, None)
        loss = 0
        if loss_on in ("output", "both"):
            loss = loss + weighted_sum(out, w_out)
        if loss_on in ("h_n", "both"):
            loss = loss + weighted_sum(h_n, w_h)
            if c_n is not None:
                loss = loss + weighted_sum(c_n, w_c)
        loss.backward()
        grads = collect_grads(net, x, s)
        results.append(dict(out=out.detach(), h_n=h_n.detach(), c_n=None if c_n is None else c_n.detach(),
                            grads=grads))
    r, m = results
    for key in ("out", "h_n", "c_n"):
        if r[key] is not None:
            assert_matches(m[key], r[key], dtype, key)
    assert r["grads"].keys() == m["grads"].keys()
    for name, gr in r["grads"].items():
        gm = m["grads"][name]
        if gr is None:
            assert gm is None or not gm.any(), name
        else:
            assert gm is not None, name
            assert_matches(gm, gr, dtype, f"grad {name}")
    assert_no_blas_error(capfd)


@bounded(60)
@given(cell=st.sampled_from(["RNNCell_tanh", "RNNCell_relu", "GRUCell", "LSTMCell"]),
       batch=st.sampled_from([1, 2, 3]), hidden=st.sampled_from([1, 2, 3, 17]), input_size=st.sampled_from([1, 4]),
       dtype=st.sampled_from([torch.float32, torch.float64]), state=st.sampled_from(LAYOUTS + ["none"]),
       grad=st.sampled_from(["ones"] + LAYOUTS), loss_on=st.sampled_from(["h", "c", "both"]),
       seed=st.integers(0, 2 ** 16))
def test_cells_match_torch(capfd, cell, batch, hidden, input_size, dtype, state, grad, loss_on, seed):
    name, _, nl = cell.partition("_")
    kw = {"nonlinearity": nl} if nl else {}
    torch.manual_seed(seed)
    ref = getattr(torch.nn, name)(input_size, hidden, **kw).to(dtype)
    mine = getattr(rnnfast, name)(input_size, hidden, **kw).to(dtype)
    mine.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, input_size, generator=g, dtype=dtype)
    lstm = name == "LSTMCell"
    states = None
    if state != "none":
        states = [laid_out((batch, hidden), state, dtype, g) for _ in range(2 if lstm else 1)]
    w = [loss_weight(torch.empty(batch, hidden, dtype=dtype), grad, g) for _ in range(2)]

    results = []
    for net in (ref, mine):
        x = x0.clone().requires_grad_()
        s = None if states is None else [t.detach().requires_grad_() for t in states]
        arg = None if s is None else (tuple(s) if lstm else s[0])
        y = net(x, arg) if arg is not None else net(x)
        h, c = y if lstm else (y, None)
        loss = 0
        if loss_on in ("h", "both") or c is None:
            loss = loss + weighted_sum(h, w[0])
        if c is not None and loss_on in ("c", "both"):
            loss = loss + weighted_sum(c, w[1])
        loss.backward()
        grads = collect_grads(net, x, s)
        results.append((h.detach(), None if c is None else c.detach(), grads))
    (hr, cr, gr), (hm, cm, gm) = results
    assert_matches(hm, hr, dtype, "h")
    if cr is not None:
        assert_matches(cm, cr, dtype, "c")
    for n, a in gr.items():
        if a is None:
            assert gm[n] is None or not gm[n].any(), n
        else:
            assert gm[n] is not None, n
            assert_matches(gm[n], a, dtype, f"grad {n}")
    assert_no_blas_error(capfd)


EXTREMES = [1e30, -1e30, 1e4, -1e4, 1e38, -1e38, 100.0, -100.0, 0.0]


@bounded(80)
@given(mode=st.sampled_from(["RNN_TANH", "RNN_RELU", "GRU", "LSTM"]), batch=st.sampled_from([1, 2, 3]),
       hidden=st.sampled_from([1, 2, 17]), steps=st.sampled_from([1, 2, 5]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2 ** 16),
       fraction=st.sampled_from([0.2, 0.5, 1.0]))
def test_finite_where_torch_is_finite(mode, batch, hidden, steps, dtype, seed, fraction):
    """Huge inputs and states (saturating every gate): wherever torch.nn's outputs and gradients are
    finite, rnnfast's are too."""
    cls = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "GRU": "GRU", "LSTM": "LSTM"}[mode]
    kw = {"nonlinearity": "relu"} if mode == "RNN_RELU" else {}
    torch.manual_seed(seed)
    ref = getattr(torch.nn, cls)(3, hidden, **kw).to(dtype)
    mine = getattr(rnnfast, cls)(3, hidden, **kw).to(dtype)
    mine.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(seed)
    extremes = torch.tensor(EXTREMES, dtype=dtype)

    def spiked(*shape):
        t = torch.randn(*shape, generator=g, dtype=dtype)
        pick = torch.rand(*shape, generator=g) < fraction
        return torch.where(pick, extremes[torch.randint(len(EXTREMES), shape, generator=g)], t)

    x0, h0, c0 = spiked(steps, batch, 3), spiked(1, batch, hidden), spiked(1, batch, hidden)
    results = []
    for net in (ref, mine):
        x = x0.clone().requires_grad_()
        out, hn = net(x, (h0, c0) if cls == "LSTM" else h0)
        h_n = hn[0] if cls == "LSTM" else hn
        (out.sum() + h_n.sum()).backward()
        results.append([out.detach(), h_n.detach(), x.grad] + [p.grad for p in net.parameters()])
    for k, (r, m) in enumerate(zip(*results)):
        finite = torch.isfinite(r)
        assert torch.isfinite(m[finite]).all(), (k, r, m)


@bounded(12)
@given(cell=st.sampled_from(["RNNCell_tanh", "RNNCell_relu", "GRUCell", "LSTMCell"]),
       batch=st.sampled_from([1, 3, 32, 100, 129]), steps=st.integers(1, 24),
       sizes=st.sampled_from([(300, 150), (97, 256), (256, 128)]), bias=st.booleans(),
       threads=st.sampled_from([1, 2]), detach_at=st.integers(-1, 24), seed=st.integers(0, 2 ** 16))
def test_cell_loops_with_deferred_weight_grads_match_torch(cell, batch, steps, sizes, bias, threads, detach_at,
                                                           seed):
    """Cells stepped in a loop at sizes whose weight gradients are deferred along the chain of steps
    (csrc/autograd.cpp Carry: 2^16+ weight elements, at most 128 rows a step), some chains cut by a
    detach: every parameter's gradient equals torch.nn's (float64)."""
    name, _, nl = cell.partition("_")
    kw = {"nonlinearity": nl} if nl else {}
    I, H = sizes
    torch.manual_seed(seed)
    ref = getattr(torch.nn, name)(I, H, bias=bias, **kw).double()
    mine = getattr(rnnfast, name)(I, H, bias=bias, **kw).double()
    mine.load_state_dict(ref.state_dict())
    xs = torch.randn(steps, batch, I, dtype=torch.float64)
    scale = torch.linspace(-1, 1, H, dtype=torch.float64)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        grads = []
        for net in (ref, mine):
            s, total = None, 0
            for t in range(steps):
                if t == detach_at and s is not None:
                    s = tuple(v.detach() for v in s) if isinstance(s, tuple) else s.detach()
                s = net(xs[t], s)
                h = s[0] if isinstance(s, tuple) else s
                total = total + (h * scale).sum() * (1 + t % 3)
            total.backward()
            grads.append([p.grad for p in net.parameters()])
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*grads):
        assert_matches(b, a, torch.float64, "parameter grad")


@bounded(10)
@given(cell=st.sampled_from(["RNNCell_tanh", "GRUCell", "LSTMCell"]), batch=st.integers(4, 128),
       hidden=st.sampled_from([64, 100, 200, 256, 400, 512, 600, 700, 1000]), input_size=st.sampled_from([48, 250, 333]),
       steps=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_cells_backward_at_2_threads_match_torch(capfd, cell, batch, hidden, input_size, steps, seed):
    """Float32 cells at 2 threads over the sizes where a step's dL/dh = dG W_hh and dL/dx = dG W_ih may
    run as one BLAS call per thread's block of columns (csrc/cpu/blas.h splits_columns: 4-128 rows,
    every branch of its column rule, column counts not multiples of 16): the input's and every
    parameter's gradient against torch.nn in float64 (the float32 tolerance, scaled)."""
    name, _, nl = cell.partition("_")
    kw = {"nonlinearity": nl} if nl else {}
    torch.manual_seed(seed)
    ref = getattr(torch.nn, name)(input_size, hidden, **kw).double()
    mine = getattr(rnnfast, name)(input_size, hidden, **kw)
    mine.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    xs = torch.randn(steps, batch, input_size, dtype=torch.float64)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for net, dtype in ((ref, torch.float64), (mine, torch.float32)):
            x = xs.to(dtype).detach().requires_grad_(True)
            s, total = None, 0
            for t in range(steps):
                s = net(x[t], s)
                h = s[0] if isinstance(s, tuple) else s
                total = total + (h * torch.linspace(-1, 1, hidden, dtype=dtype)).sum()
            total.backward()
            grads.append([x.grad] + [p.grad for p in net.parameters()])
    finally:
        torch.set_num_threads(prev)
    assert_no_blas_error(capfd)
    for k, (a, b) in enumerate(zip(*grads)):
        assert_matches(b.double(), a, torch.float32, f"grad {k}")
