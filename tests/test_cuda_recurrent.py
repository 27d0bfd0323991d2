"""The CUDA recurrent ops against the float64 CPU ops, and the CUDA modules against torch.nn.

Every test here needs a GPU (marker `cuda`; tests/conftest.py skips them elsewhere). Float32 CUDA
results must match the float64 CPU reference to ‖out − ref‖ / ‖ref‖ < 1e-5 with TF32 off
(docs/design.md §6), forward outputs, the saved workspace (same layout on both devices) and every
gradient.
"""
import itertools

import pytest
import torch

from _cases import GATES, make_args  # tests/ is on sys.path under pytest
from rnnfast._cells import KINDS

pytestmark = pytest.mark.cuda

TOL = 1e-5
CELLS = list(KINDS)  # every C++ cell kind of the registry (rnnfast._cells)


@pytest.fixture(autouse=True, scope="module")
def _ops_and_no_tf32():
    import rnnfast._ops  # noqa: F401  loads rnnfast._C: the ops, their fakes and autograd

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


ATOL = 1e-6


def assert_rel(out, ref, name, tol=TOL):
    """‖out − ref‖ < tol·‖ref‖, with an RMS floor of ATOL per element: a sum that cancels (a bias
    gradient with H = 1) has a float32 rounding error far above tol times its tiny value."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    assert torch.isfinite(out).all(), f"{name}: non-finite values in the CUDA result"
    diff, denom = (out - ref).norm().item(), ref.norm().item()
    bound = tol * denom + ATOL * out.numel() ** 0.5
    assert diff <= bound, f"{name}: ‖out−ref‖ = {diff:.3e} > {bound:.3e} (‖ref‖ = {denom:.3e}, rel {diff / max(denom, 1e-300):.2e})"


# ---- calling the ops uniformly --------------------------------------------------------------------


def to(a, device, dtype):
    return {k: (v.to(device, dtype) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}


def forward(cell, a, reverse):
    ops = torch.ops.rnnfast
    if cell == "lstm":
        out, hy, cy, ws = ops.lstm_forward(a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"],
                                           a["b_hh"], reverse)
        return out, hy, cy, ws
    if cell.startswith("gru"):
        out, hy, ws = ops.gru_forward(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], reverse,
                                      cell == "gru")
    else:
        out, hy, ws = getattr(ops, f"{cell}_forward")(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"],
                                                      a["b_hh"], reverse)
    return out, hy, None, ws


def backward(cell, a, fwd, grads, reverse):
    """Returns a dict of named gradients."""
    ops = torch.ops.rnnfast
    out, hy, cy, ws = fwd
    g_out, g_hy, g_cy = grads
    names = ["input", "hx", "w_ih", "w_hh", "b_ih", "b_hh"]
    if cell == "lstm":
        res = ops.lstm_backward(g_out, g_hy, g_cy, a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], out, ws,
                                reverse)
        names = ["input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh"]
    elif cell.startswith("gru"):
        res = ops.gru_backward(g_out, g_hy, a["input"], a["hx"], a["w_ih"], a["w_hh"], out, ws, reverse,
                               cell == "gru")
    else:
        res = getattr(ops, f"{cell}_backward")(g_out, g_hy, a["input"], a["hx"], a["w_ih"], a["w_hh"], out, ws,
                                               reverse)
    return dict(zip(names, res))


def check_against_cpu(cell, T, B, I, H, reverse, bias=True, seed=0, tol=TOL):
    ref_args = make_args(cell, T, B, I, H, bias=bias, seed=seed)
    dev_args = to(ref_args, "cuda", torch.float32)
    ref = forward(cell, ref_args, reverse)
    got = forward(cell, dev_args, reverse)
    for name, o, r in zip(["output", "hy", "cy", "workspace"], got, ref):
        if r is None:
            assert o is None
            continue
        assert o.device.type == "cuda" and o.dtype == torch.float32, (name, o.device, o.dtype)
        assert o.shape == r.shape, (name, o.shape, r.shape)
        if r.numel():
            assert_rel(o, r, f"{cell} forward {name}", tol)

    g = torch.Generator().manual_seed(seed + 1)
    grads64 = (torch.randn(T, B, H, generator=g, dtype=torch.float64), torch.randn(B, H, generator=g, dtype=torch.float64),
               torch.randn(B, H, generator=g, dtype=torch.float64) if cell == "lstm" else None)
    grads32 = tuple(x.to("cuda", torch.float32) if x is not None else None for x in grads64)
    # The reference backward gets the device forward's own output and workspace (upcast): backward is
    # a function of them, so this checks it alone, and relu's mask (h > 0) is the same on both sides.
    got64 = tuple(x.double().cpu() if x is not None else None for x in got)
    ref_g = backward(cell, ref_args, got64, grads64, reverse)
    got_g = backward(cell, dev_args, got, grads32, reverse)
    for name in ref_g:
        assert got_g[name].device.type == "cuda", name
        assert_rel(got_g[name], ref_g[name], f"{cell} grad_{name}", tol)
    torch.cuda.synchronize()


# ---- parity over the shape grid ---------------------------------------------------------------------

GRID = list(itertools.product([1, 3, 32], [1, 7, 35], [1, 5, 64, 256]))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("B,T,H", GRID, ids=[f"B{b}-T{t}-H{h}" for b, t, h in GRID])
@pytest.mark.parametrize("cell", CELLS)
def test_op_matches_float64_cpu(cell, B, T, H, reverse):
    I = (B + T + H) % 17 + 1  # a spread of input sizes, 1..17
    check_against_cpu(cell, T, B, I, H, reverse, seed=B * 1000 + T * 10 + H)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", CELLS)
def test_op_without_biases(cell, reverse):
    check_against_cpu(cell, T=6, B=4, I=5, H=9, reverse=reverse, bias=False)


@pytest.mark.parametrize("cell", CELLS)
def test_op_hidden_1000(cell):
    check_against_cpu(cell, T=5, B=3, I=33, H=1000, reverse=False)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "gru_reset_before", "lstm"])
def test_op_1000_steps(cell):
    # relu is left out: an unbounded 1000-step recurrence measures its own growth, not the kernel
    check_against_cpu(cell, T=1000, B=2, I=4, H=16, reverse=False)
    check_against_cpu(cell, T=1000, B=1, I=3, H=5, reverse=True, seed=7)


@pytest.mark.parametrize("cell", CELLS)
def test_op_empty_batch(cell):
    # B = 0: the step launchers return before launching, the GEMMs get zero rows
    check_against_cpu(cell, T=3, B=0, I=4, H=6, reverse=False)
    check_against_cpu(cell, T=3, B=0, I=4, H=6, reverse=True)


def test_op_non_contiguous_inputs():
    a = make_args("lstm", 5, 3, 4, 6, device="cuda", dtype=torch.float32)
    ref = forward("lstm", a, False)
    b = dict(a)
    b["input"] = a["input"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    b["w_hh"] = a["w_hh"].t().contiguous().t()
    got = forward("lstm", b, False)
    for name, o, r in zip(["output", "hy", "cy", "workspace"], got, ref):
        assert_rel(o, r, f"non-contiguous {name}", tol=1e-6)


def test_op_runs_on_the_current_device_and_stream():
    # The side stream is kept busy (torch.cuda._sleep) and the input is written on it right before the
    # op: an op (or any of its GEMMs or launches) on another stream reads the NaN input first.
    a = make_args("gru", 4, 2, 3, 8, device="cuda", dtype=torch.float32)
    grads = (torch.randn(4, 2, 8, device="cuda"), torch.randn(2, 8, device="cuda"), None)
    fwd = forward("gru", a, False)
    expected = [fwd[0], backward("gru", a, fwd, grads, False)["w_hh"]]
    b = dict(a, input=torch.full_like(a["input"], float("nan")))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU clock cycles: the side stream is behind
        b["input"].copy_(a["input"])
        fwd = forward("gru", b, False)
        got = [fwd[0], backward("gru", b, fwd, grads, False)["w_hh"]]
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_rel(got[0], expected[0], "output on a side stream", tol=1e-6)
    assert_rel(got[1], expected[1], "grad w_hh on a side stream", tol=1e-6)


# ---- variable-length batches: where the lengths live ----------------------------------------------


def _lengths_case(cell):
    a = make_args(cell, 6, 5, 4, 7, device="cuda", dtype=torch.float32)
    a["g_out"], a["g_h"] = torch.randn(6, 5, 7, device="cuda"), torch.randn(5, 7, device="cuda")
    return a, torch.tensor([6, 0, 3, 1, 6])


def _forward_backward(cell, a, lengths):
    """output, hy (and cy) and every gradient of one op call with these lengths."""
    ops = torch.ops.rnnfast
    g_out, g_h = a["g_out"], a["g_h"]
    if cell == "lstm":
        out, hy, cy, ws = ops.lstm_forward(a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                           False, lengths)
        grads = ops.lstm_backward(g_out, g_h, g_h, a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], out, ws,
                                  False, lengths=lengths)
        return (out, hy, cy) + tuple(grads)
    out, hy, ws = ops.gru_forward(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], False, True,
                                  lengths)
    grads = ops.gru_backward(g_out, g_h, a["input"], a["hx"], a["w_ih"], a["w_hh"], out, ws, False, True,
                             lengths=lengths)
    return (out, hy) + tuple(grads)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cpu_lengths_are_copied_from_pinned_memory(cell):
    # A non_blocking copy from pageable memory makes the host wait for the device: the lengths must
    # reach the device from pinned memory (CUPTI names the copy's source).
    a, lengths = _lengths_case(cell)
    _forward_backward(cell, a, lengths)  # warm up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _forward_backward(cell, a, lengths)
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "memcpy" in e.name.lower() and "htod" in e.name.lower()]
    assert len(copies) >= 2, copies  # forward and backward each copy the lengths
    assert not [c for c in copies if "pageable" in c.lower()], copies


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_device_lengths_match_cpu_lengths(cell):
    a, lengths = _lengths_case(cell)
    for got, ref in zip(_forward_backward(cell, a, lengths.cuda()), _forward_backward(cell, a, lengths)):
        assert_rel(got, ref, f"{cell} with device lengths", tol=1e-6)


def test_device_lengths_are_checked():
    a, lengths = _lengths_case("gru")
    ops = torch.ops.rnnfast
    args = (a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], False, True)
    with pytest.raises(RuntimeError, match=r"lengths must have shape \(B,\)"):
        ops.gru_forward(*args, lengths[:3].cuda())
    with pytest.raises(TypeError, match="lengths must have dtype int64"):
        ops.gru_forward(*args, lengths.int().cuda())


def test_device_lengths_out_of_range_fail_loudly(tmp_path):
    # a device-side assert poisons the CUDA context: run it in a process of its own
    import subprocess
    import sys

    code = (
        "import torch, rnnfast._ops\n"
        "x = torch.randn(3, 2, 4, device='cuda'); h = torch.zeros(2, 5, device='cuda')\n"
        "w = torch.randn(15, 4, device='cuda'); u = torch.randn(15, 5, device='cuda')\n"
        "out = torch.ops.rnnfast.gru_forward(x, h, w, u, None, None, False, True,"
        " torch.tensor([1, 4], device='cuda'))[0]\n"
        "torch.cuda.synchronize()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, "lengths outside [0, T] on the device were accepted silently"
    # the kernel's assertion goes to stdout (device printf), the RuntimeError to stderr
    assert "assert" in (proc.stdout + proc.stderr).lower(), proc.stdout[-1000:] + proc.stderr[-2000:]


def test_op_with_device_lengths_is_capturable_in_a_cuda_graph():
    # Device lengths: forward + backward captured once, replayed with other lengths written into the
    # static lengths tensor, match eager calls with those lengths.
    a, lengths = _lengths_case("lstm")
    static_len = lengths.cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _forward_backward("lstm", a, static_len)  # warm-up on a side stream, as torch.cuda.graph requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _forward_backward("lstm", a, static_len)
    for new in ([1, 6, 2, 0, 5], [6, 6, 6, 6, 6], [0, 0, 0, 0, 0]):
        static_len.copy_(torch.tensor(new))
        graph.replay()
        expected = _forward_backward("lstm", a, torch.tensor(new))
        for got, ref in zip(static_out, expected):
            assert_rel(got, ref, f"graph replay with lengths {new}", tol=1e-6)


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_rejected_clearly(cell, dtype):
    a = make_args(cell, 3, 2, 4, 5, device="cuda", dtype=dtype)
    with pytest.raises(TypeError, match="float32"):
        forward(cell, a, False)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("which", ["hx", "w_ih", "w_hh", "b_hh", "input"])
def test_mixed_devices_rejected_clearly(cell, which):
    a = make_args(cell, 3, 2, 4, 5, device="cuda", dtype=torch.float32)
    a[which] = a[which].cpu()
    with pytest.raises(RuntimeError, match="one device"):
        forward(cell, a, False)


def test_mixed_devices_rejected_in_backward():
    a = make_args("lstm", 3, 2, 4, 5, device="cuda", dtype=torch.float32)
    fwd = forward("lstm", a, False)
    grads = (torch.randn(3, 2, 5, device="cuda"), torch.randn(2, 5), torch.randn(2, 5, device="cuda"))
    with pytest.raises(RuntimeError, match="one device"):
        backward("lstm", a, fwd, grads, False)


def test_wrong_shapes_rejected_clearly():
    a = make_args("gru", 3, 2, 4, 5, device="cuda", dtype=torch.float32)
    a["w_hh"] = a["w_hh"][:, :4]
    with pytest.raises(RuntimeError, match="w_hh"):
        forward("gru", a, False)


# ---- modules on CUDA against torch.nn on CUDA -------------------------------------------------------

MODULES = [
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu")),
    ("GRU", {}),
    ("LSTM", {}),
]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind,kw", MODULES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_module_matches_torch_nn_on_cuda(kind, kw, bidirectional):
    import rnnfast.nn

    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(10, 32, num_layers=2, bidirectional=bidirectional, **kw).cuda()
    mod = getattr(rnnfast.nn, kind)(10, 32, num_layers=2, bidirectional=bidirectional, **kw).cuda()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(35, 8, 10, device="cuda")
    x_ref = x.clone().requires_grad_()
    x_got = x.clone().requires_grad_()
    out_ref, h_ref = ref(x_ref)
    out_got, h_got = mod(x_got)
    assert_rel(out_got, out_ref, f"{kind} output")
    if kind == "LSTM":
        assert_rel(h_got[0], h_ref[0], "LSTM h_n")
        assert_rel(h_got[1], h_ref[1], "LSTM c_n")
        last = h_ref[0].sum() + h_ref[1].sum(), h_got[0].sum() + h_got[1].sum()
    else:
        assert_rel(h_got, h_ref, f"{kind} h_n")
        last = h_ref.sum(), h_got.sum()
    g = torch.randn_like(out_ref)
    ((out_ref * g).sum() + last[0]).backward()
    ((out_got * g).sum() + last[1]).backward()
    assert_rel(x_got.grad, x_ref.grad, f"{kind} grad input")
    params = dict(mod.named_parameters())
    for name, p in ref.named_parameters():
        assert params[name].grad is not None, name
        assert_rel(params[name].grad, p.grad, f"{kind} grad {name}")


@pytest.mark.parametrize("kind,kw", MODULES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_packed_sequence_module_matches_float64_cpu(kind, kw):
    # variable-length batch on CUDA (lengths reach the step kernels): against torch.nn in float64 on CPU
    import rnnfast.nn
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(10, 32, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    mod = getattr(rnnfast.nn, kind)(10, 32, num_layers=2, bidirectional=True, **kw).cuda()
    mod.load_state_dict(ref.state_dict())
    lengths = torch.tensor([35, 3, 17, 1, 35, 20, 9, 2])
    x = torch.randn(35, 8, 10, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    x_got = x.cuda().float().requires_grad_()
    out_ref, h_ref = ref(pack_padded_sequence(x_ref, lengths, enforce_sorted=False))
    out_got, h_got = mod(pack_padded_sequence(x_got, lengths, enforce_sorted=False))
    assert torch.equal(out_got.batch_sizes, out_ref.batch_sizes)
    assert_rel(out_got.data, out_ref.data, f"{kind} packed output")
    states_ref = h_ref if kind == "LSTM" else (h_ref,)
    states_got = h_got if kind == "LSTM" else (h_got,)
    for a, b in zip(states_got, states_ref):
        assert_rel(a, b, f"{kind} packed final state")
    g = torch.randn_like(out_ref.data)
    ((out_ref.data * g).sum() + sum(s.sum() for s in states_ref)).backward()
    ((out_got.data * g.cuda().float()).sum() + sum(s.sum() for s in states_got)).backward()
    assert_rel(x_got.grad, x_ref.grad, f"{kind} packed grad input")
    params = dict(mod.named_parameters())
    for name, p in ref.named_parameters():
        assert_rel(params[name].grad, p.grad, f"{kind} packed grad {name}")


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_lstm_proj_module_matches_float64_cpu(packed):
    # LSTM(proj_size) on CUDA (the step kernel + a GEMM per step) against torch.nn in float64 on CPU
    import rnnfast.nn
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    ref = torch.nn.LSTM(10, 32, num_layers=2, bidirectional=True, proj_size=12, dtype=torch.float64)
    mod = rnnfast.nn.LSTM(10, 32, num_layers=2, bidirectional=True, proj_size=12).cuda()
    mod.load_state_dict(ref.state_dict())
    lengths = torch.tensor([35, 3, 17, 1, 35, 20, 9, 2])
    x = torch.randn(35, 8, 10, dtype=torch.float64)
    x_ref, x_got = x.clone().requires_grad_(), x.cuda().float().requires_grad_()
    wrap = (lambda t: pack_padded_sequence(t, lengths, enforce_sorted=False)) if packed else (lambda t: t)
    out_ref, (h_ref, c_ref) = ref(wrap(x_ref))
    out_got, (h_got, c_got) = mod(wrap(x_got))
    data_ref, data_got = (out_ref.data, out_got.data) if packed else (out_ref, out_got)
    assert_rel(data_got, data_ref, "lstm_proj output")
    assert_rel(h_got, h_ref, "lstm_proj h_n")
    assert_rel(c_got, c_ref, "lstm_proj c_n")
    g = torch.randn_like(data_ref)
    ((data_ref * g).sum() + h_ref.sum() + c_ref.sum()).backward()
    ((data_got * g.cuda().float()).sum() + h_got.sum() + c_got.sum()).backward()
    assert_rel(x_got.grad, x_ref.grad, "lstm_proj grad input")
    params = dict(mod.named_parameters())
    for name, p in ref.named_parameters():
        assert_rel(params[name].grad, p.grad, f"lstm_proj grad {name}")


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_module_matches_torch_nn_on_cuda(kind):
    import rnnfast.nn

    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(7, 16).cuda()
    mod = getattr(rnnfast.nn, kind)(7, 16).cuda()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(5, 7, device="cuda")
    out_ref, out_got = ref(x), mod(x)
    if kind == "LSTMCell":
        for o, r in zip(out_got, out_ref):
            assert_rel(o, r, kind)
    else:
        assert_rel(out_got, out_ref, kind)


# ---- a training step in a CUDA graph ----------------------------------------------------------------

class TinyLM(torch.nn.Module):
    def __init__(self, lstm_cls, vocab=28, hidden=64):
        super().__init__()
        self.rnn = lstm_cls(vocab, hidden)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, x_onehot):
        out, _ = self.rnn(x_onehot)
        return self.head(out)


def test_training_step_in_cuda_graph_matches_eager():
    import rnnfast.nn

    vocab, T, B = 28, 35, 32
    torch.manual_seed(0)
    eager = TinyLM(rnnfast.nn.LSTM).cuda()
    graphed = TinyLM(rnnfast.nn.LSTM).cuda()
    graphed.load_state_dict(eager.state_dict())
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.5)
    opt_g = torch.optim.SGD(graphed.parameters(), lr=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = [(torch.randint(0, vocab, (T, B), device="cuda"), torch.randint(0, vocab, (T, B), device="cuda"))
               for _ in range(6)]

    def step(model, opt, x, y):
        opt.zero_grad(set_to_none=True)
        logits = model(torch.nn.functional.one_hot(x, vocab).float())
        loss = loss_fn(logits.reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    eager_losses = [step(eager, opt_e, x, y).detach() for x, y in batches]

    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph requires
        warm = [step(graphed, opt_g, *batches[i]).detach() for i in range(3)]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt_g.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step(graphed, opt_g, static_x, static_y)
    graph_losses = list(warm)
    for x, y in batches[3:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        graph_losses.append(static_loss.detach().clone())
    torch.cuda.synchronize()

    for i, (g, e) in enumerate(zip(graph_losses, eager_losses)):
        assert_rel(g, e, f"loss at step {i}")
    eager_params = dict(eager.named_parameters())
    for name, p in graphed.named_parameters():
        assert_rel(p, eager_params[name], f"parameter {name} after 6 steps")


# ---- torch.compile ----------------------------------------------------------------------------------

def test_torch_compile_fullgraph_matches_eager():
    import rnnfast.functional as F

    a = make_args("lstm", 7, 4, 5, 16, device="cuda", dtype=torch.float32)
    params = {k: v.clone().requires_grad_() for k, v in a.items() if v is not None}

    def f(p):
        out, hy, cy = F.lstm(p["input"], p["hx"], p["cx"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
        return (out.tanh().sum() + hy.sum() * 2 + cy.square().sum(),)

    compiled = torch.compile(f, fullgraph=True)
    (loss_e,) = f(params)
    grads_e = torch.autograd.grad(loss_e, list(params.values()))
    (loss_c,) = compiled(params)
    grads_c = torch.autograd.grad(loss_c, list(params.values()))
    assert_rel(loss_c, loss_e, "compiled loss")
    for name, gc, ge in zip(params, grads_c, grads_e):
        assert_rel(gc, ge, f"compiled grad {name}")


def test_opcheck_on_cuda():
    for cell in CELLS:
        a = make_args(cell, 4, 3, 5, 6, device="cuda", dtype=torch.float32)
        ops = torch.ops.rnnfast
        if cell == "lstm":
            torch.library.opcheck(ops.lstm_forward.default, (a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"],
                                                              a["b_ih"], a["b_hh"], False),
                                  test_utils=("test_schema", "test_faketensor"))
        elif cell.startswith("gru"):
            torch.library.opcheck(ops.gru_forward.default, (a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"],
                                                             a["b_hh"], True, cell == "gru"),
                                  test_utils=("test_schema", "test_faketensor"))
        else:
            torch.library.opcheck(getattr(ops, f"{cell}_forward").default,
                                  (a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], False),
                                  test_utils=("test_schema", "test_faketensor"))
