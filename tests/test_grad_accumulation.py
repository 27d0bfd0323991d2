"""Weight gradients accumulated in place across the nodes of one backward pass
(csrc/core/grad_accumulation.h, PendingWeightGrads in csrc/autograd.cpp).

A later step's node adds its dW_ih / dW_hh into the gradient an earlier node handed the autograd
engine, when that tensor is provably still the engine's alone and in the same graph task. These tests
hold the gradients equal to torch.nn's wherever the engine, hooks, other producers or other graph
tasks could see that tensor, and check that the in-place path is really taken where it should be.
"""
import threading

import pytest
import torch
import torch.utils.checkpoint

import rnnfast
from test_small_sizes import CELLS as BY_KIND, cell_pair

KIND = {name: kind for kind, (name, _) in BY_KIND.items()}
CELLS = list(KIND)
TOL = dict(rtol=1e-4, atol=1e-4)  # float32 over sums of up to 300 products
# Sizes whose weights defer their gradients along the chain (W_ih and W_hh of 2^16 elements or
# more, csrc/autograd.cpp kCarryMinWeightElements), so every test here runs both mechanisms.
IN, HID = 300, 150


def pair(name, I=IN, H=HID, dtype=torch.float32, **kw):
    return cell_pair(KIND[name], I, H, dtype, **kw)


def loop(cell, xs, state=None):
    total = 0
    for x in xs:
        state = cell(x, state)
        h = state[0] if isinstance(state, tuple) else state
        total = total + (h * torch.arange(1, h.size(-1) + 1, dtype=h.dtype) / h.size(-1)).sum()
    return total, state


def grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def assert_grads_close(ref, new, **tol):
    for (n, p), q in zip(ref.named_parameters(), new.parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, **(tol or TOL), msg=lambda m: f"{n}: {m}")


def weight_add_calls(fn, shapes):
    """aten::add_ calls on tensors of the given shapes while fn() runs (the engine's accumulation)."""
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "aten::add_" and e.input_shapes and
               tuple(e.input_shapes[0]) in shapes)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("B", [1, 3])
def test_cell_loop_matches_torch_and_accumulates_in_place(name, B):
    ref, new = pair(name)
    xs = torch.randn(12, B, IN)
    loop(ref, xs)[0].backward()
    total, _ = loop(new, xs)
    shapes = {tuple(new.weight_ih.shape), tuple(new.weight_hh.shape)}
    adds = weight_add_calls(total.backward, shapes)
    assert_grads_close(ref, new)
    # torch.nn's engine adds each step's fresh weight gradients: 2 * (steps - 1) adds. rnnfast's
    # nodes add into the first gradient themselves (GEMMs with beta = 1): none.
    assert adds == 0


