"""Loads the compiled ops (rnnfast._C) and wires them into PyTorch: a fake (meta) kernel for every
op, so they trace under torch.compile and pass torch.library.opcheck, and autograd from each
forward op to its backward op (DESIGN.md §3). Op schemas: csrc/ops.cpp.

Workspace layouts (shared by the CPU and CUDA implementations), H = hidden size:
    rnn_tanh / rnn_relu: (0,)
    gru:  (T, B, 4H) = [r, z, n, hn]; hn = W_hn h + b_hn (reset_after) or r * h (not reset_after)
    lstm: (T, B, 5H) = [i, f, g, o, c] (gates after their nonlinearity, c the new cell state)
    lstm_proj: (T, B, 6H) = [i, f, g, o, c, m], m = o * tanh(c) (h = m W_hrᵀ is the output)
"""
import functools

import torch

try:
    from . import _C  # noqa: F401  (loading it registers the ops)
except ImportError as err:  # pragma: no cover - depends on the build
    raise ImportError(
        "rnnfast's compiled extension (rnnfast._C) could not be loaded. Either it is not built — run "
        "`pip install --no-build-isolation -e .` in the repository root — or it was built against "
        "another torch version (ABI mismatch after a torch upgrade) — rebuild it the same way. "
        f"Original error: {err}"
    ) from err

_ops = torch.ops.rnnfast

# gates per cell and workspace width (in units of H)
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
_WS = {"rnn_tanh": 0, "rnn_relu": 0, "gru": 4, "lstm": 5}


def _workspace_shape(cell, T, B, H):
    return (0,) if _WS[cell] == 0 else (T, B, _WS[cell] * H)


# ---- fake kernels: shapes per the contract; dtype/device follow the input -----------------------
# These are also the ops' Meta kernels, and the dispatcher picks the Meta kernel as soon as ONE
# argument is a meta tensor: a meta hx among CPU tensors would otherwise "run" here and return
# uninitialized CPU tensors. So every fake first checks that all its tensors share the input's
# device (under torch.compile all fake tensors carry their real device, so this holds there).
def _check_devices(op, input, named, lengths=None):
    """All tensors in ``named`` ((name, tensor or None) pairs) on input's device; ``lengths`` on the
    CPU (or on input's device, for all-meta shape runs). RuntimeError naming the op and argument,
    as the compiled op's own check (csrc/core/args.h)."""
    for name, t in named:
        if t is not None and t.device != input.device:
            raise RuntimeError(f"rnnfast.{op}: {name} is on {t.device} but input is on {input.device} "
                               "(all tensors must be on one device)")
    if lengths is not None and lengths.device.type != "cpu" and lengths.device != input.device:
        raise RuntimeError(f"rnnfast.{op}: lengths must be a CPU tensor (as PackedSequence.batch_sizes), "
                           f"got one on {lengths.device}")


def _lengths_of(rest, n_before):
    """The optional trailing lengths argument of an op, after n_before other optional arguments."""
    return rest[n_before] if len(rest) > n_before else None


