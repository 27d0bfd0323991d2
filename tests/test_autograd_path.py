"""The recurrent forward ops' autograd: the C++ Autograd-key kernel and graph node of
csrc/autograd.cpp, which every caller gets (rnnfast.nn, rnnfast.functional through
rnnfast._ops.FORWARD, direct torch.ops.rnnfast calls, torch.compile's traced backward).

Bit for bit against the backward op called by hand with the same output gradients (what the node
must do: argument order, input_grad, None biases, lengths, zeros for unused outputs); against the
plain-PyTorch references (rnnfast.scratch, torch.nn) to float64 rounding; with gradcheck, hooks,
retain_graph, double backward, autocast, and torch.compile / torch.export / torch.func."""
import pytest
import torch
from torch._library import utils as library_utils
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import rnnfast
import rnnfast.functional as rf
from rnnfast import _ops, scratch
from rnnfast._cells import CELLS, lookup

# (op prefix, options) for every registry row and variant: gru's reset_after both ways, the LSTM
# projection op
VARIANTS = [(c.name, opts) for c in CELLS.values() for opts in ([(True,), (False,)] if c.options else [()])]
VARIANTS += [(c.projection.name, ()) for c in CELLS.values() if c.projection is not None]
VARIANT_IDS = [f"{p}{'-reset_after' + str(o[0]) if o else ''}" for p, o in VARIANTS]


@pytest.fixture
def fill_defaults_calls(monkeypatch):
    """Counts calls of torch._library.utils.fill_defaults (torch.library's Python autograd kernel
    calls it on every grad-mode call of an op it wires; the forward ops' C++ kernel never does)."""
    calls = []
    real = library_utils.fill_defaults

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(library_utils, "fill_defaults", spy)
    return calls


def op_args(prefix, options, *, T=4, B=3, I=5, H=6, P=4, bias=True, reverse=False, lengths=None,
            dtype=torch.float64, seed=0):
    """Leaf tensors (requiring grad) and the positional arguments of the forward op `prefix`."""
    cell = lookup(prefix)
    proj = cell.projection is not None and prefix == cell.projection.name
    g = torch.Generator().manual_seed(seed)
    G = cell.num_gates
    hw = P if proj else H

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    input, hx = r(T, B, I), r(B, hw)
    states = [hx, r(B, H)] if cell.has_cell_state else [hx]
    weights = [r(G * H, I), r(G * H, hw)] + ([r(P, H)] if proj else [])
    biases = [r(G * H), r(G * H)] if bias else [None, None]
    args = (input, *states, *weights, *biases, reverse, *options, lengths)
    return args


def leaves(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def run(call, args, seed=1):
    """Outputs (without the workspace) and the gradients of every leaf of a weighted sum of them."""
    outs = call(*args)[:-1]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves(args))
    return [o.detach() for o in outs], list(grads)


def assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y)


def by_hand(prefix, args, seed=1):
    """run()'s outputs and gradients without autograd: the forward op, then the backward op called
    directly with the same output gradients (what the C++ node must pass it)."""
    n_opts = len(lookup(prefix).options)
    n_front = len(args) - 4 - n_opts  # input, states, weights (before b_ih, b_hh, reverse, options, lengths)
    fwd = getattr(torch.ops.rnnfast, f"{prefix}_forward")
    bwd = getattr(torch.ops.rnnfast, f"{prefix}_backward")
    with torch.no_grad():
        outs = fwd(*args)
        g = torch.Generator().manual_seed(seed)
        grads_out = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs[:-1]]
        res = bwd(*grads_out, *args[:n_front], outs[0], outs[-1], *args[n_front + 2:-1],
                  input_grad=args[0].requires_grad, lengths=args[-1])
    grads = [r for a, r in zip(args[:n_front + 2], res) if isinstance(a, torch.Tensor) and a.requires_grad]
    return list(outs[:-1]), grads


def callers(prefix):
    """What the modules call (rnnfast._ops.FORWARD) and the op itself: one autograd kernel under both."""
    return {"FORWARD": _ops.FORWARD[prefix], "torch.ops": getattr(torch.ops.rnnfast, f"{prefix}_forward")}