@pytest.mark.parametrize("name", CELLS)
def test_float64_and_no_bias(name):
    ref, new = pair(name, dtype=torch.float64, bias=False)
    xs = torch.randn(7, 2, IN, dtype=torch.float64)
    loop(ref, xs)[0].backward()
    loop(new, xs)[0].backward()
    assert_grads_close(ref, new, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
def test_tied_weights(name):
    """weight_ih is weight_hh: both edges of every node lead to one gradient."""
    ref, new = pair(name, I=200, H=200)
    for m in (ref, new):
        m.weight_hh = m.weight_ih
    xs = torch.randn(9, 2, 200)
    loop(ref, xs)[0].backward()
    loop(new, xs)[0].backward()
    torch.testing.assert_close(new.weight_ih.grad, ref.weight_ih.grad, **TOL)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("where", ["before", "after"])
def test_other_producers_of_the_weight_gradient(name, where):
    """A regularizer's gradient reaches the same weight before or after the steps' in the engine."""
    ref, new = pair(name)
    xs = torch.randn(8, 2, IN)
    for m in (ref, new):
        total, _ = loop(m, xs)
        reg = (m.weight_hh ** 2).sum() + m.weight_ih.sum() * 3
        # the order of the two terms decides which gradient the engine receives first
        (reg + total if where == "before" else total + reg).backward()
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_hooks_see_the_whole_gradient_once(name):
    ref, new = pair(name)
    xs = torch.randn(10, 2, IN)
    seen = {}
    for tag, m in (("ref", ref), ("new", new)):
        seen[tag] = []
        m.weight_hh.register_hook(lambda g, s=seen[tag]: s.append(g.clone()))
        h = m.weight_ih.register_hook(lambda g: g * 2)  # a hook that changes the gradient
        loop(m, xs)[0].backward()
        h.remove()
    assert len(seen["new"]) == len(seen["ref"]) == 1
    torch.testing.assert_close(seen["new"][0], seen["ref"][0], **TOL)
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("replace", [False, True])
def test_post_hook_on_a_node_keeps_engine_semantics(name, replace):
    """A hook on a step's node sees (and may keep, or replace) the gradients it returns: what it
    kept must never change afterwards, and replacing them must not lose later steps' adds."""
    ref, new = pair(name)
    xs = torch.randn(6, 2, IN)
    kept, snapshots = [], []

    def hook(grad_inputs, grad_outputs):
        kept.extend(g for g in grad_inputs if g is not None)
        snapshots.extend(g.clone() for g in grad_inputs if g is not None)
        if replace:
            return tuple(None if g is None else g.clone() for g in grad_inputs)

    for m in (ref, new):
        total, state = loop(m, xs)
        if m is new:
            h = state[0] if isinstance(state, tuple) else state
            h.grad_fn.register_hook(hook)
        total.backward()
    assert len(kept) >= 4
    for g, snap in zip(kept, snapshots):
        assert torch.equal(g, snap)
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_autograd_grad_and_partial_inputs(name):
    ref, new = pair(name)
    xs = torch.randn(9, 3, IN)
    out = {}
    for tag, m in (("ref", ref), ("new", new)):
        total, _ = loop(m, xs)
        out[tag] = torch.autograd.grad(total, [m.weight_hh, m.bias_ih], retain_graph=True)
        out[tag + "_ih"] = torch.autograd.grad(total, [m.weight_ih])
    for a, b in zip(out["new"] + out["new_ih"], out["ref"] + out["ref_ih"]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("name", CELLS)
def test_retain_graph_twice_and_grad_accumulation_across_backwards(name):
    ref, new = pair(name)
    xs = torch.randn(7, 2, IN)
    for m in (ref, new):
        total, _ = loop(m, xs)
        total.backward(retain_graph=True)
        total.backward()  # a second graph task over the same nodes: adds into .grad, not into task 1's
        loop(m, xs[:3])[0].backward()
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_truncated_backward_per_chunk(name):
    """Backward every few steps with a detached state (truncated BPTT): one graph task per chunk."""
    ref, new = pair(name)
    xs = torch.randn(12, 2, IN)
    for m in (ref, new):
        state = None
        for chunk in xs.split(4):
            total, state = loop(m, chunk, state)
            total.backward()
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_create_graph_and_anomaly_mode(name):
    ref, new = pair(name)
    xs = torch.randn(5, 2, IN)
    for m in (ref, new):
        total, _ = loop(m, xs)
        g = torch.autograd.grad(total, [m.weight_hh], create_graph=True)[0]
        m.weight_hh.grad = g.detach()
    torch.testing.assert_close(new.weight_hh.grad, ref.weight_hh.grad, **TOL)
    for m in (ref, new):
        m.zero_grad(set_to_none=True)
        with torch.autograd.detect_anomaly():
            loop(m, xs)[0].backward()
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_steps(name, reentrant):
    """Reentrant checkpointing runs the inner steps' backward as a nested graph task."""
    ref, new = pair(name)
    xs = torch.randn(8, 2, IN)

    def run(m):
        def chunk(x0, x1, *state):
            s = state if len(state) > 1 else state[0]
            s = m(x0, s)
            s = m(x1, s)
            return s
        total, state = loop(m, xs[:3])
        s = torch.utils.checkpoint.checkpoint(chunk, xs[3], xs[4], *(state if isinstance(state, tuple) else (state,)),
                                              use_reentrant=reentrant)
        total2, _ = loop(m, xs[5:], s)
        h = s[0] if isinstance(s, tuple) else s
        (total + total2 + h.sum()).backward()

    run(ref)
    run(new)
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_non_leaf_weights_through_functional_call(name):
    """Weights computed from other tensors (a parametrization): the edges lead to a MulBackward node."""
    ref, new = pair(name)
    xs = torch.randn(6, 2, IN)
    result = {}
    for tag, m in (("ref", ref), ("new", new)):
        scale = torch.tensor(1.5, requires_grad=True)
        params = {k: v * scale for k, v in m.named_parameters()}
        total, _ = loop(lambda x, s: torch.func.functional_call(m, params, (x, s)), xs)
        total.backward()
        result[tag] = (scale.grad, [p.grad.clone() for p in m.parameters()])
    torch.testing.assert_close(result["new"][0], result["ref"][0], **TOL)
    for a, b in zip(result["new"][1], result["ref"][1]):
        torch.testing.assert_close(a, b, **TOL)


def test_two_modules_sharing_weights_interleaved():
    """Two GRUCells share weight_hh (tied decoders): both nodes' edges lead to one gradient."""
    torch.manual_seed(0)
    mods = {}
    for lib in (torch.nn, rnnfast):
        a, b = lib.GRUCell(4, 5), lib.GRUCell(4, 5)
        b.weight_hh = a.weight_hh
        mods[lib] = (a, b)
    rnnfast_a, rnnfast_b = mods[rnnfast]
    rnnfast_a.load_state_dict(mods[torch.nn][0].state_dict())
    rnnfast_b.load_state_dict(mods[torch.nn][1].state_dict())
    xs = torch.randn(10, 3, 4)
    for a, b in mods.values():
        h, total = None, 0
        for t, x in enumerate(xs):
            h = (a if t % 2 else b)(x, h)
            total = total + h.sum() * (t + 1)
        total.backward()
    for p, q in zip(list(mods[torch.nn][0].parameters()) + list(mods[torch.nn][1].parameters()),
                    list(rnnfast_a.parameters()) + list(rnnfast_b.parameters())):
        torch.testing.assert_close(q.grad, p.grad, **TOL)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_layer_called_several_times_in_one_graph(kind):
    """A sequence layer run twice per graph (long rows: the concatenating strategies then add in)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(6, 5, num_layers=2)
    new = getattr(rnnfast, kind)(6, 5, num_layers=2)
    new.load_state_dict(ref.state_dict())
    x1, x2 = torch.randn(40, 4, 6), torch.randn(3, 4, 6)
    for m in (ref, new):
        y1, s = m(x1)
        y2, _ = m(x2, s)
        y3, _ = m(x1[:2])
        (y1.sum() + (y2 ** 2).sum() + y3.mean()).backward()
    assert_grads_close(ref, new)


def test_lstm_projection_cell_steps():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(6, 5, proj_size=3)
    new = rnnfast.LSTM(6, 5, proj_size=3)
    new.load_state_dict(ref.state_dict())
    xs = torch.randn(6, 2, 6)
    for m in (ref, new):
        s, total = None, 0
        for x in xs:
            y, s = m(x[None], s)
            total = total + y.sum()
        total.backward()
    assert_grads_close(ref, new)


def test_concurrent_backward_in_threads():
    """Threads stepping one shared module and differentiating at once: one graph task each, all
    of them with edges into the same weights' AccumulateGrad nodes."""
    ref, new = pair("LSTMCell", I=128, H=128)
    xs = torch.randn(4, 10, 2, 128)
    expected = [torch.autograd.grad(loop(ref, x)[0], list(ref.parameters())) for x in xs]
    results = [[] for _ in xs]

    def work(i):
        for _ in range(5):
            results[i].append(torch.autograd.grad(loop(new, xs[i])[0], list(new.parameters())))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert len(got) == 5
        for rep in got:
            for a, b in zip(rep, want):
                torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind, kw", [("RNN", {}), ("GRU", {}), ("GRU", {"reset_after": False}), ("LSTM", {})],
                         ids=["RNN", "GRU", "GRU-reset_before", "LSTM"])
def test_cell_loop_equals_one_sequence_call(kind, kw):
    """The cell stepped T times (T nodes, in-place adds; for the reset_before GRU also into the
    mid-step GEMM's rows of W_hh) against rnnfast's layer over the same T steps (one node, fresh
    gradients): the same gradients."""
    torch.manual_seed(0)
    layer = getattr(rnnfast, kind)(IN, HID, **kw)
    cell = getattr(rnnfast, kind + "Cell")(IN, HID, **kw)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, name + "_l0"))
    xs = torch.randn(9, 3, IN)
    ws = torch.randn(9, 3, HID)
    out, _ = layer(xs)
    (out * ws).sum().backward()
    state, total = None, 0
    for x, w in zip(xs, ws):
        state = cell(x, state)
        total = total + ((state[0] if isinstance(state, tuple) else state) * w).sum()
    total.backward()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        torch.testing.assert_close(getattr(cell, name).grad, getattr(layer, name + "_l0").grad, **TOL)


