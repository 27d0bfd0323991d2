"""Loads the compiled ops (rnnfast._C) and wires them into PyTorch: a fake (meta) kernel for every
op, so they trace under torch.compile and pass torch.library.opcheck, autocast, and the backward
ops' refusal of double backward (docs/design.md §4; the forward ops' autograd is C++,
csrc/autograd.cpp). Op schemas: csrc/ops.cpp.

Everything cell-specific (which ops exist, their optional arguments, the workspace layouts) comes
from the cell registry, rnnfast._cells: a cell's workspace is (T, B, len(slots) * H), or (0,)
without slots; the LSTM projection adds its slot m = o * tanh(c) after the cell's.
"""
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


# ---- autograd --------------------------------------------------------------------------------------
# The forward ops' autograd is C++ (csrc/autograd.cpp): an Autograd-key kernel per forward op that
# runs the op below autograd, saves input, states, weights, output and workspace, and whose graph node
# calls the backward op (docs/design.md §4). A Python autograd.Function or torch.library's autograd
# kernel cost 25-60 µs a call, more than a small cell's whole step.
#
# Double backward is not implemented: differentiating a backward op raises a NotImplementedError
# instead of silently returning a graph without it. That refusal is the backward ops' Autograd
# kernel, also in csrc/autograd.cpp (NoDoubleBackward): torch.library.register_autograd's Python
# autograd.Function refused to run under torch.func.grad, which differentiates with create_graph.


# ---- forward-mode AD ------------------------------------------------------------------------------
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


#: the NotImplementedError's message, also the C++ autograd kernel's (csrc/autograd.cpp)
FORWARD_AD_MESSAGE = (
    "rnnfast: forward-mode AD (torch.func.jvp / jacfwd / hessian, torch.autograd.forward_ad) is not "
    "implemented for rnnfast's recurrent ops; use reverse mode (backward(), torch.func.grad / vjp / "
    "jacrev) or torch.nn's modules")


def check_no_forward_ad(args):
    """Forward-mode AD through the ops would otherwise give a silent zero tangent (they have no jvp
    rule). The C++ autograd kernel refuses a dual argument itself; this also covers functorch's jvp,
    whose tangents that kernel does not see on every path."""
    if _has_forward_tangent(args) or (_functorch_active() and _functorch_jvp_active()):
        raise NotImplementedError(FORWARD_AD_MESSAGE)


# ---- what rnnfast.nn and rnnfast.functional call ----------------------------------------------------
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch._C._is_tracing

#: the modules' eager fast path in C++ (csrc/python.cpp): the usual call of a module or cell, or None
forward_layers = _C.forward_layers


def eager_fast():
    """True where the modules may take their C++ fast path (forward_layers): plain eager execution,
    no graph capture (torch.compile / export, torch.jit.trace), no functorch transform and no
    forward-mode AD level. Everywhere else they take the Python path, which those systems see op by
    op (and which refuses forward-mode AD by name)."""
    return not (_graph_capture() or forward_ad._current_level >= 0)


def _graph_capture():
    """True while a graph is captured or transformed (torch.compile / export, torch.jit.trace,
    torch.func): there a call keeps the op's defaults (the full workspace), whatever the fake or
    wrapped tensors say about requires_grad."""
    return _is_compiling() or _is_tracing() or _functorch_active()


def _forward_caller(forward_op):
    def call(*args):
        """forward_op(*args) (its autograd is the C++ kernel), refusing forward-mode AD."""
        check_no_forward_ad(args)
        if not (_graph_capture() or (torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args))):
            return forward_op(*args, workspace=False)  # nothing will be differentiated: no workspace kept
        return forward_op(*args)
    return call


#: op prefix ("gru", "lstm_proj", ...) -> its forward op's caller (same arguments, same outputs)
FORWARD = {}


def _register(cell, projection=False):
    op = cell.projection.name if projection else cell.name
    torch.library.register_fake(f"rnnfast::{op}_forward")(_fake_forward(cell, projection))
    torch.library.register_fake(f"rnnfast::{op}_backward")(_fake_backward(cell, projection))
    FORWARD[op] = _forward_caller(getattr(_ops, f"{op}_forward").default)
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