# ---- the op's autograd against its backward op called by hand ------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("prefix,options", VARIANTS, ids=VARIANT_IDS)
def test_autograd_equals_backward_op_by_hand_bit_for_bit(prefix, options, bias, reverse, dtype, fill_defaults_calls):
    args = op_args(prefix, options, bias=bias, reverse=reverse, dtype=dtype)
    ref_out, ref_grads = by_hand(prefix, args)
    for call in callers(prefix).values():
        out, grads = run(call, args)
        assert_identical(out, ref_out)
        assert_identical(grads, ref_grads)
    assert not fill_defaults_calls  # no torch.library Python autograd kernel on the way


@pytest.mark.parametrize("prefix,options", VARIANTS, ids=VARIANT_IDS)
def test_autograd_with_lengths_equals_backward_op_by_hand(prefix, options):
    args = op_args(prefix, options, lengths=torch.tensor([4, 1, 3]), reverse=True)
    ref_out, ref_grads = by_hand(prefix, args)
    out, grads = run(_ops.FORWARD[prefix], args)
    assert_identical(out, ref_out)
    assert_identical(grads, ref_grads)


@pytest.mark.parametrize("prefix,options", VARIANTS, ids=VARIANT_IDS)
def test_autograd_needs_input_grad_subsets(prefix, options):
    """Only some arguments requiring grad: gradients for those (dx skipped unless the input needs
    it), bit for bit as the backward op by hand."""
    for keep in ([0], [1], [2, 3], [-1]):  # input only, hx only, some weights, a bias
        args = list(op_args(prefix, options))
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        wanted = {tensors[k] for k in keep}
        for i in tensors:
            args[i] = args[i].detach().requires_grad_(i in wanted)
        out, grads = run(_ops.FORWARD[prefix], args)
        ref_out, ref_grads = by_hand(prefix, args)
        assert len(grads) == len(keep)
        assert_identical(out, ref_out)
        assert_identical(grads, ref_grads)


def test_gradient_wrt_weights_only_skips_the_input_gradient():
    """autograd.grad for a weight alone: the node asks the backward op for input_grad=False (the
    input requires grad, but this backward does not need dx); for the input, True."""
    seen = []
    backward = torch.ops.rnnfast.gru_backward.default
    at = [a.name for a in backward._schema.arguments].index("input_grad")

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is backward:
                seen.append(args[at] if len(args) > at else kwargs.get("input_grad", True))
            return func(*args, **kwargs)
    args = op_args("gru", (True,))
    out = _ops.FORWARD["gru"](*args)
    with Spy():
        torch.autograd.grad(out[1].sum(), [args[3]], retain_graph=True)  # w_hh
        torch.autograd.grad(out[1].sum(), [args[0]])
    assert seen == [False, True]