def _fake_forward(cell):
    n_extra = 1 if cell == "gru" else 0  # gru's reset_after comes before lengths

    def fake(input, hx, w_ih, w_hh, b_ih, b_hh, reverse, *rest, lengths=None):
        lengths = lengths if lengths is not None else _lengths_of(rest, n_extra)
        _check_devices(cell, input, [("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)],
                       lengths)
        T, B, _ = input.shape
        H = hx.shape[1]
        return (input.new_empty((T, B, H)), input.new_empty((B, H)),
                input.new_empty(_workspace_shape(cell, T, B, H)))
    return fake


def _fake_backward_of(cell):
    n_extra = 2 if cell == "gru" else 1  # [reset_after,] input_grad come before lengths

    def fake(grad_output, grad_hy, input, hx, w_ih, w_hh, output, workspace, reverse, *rest, input_grad=True,
             lengths=None):
        lengths = lengths if lengths is not None else _lengths_of(rest, n_extra)
        _check_devices(cell, input, [("grad_output", grad_output), ("grad_hy", grad_hy), ("hx", hx), ("w_ih", w_ih),
                                     ("w_hh", w_hh), ("output", output), ("workspace", workspace)], lengths)
        return _fake_backward(input, hx, w_ih, w_hh)
    return fake


def _fake_backward(input, hx, w_ih, w_hh):
    G = w_ih.shape[0]
    return (input.new_empty(input.shape), input.new_empty(hx.shape), input.new_empty(w_ih.shape),
            input.new_empty(w_hh.shape), input.new_empty((G,)), input.new_empty((G,)))


for _cell in ("rnn_tanh", "rnn_relu", "gru"):
    torch.library.register_fake(f"rnnfast::{_cell}_forward")(_fake_forward(_cell))
    torch.library.register_fake(f"rnnfast::{_cell}_backward")(_fake_backward_of(_cell))


@torch.library.register_fake("rnnfast::lstm_forward")
def _(input, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse, lengths=None):
    _check_devices("lstm", input, [("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                                   ("b_hh", b_hh)], lengths)
    T, B, _ = input.shape
    H = hx.shape[1]
    return (input.new_empty((T, B, H)), input.new_empty((B, H)), input.new_empty((B, H)),
            input.new_empty(_workspace_shape("lstm", T, B, H)))


@torch.library.register_fake("rnnfast::lstm_backward")
def _(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, output, workspace, reverse, input_grad=True,
      lengths=None):
    _check_devices("lstm", input, [("grad_output", grad_output), ("grad_hy", grad_hy), ("grad_cy", grad_cy),
                                   ("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("output", output),
                                   ("workspace", workspace)], lengths)
    G = w_ih.shape[0]
    return (input.new_empty(input.shape), input.new_empty(hx.shape), input.new_empty(cx.shape),
            input.new_empty(w_ih.shape), input.new_empty(w_hh.shape), input.new_empty((G,)),
            input.new_empty((G,)))


# ---- autograd: forward op -> backward op ---------------------------------------------------------
def _dense(grad, like):
    # An unused output's gradient is None: pass a broadcast zero (no (T, B, H) buffer to fill; the
    # CPU backward reads a fully broadcast grad_output through one materialized row).
    return like.new_zeros(()).expand(like.shape) if grad is None else grad


def _bias_grads(ctx, db_ih, db_hh):
    return (db_ih if ctx.has_b_ih else None), (db_hh if ctx.has_b_hh else None)


def _setup_no_cell(cell):
    n_fixed = 8 if cell == "gru" else 7  # gru's reset_after comes before lengths

    def setup_context(ctx, inputs, output):
        # Gradients of unused outputs arrive as None instead of zero tensors: autograd would otherwise
        # fill a (T, B, WS*H) zero tensor for the workspace on every backward (2 ms of a 33 ms LSTM
        # layer step at d2l-512); backward densifies only the small ones the op needs.
        ctx.set_materialize_grads(False)
        input, hx, w_ih, w_hh, b_ih, b_hh, reverse = inputs[:7]
        ctx.extra = tuple(inputs[7:n_fixed])  # gru: (reset_after,)
        ctx.lengths = inputs[n_fixed] if len(inputs) > n_fixed else None
        ctx.n_inputs = len(inputs)
        ctx.reverse = reverse
        ctx.has_b_ih, ctx.has_b_hh = b_ih is not None, b_hh is not None
        out, _, ws = output
        ctx.save_for_backward(input, hx, w_ih, w_hh, out, ws)
    return setup_context


def _backward_no_cell(cell):
    backward_op = getattr(_ops, f"{cell}_backward")

    def backward(ctx, grad_output, grad_hy, _grad_ws):
        input, hx, w_ih, w_hh, out, ws = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dhx, dw_ih, dw_hh, db_ih, db_hh = backward_op(
            _dense(grad_output, out), _dense(grad_hy, hx), input, hx, w_ih, w_hh, out, ws, ctx.reverse, *ctx.extra,
            input_grad=need_dx, lengths=ctx.lengths)
        db_ih, db_hh = _bias_grads(ctx, db_ih, db_hh)
        grads = (dx if need_dx else None, dhx, dw_ih, dw_hh, db_ih, db_hh)
        return grads + (None,) * (ctx.n_inputs - len(grads))
    return backward


for _cell in ("rnn_tanh", "rnn_relu", "gru"):
    torch.library.register_autograd(f"rnnfast::{_cell}_forward", _backward_no_cell(_cell),
                                    setup_context=_setup_no_cell(_cell))


def _lstm_autograd(op, n_weights):
    """(backward, setup_context) of an LSTM-like forward op: (input, hx, cx, *weights, b_ih, b_hh,
    reverse[, lengths]) with n_weights weights (w_ih, w_hh[, w_hr]); its backward op returns
    (dx, dhx, dcx, *dweights, db_ih, db_hh), in the forward's input order."""
    backward_op = getattr(_ops, f"{op}_backward")
    n = 3 + n_weights  # input, hx, cx, weights

    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # see _setup_no_cell
        b_ih, b_hh, ctx.reverse = inputs[n:n + 3]
        ctx.lengths = inputs[n + 3] if len(inputs) > n + 3 else None
        ctx.n_inputs = len(inputs)
        ctx.has_b_ih, ctx.has_b_hh = b_ih is not None, b_hh is not None
        out, _, _, ws = output
        ctx.save_for_backward(*inputs[:n], out, ws)

    def backward(ctx, grad_output, grad_hy, grad_cy, _grad_ws):
        input, hx, cx, *weights, out, ws = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dhx, dcx, *dweights, db_ih, db_hh = backward_op(
            _dense(grad_output, out), _dense(grad_hy, hx), _dense(grad_cy, cx), input, hx, cx, *weights, out, ws,
            ctx.reverse, input_grad=need_dx, lengths=ctx.lengths)
        grads = ((dx if need_dx else None), dhx, dcx, *dweights, *_bias_grads(ctx, db_ih, db_hh))
        return grads + (None,) * (ctx.n_inputs - len(grads))
    return backward, setup_context


_bw, _setup = _lstm_autograd("lstm", 2)
torch.library.register_autograd("rnnfast::lstm_forward", _bw, setup_context=_setup)


# ---- LSTM with a projection (proj_size): hx/output rows have P = w_hr.shape[0] columns -----------
@torch.library.register_fake("rnnfast::lstm_proj_forward")
def _(input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh, reverse, lengths=None):
    _check_devices("lstm_proj", input, [("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("w_hr", w_hr),
                                        ("b_ih", b_ih), ("b_hh", b_hh)], lengths)
    T, B, _ = input.shape
    P, H = w_hr.shape
    return (input.new_empty((T, B, P)), input.new_empty((B, P)), input.new_empty((B, H)),
            input.new_empty((T, B, 6 * H)))


@torch.library.register_fake("rnnfast::lstm_proj_backward")
def _(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr, output, workspace, reverse, input_grad=True,
      lengths=None):
    _check_devices("lstm_proj", input, [("grad_output", grad_output), ("grad_hy", grad_hy), ("grad_cy", grad_cy),
                                        ("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("w_hr", w_hr),
                                        ("output", output), ("workspace", workspace)], lengths)
    G = w_ih.shape[0]
    return (input.new_empty(input.shape), input.new_empty(hx.shape), input.new_empty(cx.shape),
            input.new_empty(w_ih.shape), input.new_empty(w_hh.shape), input.new_empty(w_hr.shape),
            input.new_empty((G,)), input.new_empty((G,)))


_bw, _setup = _lstm_autograd("lstm_proj", 3)
torch.library.register_autograd("rnnfast::lstm_proj_forward", _bw, setup_context=_setup)


# Under torch.autocast the forward ops compute in float32 (their kernels are float32/float64): float16
# and bfloat16 arguments are cast up, float64 ones left alone (rnnfast.functional does the same before
# its checks; see functional.autocast_float32).
for _cell in list(_GATES) + ["lstm_proj"]:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"rnnfast::{_cell}_forward", _device, torch.float32)


# Double backward is not implemented: differentiating a backward op raises a clear error instead of
# silently returning a graph without it.
def _no_double_backward(cell):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"double backward through rnnfast.{cell} is not supported (the gradient of its backward op "
            f"rnnfast::{cell}_backward is not implemented); use torch.nn's layers for higher-order gradients")
    return backward, setup_context


for _cell in list(_GATES) + ["lstm_proj"]:
    _bw, _setup = _no_double_backward(_cell)
    torch.library.register_autograd(f"rnnfast::{_cell}_backward", _bw, setup_context=_setup)


# ---- gradient clipping: fake kernels (the ops mutate and return no graph) ----
def result_dtype(tensors):
    """The dtype of the total norm: torch.stack's promotion of all dtypes in the list."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def _check_one_device(op, tensors):
    # As the compiled ops (csrc/clip.h check_grads): a list on several devices is not the fused op's
    # job, NotImplementedError, which rnnfast.clip answers with torch's own implementation (that
    # raises for a meta grad among CPU grads, as torch.nn.utils does). Needed here because one meta
    # tensor sends the whole list to this (Meta) kernel; see _check_devices.
    for i, t in enumerate(tensors):
        if t.device != tensors[0].device:
            raise NotImplementedError(f"rnnfast::{op}: all tensors must be on one device, but tensor 0 is on "
                                      f"{tensors[0].device} and tensor {i} is on {t.device}")


def _fake_norm(op, tensors, *args):
    torch._check(len(tensors) > 0, lambda: "rnnfast: expected at least one tensor, got an empty list")
    _check_one_device(op, tensors)
    return tensors[0].new_empty((), dtype=result_dtype(tensors))


@torch.library.register_fake("rnnfast::grad_norm")
def _grad_norm_fake(tensors, norm_type):
    return _fake_norm("grad_norm", tensors)


@torch.library.register_fake("rnnfast::clip_grads_with_norm_")
def _clip_grads_with_norm_fake(grads, max_norm, total_norm):
    _check_one_device("clip_grads_with_norm_", list(grads) + [total_norm])
    return None


@torch.library.register_fake("rnnfast::clip_grad_norm_")
def _clip_grad_norm_fake(grads, max_norm, norm_type):
    return _fake_norm("clip_grad_norm_", grads)
