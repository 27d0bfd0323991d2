"""Loads the compiled ops (rnnfast._C) and wires them into PyTorch: a fake (meta) kernel for every
op, so they trace under torch.compile and pass torch.library.opcheck, and autograd from each
forward op to its backward op (docs/design.md §4). Op schemas: csrc/ops.cpp.

Everything cell-specific (which ops exist, their optional arguments, the workspace layouts) comes
from the cell registry, rnnfast._cells: a cell's workspace is (T, B, len(slots) * H), or (0,)
without slots; the LSTM projection adds its slot m = o * tanh(c) after the cell's.
"""
import contextlib
import functools

import torch
from torch.autograd import forward_ad

try:
    from . import _C  # noqa: F401  (loading it registers the ops)
except ImportError as err:  # pragma: no cover - depends on the build
    raise ImportError(
        "rnnfast's compiled extension (rnnfast._C) could not be loaded. Either it is not built — run "
        "`pip install --no-build-isolation -e .` in the repository root — or it was built against "
        "another torch version (ABI mismatch after a torch upgrade) — rebuild it the same way. "
        f"Original error: {err}"
    ) from err

from ._cells import CELLS

_ops = torch.ops.rnnfast


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


def _split(rest, n_before):
    """(the n_before positional arguments after the fixed ones, the optional trailing lengths)."""
    return tuple(rest[:n_before]), (rest[n_before] if len(rest) > n_before else None)


# Argument order of every recurrent op (csrc/ops.cpp), per cell row of rnnfast._cells:
#   forward:  input, hx, [cx,] w_ih, w_hh, [w_hr,] b_ih, b_hh, reverse, *options, lengths=None,
#             workspace=True
#   backward: grad_output, grad_hy, [grad_cy,] input, hx, [cx,] w_ih, w_hh, [w_hr,] output, workspace,
#             reverse, *options, input_grad=True, lengths=None, hx_grad=True
# ([cx] and [grad_cy]: cells with a cell state; [w_hr]: the projection ops.) The forward returns
# (output, hy, [cy,] workspace); the backward the gradients of its inputs in the forward's order:
# (grad_input, grad_hx, [grad_cx,] grad_w_ih, grad_w_hh, [grad_w_hr,] grad_b_ih, grad_b_hh).
def _layout(cell, projection):
    """(names of the forward's tensor inputs before the biases, state names) for an op."""
    states = ("hx", "cx") if cell.has_cell_state else ("hx",)
    weights = ("w_ih", "w_hh", "w_hr") if projection else ("w_ih", "w_hh")
    return ("input",) + states + weights, states


def _fake_forward(cell, projection=False):
    op = cell.projection.name if projection else cell.name
    front, states = _layout(cell, projection)
    n_opts = len(cell.options)

    def fake(*args, lengths=None, workspace=True):
        tensors = dict(zip(front, args))
        b_ih, b_hh, _reverse = args[len(front):len(front) + 3]
        rest = args[len(front) + 3:]
        _, trailing = _split(rest, n_opts)
        lengths = lengths if lengths is not None else trailing
        workspace = rest[n_opts + 1] if len(rest) > n_opts + 1 else workspace
        input, hx = tensors["input"], tensors["hx"]
        _check_devices(op, input, [(n, t) for n, t in tensors.items() if n != "input"]
                       + [("b_ih", b_ih), ("b_hh", b_hh)], lengths)
        T, B, _ = input.shape
        P = hx.shape[1]  # the width of h: H, or the projection's P
        H = tensors["w_hr"].shape[1] if projection else P
        out = [input.new_empty((T, B, P)), input.new_empty((B, P))]
        if cell.has_cell_state:
            out.append(input.new_empty((B, H)))
        ws_shape = cell.workspace_shape(T, B, H, projection) if workspace else (0,)
        return tuple(out) + (input.new_empty(ws_shape),)
    return fake


def _fake_backward(cell, projection=False):
    op = cell.projection.name if projection else cell.name
    front, states = _layout(cell, projection)
    grads_in = ("grad_output",) + tuple("grad_" + s[0] + "y" for s in states)  # grad_hy, grad_cy
    names = grads_in + front + ("output", "workspace")
    n_opts = len(cell.options)

    def fake(*args, input_grad=True, lengths=None, hx_grad=True):
        tensors = dict(zip(names, args))
        rest = args[len(names) + 1:]  # after reverse
        _, trailing = _split(rest, n_opts + 1)  # options, input_grad
        lengths = lengths if lengths is not None else trailing
        input = tensors["input"]
        _check_devices(op, input, [(n, t) for n, t in tensors.items() if n != "input"], lengths)
        G = tensors["w_ih"].shape[0]
        return (tuple(input.new_empty(tensors[n].shape) for n in front)
                + (input.new_empty((G,)), input.new_empty((G,))))
    return fake