@pytest.mark.parametrize("prefix,options", VARIANTS, ids=VARIANT_IDS)
def test_autograd_gradcheck_float64(prefix, options):
    args = op_args(prefix, options, T=3, B=2, I=3, H=3, P=2, lengths=torch.tensor([3, 2]))
    call = _ops.FORWARD[prefix]

    def f(*ts):
        it = iter(ts)
        full = [next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
        return call(*full)[:-1]
    assert torch.autograd.gradcheck(f, leaves(args), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("prefix,options", [v for v in VARIANTS if v[0] in CELLS], ids=[
    i for v, i in zip(VARIANTS, VARIANT_IDS) if v[0] in CELLS])
def test_autograd_matches_scratch_reference(prefix, options, bias, reverse):
    """The gradients against rnnfast.scratch's plain-PyTorch layer (autograd of matmuls and
    pointwise ops), float64."""
    args = op_args(prefix, options, bias=bias, reverse=reverse)
    out, grads = run(_ops.FORWARD[prefix], args)
    cell = CELLS[prefix]
    n = 2 if cell.has_cell_state else 1
    x, states, (w_ih, w_hh), (b_ih, b_hh) = args[0], args[1:1 + n], args[1 + n:3 + n], args[3 + n:5 + n]

    def reference(*_):
        outputs, last = scratch.torch_layer(prefix, x, states if n == 2 else states[0], w_ih, w_hh, b_ih, b_hh,
                                            reverse=reverse, reset_after=options[0] if options else True)
        return (outputs, *(last if n == 2 else (last,)), None)
    ref_out, ref_grads = run(reference, args)
    for a, b in zip(out + grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prefix,options", VARIANTS, ids=VARIANT_IDS)
def test_autograd_node_and_non_differentiable_workspace(prefix, options):
    args = op_args(prefix, options)
    for call in callers(prefix).values():
        *outs, ws = call(*args)
        assert outs[0].grad_fn.name() == f"rnnfast::{prefix}_forwardBackward"
        assert all(o.grad_fn is outs[0].grad_fn for o in outs)  # one node for output, hy[, cy]
        assert ws.grad_fn is None and not ws.requires_grad


@pytest.mark.parametrize("prefix,options", VARIANTS, ids=VARIANT_IDS)
def test_autograd_without_grad_records_nothing(prefix, options, fill_defaults_calls):
    args = op_args(prefix, options)
    ref = [o.detach() for o in getattr(torch.ops.rnnfast, f"{prefix}_forward")(*args)[:-1]]
    for call in callers(prefix).values():
        with torch.no_grad():
            out = call(*args)[:-1]
        assert all(o.grad_fn is None and not o.requires_grad for o in out)
        assert_identical(list(out), ref)
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]  # grad mode, nothing requires grad
        out = call(*plain)[:-1]
        assert all(o.grad_fn is None and not o.requires_grad for o in out)
        assert_identical(list(out), ref)
        with torch.inference_mode():
            assert_identical(list(call(*args)[:-1]), ref)
    assert not fill_defaults_calls


@pytest.mark.parametrize("prefix,options", VARIANTS, ids=VARIANT_IDS)
def test_double_backward_raises(prefix, options):
    for call in callers(prefix).values():
        args = op_args(prefix, options)
        out = call(*args)
        first = torch.autograd.grad(out[1].pow(2).sum(), leaves(args), create_graph=True)
        with pytest.raises(NotImplementedError, match=rf"double backward through rnnfast\.{prefix} "):
            torch.autograd.grad(sum(g.sum() for g in first), leaves(args))


def test_bad_arguments_raise_the_ops_error():
    args = list(op_args("gru", (True,)))
    args[1] = args[1].detach()[:, :2].requires_grad_(True)  # hx of the wrong width
    with pytest.raises(RuntimeError, match=r"rnnfast\.gru: w_hh must have shape") as err:
        _ops.FORWARD["gru"](*args)
    with pytest.raises(RuntimeError) as direct:
        torch.ops.rnnfast.gru_forward(*args)
    assert str(err.value) == str(direct.value)


# ---- modules and cells against torch.nn ----------------------------------------------------------

def _module_cases():
    cases = []
    for c in CELLS.values():
        kw = {"nonlinearity": c.nonlinearity} if c.nonlinearity else {}
        cls = {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(c.mode, c.mode)
        cases.append((cls, kw))  # torch.nn's GRU is reset_after=True (the scratch test covers False)
    cases.append(("LSTM", dict(proj_size=3)))
    return cases


MODULE_CASES = _module_cases()
MODULE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in MODULE_CASES]
LAYOUTS = {"1layer": dict(), "2layer-bidir-nobias": dict(num_layers=2, bidirectional=True, bias=False),
           "batch_first": dict(batch_first=True)}


def module_grads(module, x, state, packed_lengths=None):
    """Outputs and gradients (input, states, every parameter) of a weighted sum of the outputs."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    state = None if state is None else tuple(s.detach().requires_grad_(True) for s in state)
    arg = x if packed_lengths is None else pack_padded_sequence(x, packed_lengths, enforce_sorted=False)
    st = None if state is None else (state if len(state) == 2 else state[0])
    out = module(arg) if st is None else module(arg, st)
    flat = [out[0].data if packed_lengths is not None else out[0]]
    flat += list(out[1]) if isinstance(out[1], tuple) else [out[1]]
    if isinstance(out, torch.Tensor):  # RNNCell / GRUCell
        flat = [out]
    elif isinstance(module, (torch.nn.LSTMCell, rnnfast.LSTMCell)):
        flat = list(out)
    g = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in flat)
    loss.backward()
    grads = [x.grad] + ([s.grad for s in state] if state is not None else [])
    grads += [p.grad for p in module.parameters()]
    return [o.detach() for o in flat], grads


def _make_modules(name, kw, layout, dtype):
    """The rnnfast module and torch.nn's with the same weights."""
    torch.manual_seed(0)
    ours = getattr(rnnfast, name)(5, 4, **kw, **LAYOUTS[layout]).to(dtype)
    ref = getattr(torch.nn, name)(5, 4, **kw, **LAYOUTS[layout]).to(dtype)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _module_state(module, B, dtype):
    D = 2 if module.bidirectional else 1
    L = module.num_layers * D
    h = torch.randn(L, B, module.proj_size or module.hidden_size, dtype=dtype)
    return (h, torch.randn(L, B, module.hidden_size, dtype=dtype)) if module.mode == "LSTM" else (h,)


def assert_close_all(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name,kw", MODULE_CASES, ids=MODULE_IDS)
def test_module_gradients_match_torch_nn(name, kw, layout, fill_defaults_calls):
    ours, ref = _make_modules(name, kw, layout, torch.float64)
    torch.manual_seed(1)
    x = torch.randn(*((3, 6, 5) if ours.batch_first else (6, 3, 5)), dtype=torch.float64)
    state = _module_state(ours, 3, torch.float64)
    got = module_grads(ours, x, state)
    assert not fill_defaults_calls
    want = module_grads(ref, x, state)
    assert_close_all(got[0], want[0])
    assert_close_all(got[1], want[1])
    assert all(g is not None for g in got[1])


@pytest.mark.parametrize("name,kw", MODULE_CASES, ids=MODULE_IDS)
def test_module_packed_sequence_gradients_match_torch_nn(name, kw):
    ours, ref = _make_modules(name, kw, "2layer-bidir-nobias", torch.float64)
    torch.manual_seed(1)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3])
    state = _module_state(ours, 3, torch.float64)
    got = module_grads(ours, x, state, lengths)
    want = module_grads(ref, x, state, lengths)
    assert_close_all(got[0], want[0])
    assert_close_all(got[1], want[1])


CELL_CASES = [("RNNCell", {}), ("RNNCell", dict(nonlinearity="relu")), ("GRUCell", {}),
              ("GRUCell", dict(reset_after=False)), ("LSTMCell", {})]
CELL_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CELL_CASES]
TORCH_CELL_CASES = [(n, kw) for n, kw in CELL_CASES if "reset_after" not in kw]
TORCH_CELL_IDS = [i for (n, kw), i in zip(CELL_CASES, CELL_IDS) if "reset_after" not in kw]