def test_remembered_gradients_do_not_keep_a_deleted_model_alive():
    """What the nodes remember between steps (a gradient, the node its edge leads to) keeps
    neither alive: after backward, deleting the module frees its parameters' tensors (a view of each
    is then its storage's only user)."""
    import gc
    _, new = pair("LSTMCell", I=8, H=16)
    loop(new, torch.randn(5, 2, 8))[0].backward()
    storages = [p.detach().untyped_storage() for p in new.parameters()]  # each holds its storage once
    assert all(torch._C._storage_Use_Count(s._cdata) == 2 for s in storages)  # it and the parameter
    del new
    gc.collect()
    assert all(torch._C._storage_Use_Count(s._cdata) == 1 for s in storages)


# ---- Weight gradients deferred along the chain of steps (Carry, csrc/autograd.cpp) --------------

def weight_grad_rows(fn):
    """The rows (K) of every weight-gradient computation while fn() runs: a step's own, or a
    Carry's flush over all its rows (the profiler's rnnfast::weight_grad_rows, shapes [[K, G*H]])."""
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    return [e.input_shapes[0][0] for e in prof.events() if e.name == "rnnfast::weight_grad_rows"]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("B, steps", [(3, 12), (64, 10), (100, 7), (129, 3)])
def test_steps_defer_their_weight_gradients_to_few_gemms(name, B, steps):
    """Every step of a chain leaves its rows to its predecessor; a Carry is flushed at 256 rows and
    at the chain's first step, in one GEMM per weight over all its rows. Steps of more than 128
    rows do not defer. float64: the sums are the same to rounding. (W_ih and W_hh of 2^16
    elements or more: smaller weights do not defer, test_small_weights_do_not_defer.)"""
    ref, new = pair(name, dtype=torch.float64)
    xs = torch.randn(steps, B, IN, dtype=torch.float64)
    loop(ref, xs)[0].backward()
    total, _ = loop(new, xs)
    ks = weight_grad_rows(total.backward)
    assert_grads_close(ref, new, rtol=1e-10, atol=1e-10)
    # The walk backward from the last step: a step defers when it has a predecessor or holds rows
    # (the first step, t = 0, adds its rows to what it holds; alone it computes its own), and the
    # Carry is flushed when no further step fits or there is no predecessor. Steps of more than
    # 128 rows compute their own.
    expected, rows = [], 0
    for t in reversed(range(steps)):
        if 2 * B > 256 or (t == 0 and not rows):
            expected.append(B)
            continue
        rows += B
        if t == 0 or rows + B > 256:
            expected.append(rows)
            rows = 0
    assert ks == expected