# ---- autograd: forward op -> backward op ---------------------------------------------------------
_SMALL_ZEROS = 1 << 14  # elements: below this, zeros_like costs less than building the broadcast view


def _dense(grad, like):
    # An unused output's gradient is None: pass a broadcast zero (no (T, B, H) buffer to fill; the
    # CPU backward reads a fully broadcast grad_output through one materialized row). A small one
    # (a cell's step) is filled instead: cheaper than the view (~4 against ~10 µs in a backward).
    if grad is not None:
        return grad
    if like.numel() <= _SMALL_ZEROS:
        return torch.zeros_like(like)
    return like.new_zeros(()).expand(like.shape)


def _autograd(cell, projection=False):
    """(backward, setup_context) wiring a cell's forward op to its backward op."""
    backward_op = getattr(_ops, cell.projection.backward_op if projection else cell.backward_op)
    front, _ = _layout(cell, projection)
    n = len(front)  # input, states, weights
    n_states = 2 if cell.has_cell_state else 1
    n_opts = len(cell.options)

    def setup_context(ctx, inputs, output):
        # Gradients of unused outputs arrive as None instead of zero tensors: autograd would otherwise
        # fill a (T, B, WS*H) zero tensor for the workspace on every backward (2 ms of a 33 ms LSTM
        # layer step at d2l-512); backward densifies only the small ones the op needs.
        ctx.set_materialize_grads(False)
        if output[-1].dim() != 3 and cell.workspace_shape(1, 1, 1, projection) != (0,):
            raise RuntimeError(f"rnnfast.{cell.projection.name if projection else cell.name}: called with "
                               "workspace=False (an inference call, no workspace kept) on inputs that require "
                               "a gradient: call it with workspace=True to differentiate it")
        b_ih, b_hh, ctx.reverse = inputs[n:n + 3]
        ctx.options, ctx.lengths = _split(inputs[n + 3:], n_opts)
        ctx.n_inputs = len(inputs)
        ctx.has_b_ih, ctx.has_b_hh = b_ih is not None, b_hh is not None
        ctx.save_for_backward(*inputs[:n], output[0], output[-1])  # ..., output, workspace

    def backward(ctx, grad_output, *grads):
        input, *rest = ctx.saved_tensors
        states, weights, (out, ws) = rest[:n_states], rest[n_states:n - 1], rest[n - 1:]
        grad_states = [_dense(g, s) for g, s in zip(grads[:n_states], states)]
        need_dx, need_dhx = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        args = (_dense(grad_output, out), *grad_states, input, *states, *weights, out, ws, ctx.reverse, *ctx.options)
        if torch.is_grad_enabled():  # create_graph=True: through the backward op's autograd, which refuses a
            dx, *grads_out = backward_op(*args, input_grad=need_dx, lengths=ctx.lengths,  # double backward
                                         hx_grad=need_dhx)
        else:  # the usual backward: straight to the kernel (no Python autograd kernel in between)
            with _below_autograd():
                dx, *grads_out = backward_op(*args, input_grad=need_dx, lengths=ctx.lengths,
                                             hx_grad=need_dhx)
        *grads_out, db_ih, db_hh = grads_out
        grads_out = ((dx if need_dx else None), *grads_out, (db_ih if ctx.has_b_ih else None),
                     (db_hh if ctx.has_b_hh else None))
        return grads_out + (None,) * (ctx.n_inputs - len(grads_out))
    return backward, setup_context


# Double backward is not implemented: differentiating a backward op raises a clear error instead of
# silently returning a graph without it.
def _no_double_backward(op):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"double backward through rnnfast.{op} is not supported (the gradient of its backward op "
            f"rnnfast::{op}_backward is not implemented); use torch.nn's layers for higher-order gradients")
    return backward, setup_context