def _cells(name, kw, bias=True):
    """The rnnfast cell and torch.nn's with the same weights (None: torch.nn has no such cell)."""
    torch.manual_seed(0)
    ours = getattr(rnnfast, name)(5, 4, bias=bias, **kw).double()
    if "reset_after" in kw:
        return ours, None
    ref = getattr(torch.nn, name)(5, 4, bias=bias, **kw).double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("name,kw", TORCH_CELL_CASES, ids=TORCH_CELL_IDS)
def test_cell_loop_gradients_match_torch_nn(name, kw, batched, bias, fill_defaults_calls):
    xs = torch.randn(4, *((3, 5) if batched else (5,)), dtype=torch.float64)
    hshape = (3, 4) if batched else (4,)
    h0 = torch.randn(hshape, dtype=torch.float64)
    c0 = torch.randn(hshape, dtype=torch.float64)

    def loop(cell):
        cell.zero_grad(set_to_none=True)
        x = xs.clone().requires_grad_(True)
        h, c = h0.clone().requires_grad_(True), c0.clone().requires_grad_(True)
        state = (h, c) if name == "LSTMCell" else h
        outs = []
        for t in range(xs.shape[0]):
            state = cell(x[t], state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        torch.stack(outs).pow(2).sum().backward()
        grads = [x.grad, h.grad] + ([c.grad] if name == "LSTMCell" else [])
        return [torch.stack(outs).detach()], grads + [p.grad for p in cell.parameters()]
    ours, ref = _cells(name, kw, bias)
    got = loop(ours)
    assert not fill_defaults_calls
    want = loop(ref)
    assert_close_all(got[0], want[0])
    assert_close_all(got[1], want[1])


def test_gru_cell_forward_backward_never_calls_fill_defaults(fill_defaults_calls):
    """The regression the C++ kernel exists for: torch.library's autograd kernel called
    fill_defaults on every grad-mode forward of a cell (~60 µs, most of a small GRUCell step)."""
    torch.manual_seed(0)
    cell = rnnfast.GRUCell(8, 8)
    h = None
    for x in torch.randn(3, 2, 8):
        h = cell(x, h)
    h.sum().backward()
    assert cell.weight_hh.grad is not None
    assert fill_defaults_calls == []


@pytest.mark.parametrize("name,kw", CELL_CASES, ids=CELL_IDS)
def test_cell_hooks_and_retain_graph(name, kw):
    def once(cell):
        seen = []
        cell.register_full_backward_hook(lambda m, gi, go: seen.append(
            [None if g is None else g.clone() for g in (*gi, *go)]))
        torch.manual_seed(1)
        x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        h.register_hook(lambda g: g * 2)  # a tensor hook doubling hx's gradient
        state = (h, torch.randn(3, 4, dtype=torch.float64)) if name == "LSTMCell" else h
        out = cell(x, state)
        loss = (out[0] if isinstance(out, tuple) else out).pow(3).sum()
        loss.backward(retain_graph=True)
        first = [x.grad.clone(), h.grad.clone(), cell.weight_hh.grad.clone()]
        loss.backward()  # the retained graph runs again and accumulates
        second = [x.grad, h.grad, cell.weight_hh.grad]
        for a, b in zip(first, second):
            torch.testing.assert_close(b, 2 * a, rtol=1e-12, atol=1e-12)
        return first + second, [g for call in seen for g in call]
    ours, ref = _cells(name, kw)
    got = once(ours)
    assert len(got[1]) > 0
    if ref is not None:
        want = once(ref)
        assert_close_all(got[0], want[0])
        assert_close_all(got[1], want[1])


@pytest.mark.parametrize("name,kw", CELL_CASES, ids=CELL_IDS)
def test_cell_gradcheck_float64(name, kw, fill_defaults_calls):
    torch.manual_seed(0)
    cell = getattr(rnnfast, name)(3, 4, **kw).double()
    names = [n for n, _ in cell.named_parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h, c, *ps):
        return torch.func.functional_call(cell, dict(zip(names, ps)), (x, (h, c) if name == "LSTMCell" else h))
    params = [p.detach().clone().requires_grad_(True) for p in cell.parameters()]
    assert torch.autograd.gradcheck(f, (x, h, c, *params), eps=1e-6, atol=1e-7)
    assert not fill_defaults_calls


@pytest.mark.parametrize("name", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_functional_gets_the_cpp_node(name, fill_defaults_calls):
    cell = CELLS[name]
    options = (True,) if cell.options else ()
    args = op_args(name, options)
    n = 3 if cell.has_cell_state else 2
    tensors, biases = args[:n + 2], args[n + 2:n + 4]
    out = getattr(rf, name)(*tensors, *biases, reverse=True)
    assert out[0].grad_fn.name() == f"rnnfast::{name}_forwardBackward"
    grads = torch.autograd.grad(sum(o.sum() for o in out), leaves(args))
    assert not fill_defaults_calls
    ref_args = op_args(name, options, reverse=True)
    ref_out = getattr(torch.ops.rnnfast, f"{name}_forward")(*ref_args)[:-1]
    ref_grads = torch.autograd.grad(sum(o.sum() for o in ref_out), leaves(ref_args))
    assert_identical(list(grads), list(ref_grads))


def test_autocast_equals_float32_call():
    """Under CPU autocast a bfloat16 call runs the float32 op: the same outputs and gradients as
    calling with the arguments cast to float32 by hand."""
    def once(autocast):
        torch.manual_seed(0)
        cell = rnnfast.GRUCell(5, 4)
        x, h = torch.randn(3, 5).bfloat16(), torch.randn(3, 4).bfloat16()
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = cell(x, h)
        else:
            out = cell(x.float(), h.float())
        assert out.dtype == torch.float32
        out.sum().backward()
        return [out.detach(), cell.weight_ih.grad, cell.bias_hh.grad]
    assert_identical(once(True), once(False))


# ---- graph capture and transforms ----------------------------------------------------------------

def _graph_targets(gm):
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


def _holds_op(gm, name):
    """Whether an FX graph calls rnnfast's op `name` (Dynamo records the packet, export the overload)."""
    packet = getattr(torch.ops.rnnfast, name)
    return any(n.target in (packet, packet.default) for n in gm.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("name,kw", [("GRUCell", {}), ("LSTM", dict(proj_size=2)), ("RNN", {})])
def test_torch_compile_graph_holds_the_registered_op(name, kw):
    torch.manual_seed(0)
    module = getattr(rnnfast, name)(3, 4, **kw)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    x = torch.randn(2, 3) if name.endswith("Cell") else torch.randn(5, 2, 3)
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    out = compiled(x)
    ref = module(x)
    for a, b in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(graphs) == 1
    op = {"GRUCell": "gru", "LSTM": "lstm_proj", "RNN": "rnn_tanh"}[name]
    assert _holds_op(graphs[0], f"{op}_forward")
    assert not any("forward_function" in t or "autograd_function_apply" in t for t in _graph_targets(graphs[0]))


def test_torch_compile_aot_backward_equals_eager():
    """AOTAutograd traces the C++ node's backward: the backward graph calls the backward op."""
    from torch._dynamo.backends.common import aot_autograd
    graphs = {}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = gm
            return gm.forward
        return compiler
    torch.manual_seed(0)
    module = rnnfast.LSTMCell(3, 4)
    x = torch.randn(2, 3)
    backend = aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw"))
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    compiled(x)[0].pow(2).sum().backward()
    got = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module(x)[0].pow(2).sum().backward()
    for a, b in zip(got, [p.grad for p in module.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert _holds_op(graphs["fw"], "lstm_forward") and _holds_op(graphs["bw"], "lstm_backward")


def test_torch_export_graph_holds_the_registered_op():
    program = torch.export.export(rnnfast.GRU(3, 4), (torch.randn(5, 2, 3),))
    assert _holds_op(program.graph_module, "gru_forward")


def test_functorch_vmap_runs():
    """vmap runs the op per sample (through the C++ autograd kernel)."""
    torch.manual_seed(0)
    cell = rnnfast.GRUCell(3, 4)
    h = torch.randn(2, 4)
    xs = torch.randn(5, 2, 3)
    batched = torch.func.vmap(lambda x: cell(x, h))(xs)
    for i in range(5):
        torch.testing.assert_close(batched[i], cell(xs[i], h), rtol=1e-6, atol=1e-6)


FUNC_GRAD_CASES = [("GRU", {}), ("LSTM", {"num_layers": 2}), ("RNN", {"bidirectional": True, "nonlinearity": "relu"}),
                   ("LSTM", {"proj_size": 3}), ("GRUCell", {}), ("LSTMCell", {}), ("RNNCell", {})]


@pytest.mark.parametrize("name,kw", FUNC_GRAD_CASES, ids=lambda v: str(v))
def test_functorch_grad_matches_torch_nn(name, kw):
    """torch.func.grad differentiates with create_graph: the node calls the backward op with grad mode
    on, through the backward op's C++ autograd kernel (the double-backward refusal), whose grads carry
    that refusal as their history. Gradients of the parameters and of the input, against torch.nn's."""
    torch.manual_seed(0)
    got = getattr(rnnfast, name)(4, 6, **kw).double()
    ref = getattr(torch.nn, name)(4, 6, **kw).double()
    ref.load_state_dict(got.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    if name.endswith("Cell"):
        x = x[0]

    def loss(module):
        def f(params, x):
            out = torch.func.functional_call(module, params, (x,))
            out = out[0] if isinstance(out, tuple) else out
            return out.pow(2).sum()
        return f

    g = torch.func.grad(loss(got), argnums=(0, 1))(dict(got.named_parameters()), x)
    r = torch.func.grad(loss(ref), argnums=(0, 1))(dict(ref.named_parameters()), x)
    assert g[0].keys() == r[0].keys()
    for k in g[0]:
        torch.testing.assert_close(g[0][k], r[0][k], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g[1], r[1], rtol=1e-10, atol=1e-10)


def test_double_backward_still_refused_after_create_graph():
    """The grads of a create_graph backward exist and require grad; differentiating them raises."""
    m = rnnfast.LSTM(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    gx, = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    assert gx.requires_grad and gx.grad_fn is not None
    with pytest.raises(NotImplementedError, match=r"double backward through rnnfast\.lstm is not supported"):
        gx.sum().backward()


# ---- the cells' usual-call shortcut (_CellMixin._step) against the fully checked step -------------

@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no_state"])
@pytest.mark.parametrize("name,kw", CELL_CASES, ids=CELL_IDS)
def test_cell_step_shortcut_equals_checked_step(name, kw, with_state):
    torch.manual_seed(0)
    cell = getattr(rnnfast, name)(5, 4, **kw).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    states = (torch.randn(3, 4, dtype=torch.float64),) * (2 if name == "LSTMCell" else 1) if with_state else None
    results = []
    for step in (cell._step, cell._checked_step):
        cell.zero_grad(set_to_none=True)
        out = step(x, states)
        sum(o.pow(2).sum() for o in out).backward()
        results.append([o.detach() for o in out] + [p.grad for p in cell.parameters()])
    assert_identical(*results)


def test_cell_step_shortcut_leaves_other_calls_to_the_checked_step(monkeypatch):
    """A state of another dtype (autocast) or shape goes through _checked_step; unbatched input runs
    in C++ (rnnfast._C.forward_layers) as a batch of one."""
    cell = rnnfast.GRUCell(5, 4)
    checked = []
    real = type(cell)._checked_step
    monkeypatch.setattr(type(cell), "_checked_step", lambda self, *a: checked.append(1) or real(self, *a))
    cell(torch.randn(3, 5), torch.randn(3, 4))
    cell(torch.randn(3, 5))
    cell(torch.randn(5), torch.randn(4))
    assert checked == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cell(torch.randn(3, 5), torch.randn(3, 4).bfloat16())
    with pytest.raises(RuntimeError, match=r"GRUCell: Expected hidden size \(3, 4\), got \[3, 3\]"):
        cell(torch.randn(3, 5), torch.randn(3, 3))
    assert checked == [1, 1]


@pytest.mark.parametrize("big", [False, True], ids=["filled", "broadcast"])
@pytest.mark.parametrize("unused", ["output", "hy"])
def test_unused_output_gradient_is_zero(unused, big):
    """An output the loss does not use gets a zero gradient in backward: filled for small outputs,
    a broadcast zero above 2**14 elements (csrc/autograd.cpp's kSmallZeros); the same gradients as
    an explicit zero."""
    T, B, H = (8, 64, 40) if big else (2, 3, 4)
    assert (T * B * H > 1 << 14) == big
    args = op_args("lstm", (), T=T, B=B, I=3, H=H, dtype=torch.float64)
    for call in callers("lstm").values():
        def loss(explicit_zero):
            out, hy, cy, _ = call(*args)
            used, other = (hy, out) if unused == "output" else (out, hy)
            total = used.sum() + cy.sum()
            return total + (other * 0).sum() if explicit_zero else total
        got = torch.autograd.grad(loss(False), leaves(args))
        ref = torch.autograd.grad(loss(True), leaves(args))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