@pytest.mark.parametrize("name", CELLS)
def test_small_weights_do_not_defer(name):
    """Below 2^16 weight elements every step computes its own weight gradients."""
    ref, new = pair(name, I=6, H=5)
    xs = torch.randn(5, 3, 6)
    loop(ref, xs)[0].backward()
    total, _ = loop(new, xs)
    assert weight_grad_rows(total.backward) == [3] * 5
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_a_state_feeding_two_successors(name):
    """h_0 feeds two steps (a tree): both hand their rows towards the same predecessor; the second
    to come flushes its own (one Carry per task there), and no row is lost or counted twice."""
    ref, new = pair(name)
    xs = torch.randn(5, 2, IN)
    for m in (ref, new):
        s0 = m(xs[0])
        a = m(xs[1], s0)
        b = m(xs[2], s0)
        a2 = m(xs[3], a)
        b2 = m(xs[4], b)
        h = [s[0] if isinstance(s, tuple) else s for s in (a2, b2)]
        (h[0].sum() * 2 + (h[1] ** 2).sum()).backward()
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_post_hook_on_a_middle_step_sees_that_steps_gradient(name):
    """A step whose node has a post hook is never handed a later step's rows, and keeps its own:
    the hook sees exactly that step's contribution to dW_hh, as the engine's semantics say."""
    ref, new = pair(name, dtype=torch.float64)
    xs = torch.randn(8, 2, IN, dtype=torch.float64)
    k = 4  # the hooked step
    # the reference: step k of torch.nn's loop runs on its own copy of the weights
    params = {n: p.detach().clone().requires_grad_(True) for n, p in ref.named_parameters()}
    state, total = None, 0
    for t, x in enumerate(xs):
        state = torch.func.functional_call(ref, params, (x, state)) if t == k else ref(x, state)
        h = state[0] if isinstance(state, tuple) else state
        total = total + (h * torch.arange(1, h.size(-1) + 1, dtype=h.dtype) / h.size(-1)).sum()
    total.backward()
    step_k_dw_hh = params["weight_hh"].grad

    seen = []
    state, total = None, 0
    for t, x in enumerate(xs):
        state = new(x, state)
        h = state[0] if isinstance(state, tuple) else state
        if t == k:
            w_hh_pos = 4 if isinstance(state, tuple) else 3  # input, hx[, cx], w_ih, w_hh, b_ih, b_hh
            h.grad_fn.register_hook(lambda gi, go: seen.append(gi[w_hh_pos].clone()))
        total = total + (h * torch.arange(1, h.size(-1) + 1, dtype=h.dtype) / h.size(-1)).sum()
    total.backward()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], step_k_dw_hh, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the whole gradient: the other steps' plus step k's
        for n, p in ref.named_parameters():
            p.grad += params[n].grad
    assert_grads_close(ref, new, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", CELLS)
def test_frozen_weight_and_state_through_another_op(name):
    """No deferral where not every weight wants a gradient (weight_ih frozen), nor across a state
    that passed through another op (h * 0.5): the gradients are torch.nn's either way."""
    ref, new = pair(name)
    xs = torch.randn(9, 3, IN)
    for m in (ref, new):
        m.weight_ih.requires_grad_(False)
        state, total = None, 0
        for t, x in enumerate(xs):
            state = m(x, state)
            if t == 4:
                state = tuple(s * 0.5 for s in state) if isinstance(state, tuple) else state * 0.5
            h = state[0] if isinstance(state, tuple) else state
            total = total + h.sum() * (t + 1)
        total.backward()
    assert_grads_close(ref, new)


@pytest.mark.parametrize("name", CELLS)
def test_encoder_state_into_a_decoder_of_other_weights(name):
    """The decoder's first step's predecessor is the encoder's last: another op's weights, so the
    decoder's rows are flushed there, and the encoder's own chain is separate."""
    ref_enc, new_enc = pair(name)
    ref_dec, new_dec = pair(name)
    with torch.no_grad():
        for p, q in zip(ref_dec.parameters(), new_dec.parameters()):
            p.mul_(-0.7)
            q.copy_(p)
    xs = torch.randn(6, 2, IN)
    for enc, dec in ((ref_enc, ref_dec), (new_enc, new_dec)):
        _, state = loop(enc, xs[:3])
        total, _ = loop(dec, xs[3:], state)
        total.backward()
    assert_grads_close(ref_enc, new_enc)
    assert_grads_close(ref_dec, new_dec)


@pytest.mark.parametrize("name", CELLS)
def test_gradcheck_of_a_deferring_loop_with_expanded_inputs(name):
    """torch.autograd.gradcheck (fast mode: random projections, so all ~100K weight elements can be
    inputs) of a 4-step loop whose steps defer their weight gradients, float64; the inputs are
    stride-0 expansions of one row and the initial state a broadcast one."""
    _, new = pair(name, dtype=torch.float64)
    names = [n for n, _ in new.named_parameters()]
    row = torch.randn(1, IN, dtype=torch.float64)
    h0 = torch.randn(1, HID, dtype=torch.float64).expand(3, HID)
    lstm = name == "LSTMCell"

    def f(*params):
        state = (h0, h0 * 0.5) if lstm else h0
        total = 0
        for t in range(4):
            state = torch.func.functional_call(new, dict(zip(names, params)), (row.expand(3, IN) * (t + 1), state))
            h = state[0] if lstm else state
            total = total + (h * torch.linspace(-1, 1, HID, dtype=torch.float64)).sum()
        return total

    params = [p.detach().clone().requires_grad_(True) for p in new.parameters()]
    assert torch.autograd.gradcheck(f, params, fast_mode=True, eps=1e-6, atol=1e-6, rtol=1e-4)
    # and the steps did defer: one weight-gradient computation over all 4 steps' rows
    with torch.profiler.profile(record_shapes=True) as prof:
        f(*params).backward()
    assert [e.input_shapes[0][0] for e in prof.events() if e.name == "rnnfast::weight_grad_rows"] == [12]