# ---- the lean path: what rnnfast.nn and rnnfast.functional call ----------------------------------
# torch.library's autograd kernel (what register_autograd installs) is Python that runs on every
# call of the op in grad mode: it rebuilds the op's argument list from its schema
# (torch._library.utils.fill_defaults, ~30-60 µs, more than torch.nn's whole GRUCell step) before
# calling setup_context, and even without grad it redispatches from Python. The modules and
# rnnfast.functional call the ops through FORWARD instead:
#   * a gradient is needed -> one torch.autograd.Function per op (the same setup_context and
#     backward as the registered autograd above, so one formula), whose forward calls the op
#     below autograd;
#   * no gradient (no_grad, or no tensor requires grad) -> the op, below autograd;
#   * torch.compile / torch.export (torch.compiler.is_compiling()), torch.jit.trace and torch.func
#     transforms -> the op as registered, so graphs hold rnnfast's ops and their autograd.
# torch._C._AutoDispatchBelowAutograd is private (torch.library's own autograd kernel uses it for
# the same purpose): ~10 µs saved per op call; without it the op goes through its autograd kernel,
# which (no grad inside a Function's forward) runs it as is. Likewise without
# torch._C._are_functorch_transforms_active every call takes the registered path.
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", contextlib.nullcontext)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def _functorch_jvp_active():
    """True inside torch.func.jvp / jacfwd / hessian (a forward-mode functorch transform on the
    interpreter stack). Private torch API, looked up defensively: without it, False."""
    try:
        from torch._C._functorch import TransformType, get_interpreter_stack
    except ImportError:  # pragma: no cover - a torch without functorch's C API
        return False
    return any(i.key() == TransformType.Jvp for i in (get_interpreter_stack() or ()))


def _has_forward_tangent(args):
    """True when some tensor argument carries a forward-mode tangent (torch.autograd.forward_ad)."""
    if forward_ad._current_level < 0:  # not inside forward_ad.dual_level(): no dual tensors exist
        return False
    return any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)


FORWARD_AD_MESSAGE = (
    "rnnfast: forward-mode AD (torch.func.jvp / jacfwd / hessian, torch.autograd.forward_ad) is not "
    "implemented for rnnfast's recurrent ops; use reverse mode (backward(), torch.func.grad / vjp / "
    "jacrev) or torch.nn's modules")


def check_no_forward_ad(args):
    """Forward-mode AD through the ops would otherwise give a silent zero tangent (they have no jvp
    rule, and a call whose inputs do not require grad never reaches the autograd kernel that would
    refuse it): raise instead."""
    if _has_forward_tangent(args) or (_functorch_active() and _functorch_jvp_active()):
        raise NotImplementedError(FORWARD_AD_MESSAGE)


def _dispatcher_only():
    """True where a call must go through the registered op (a graph is being captured or
    transformed)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or _functorch_active()


def _function(name, forward_op, backward, setup_context):
    """The autograd.Function of one forward op (the old-style form: forward(ctx, ...) calls
    setup_context itself, which skips the inspect.signature binding Function.apply does for the
    new style)."""
    def forward(ctx, *args):
        with _below_autograd():
            output = forward_op(*args)
        setup_context(ctx, args, output)
        return output
    return type(f"{name}_forward_function", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward),
                 "__module__": __name__, "__qualname__": f"{name}_forward_function"})


def _lean_forward(forward_op, function):
    apply = function.apply

    def call(*args):
        """forward_op(*args), its outputs and gradients, without torch.library's per-call Python."""
        check_no_forward_ad(args)
        if _dispatcher_only():
            return forward_op(*args)
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return apply(*args)
        with _below_autograd():  # nothing will be differentiated: no workspace kept (an empty one back)
            return forward_op(*args, workspace=False)
    return call


#: op prefix ("gru", "lstm_proj", ...) -> its forward op's lean caller (same arguments, same outputs)
FORWARD = {}
#: op prefix -> its torch.autograd.Function
FUNCTIONS = {}


def _register(cell, projection=False):
    op = cell.projection.name if projection else cell.name
    torch.library.register_fake(f"rnnfast::{op}_forward")(_fake_forward(cell, projection))
    torch.library.register_fake(f"rnnfast::{op}_backward")(_fake_backward(cell, projection))
    bw, setup = _autograd(cell, projection)
    torch.library.register_autograd(f"rnnfast::{op}_forward", bw, setup_context=setup)
    forward_op = getattr(_ops, f"{op}_forward")
    FUNCTIONS[op] = _function(op, forward_op, bw, setup)
    FORWARD[op] = _lean_forward(forward_op, FUNCTIONS[op])
    bw, setup = _no_double_backward(op)
    torch.library.register_autograd(f"rnnfast::{op}_backward", bw, setup_context=setup)
    # Under torch.autocast the forward ops compute in float32 (their kernels are float32/float64):
    # float16 and bfloat16 arguments are cast up, float64 ones left alone (rnnfast.functional does
    # the same before its checks; see functional.autocast_float32).
    for device in ("cpu", "cuda"):
        torch.library.register_autocast(f"rnnfast::{op}_forward", device, torch.float32)


for _cell in CELLS.values():
    _register(_cell)
    if _cell.projection is not None:
        _register(_cell, projection=True)


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


# ---- generation: rnnfast::decode's fake kernel lives with its Python side ----
from . import _decode  # noqa: E402,F401
