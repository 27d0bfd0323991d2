"""Differentiable recurrent layers on rnnfast's fused ops: one call = one layer, one direction,
the whole sequence (docs/design.md §4; schemas in csrc/ops.cpp, cells in rnnfast/_cells.py).

Shapes: input (T, B, I) time-major; hx, cx (B, H); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh
(G*H,) or None, with torch.nn's gate order (LSTM i, f, g, o; GRU r, z, n), so torch.nn's
``weight_ih_l0`` etc. are used unchanged. ``reverse=True`` walks t = T-1 .. 0 (the reverse
direction of a bidirectional layer); ``output[t]`` is always the state after consuming input[t].

``lengths`` (optional, int64 (B,) on the CPU, values in [0, T]) runs a variable-length batch, what
a ``PackedSequence`` holds, padded: sequence b is ``input[:lengths[b], b]``. From t = lengths[b] on,
row b is frozen (its state is carried unchanged; the reverse direction starts from hx at
t = lengths[b]-1), so hy / cy are each sequence's own final state, as torch.nn gives for packed
input. ``output[t, b]`` for t >= lengths[b] holds that frozen state (torch.nn's padded output has
zeros there: ``rnnfast.RNN/GRU/LSTM`` take PackedSequence input and return packed output, which
drops those positions). ``lengths`` stays on the CPU for CUDA inputs too (the op copies it to
the device without waiting for it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (registers fake kernels and autograd for torch.ops.rnnfast)
from ._cells import CELLS

__all__ = ["rnn_tanh", "rnn_relu", "gru", "lstm", "check_layer_args", "check_lengths", "autocast_float32", "GATES"]

#: gates per cell: rows of w_ih / w_hh are GATES[cell] * hidden_size (from the registry, rnnfast._cells)
GATES = {name: cell.num_gates for name, cell in CELLS.items()}

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32,)


def _shape(t):
    return tuple(t.shape)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def autocast_float32(*tensors):
    """Inside torch.autocast, float16/bfloat16 tensors become float32 (others, and None, unchanged):
    rnnfast's kernels are float32/float64, so under autocast the layers compute and return float32
    (an "fp32 op" in autocast's terms, as layer_norm or softmax; torch.nn's RNNs return the autocast
    dtype instead). The next autocast op casts the output down again as it needs."""
    def cast(t):
        if isinstance(t, Tensor) and t.dtype in _LOW_PRECISION and torch.is_autocast_enabled(t.device.type):
            return t.float()
        return t
    return tuple(cast(t) for t in tensors)


def _check_like_input(name: str, arg: str, t: Tensor, input: Tensor) -> None:
    """Every tensor of a layer call shares the input's dtype (TypeError) and device (ValueError)."""
    if t.dtype != input.dtype:
        raise TypeError(f"{name}: {arg} has dtype {t.dtype} but input has dtype {input.dtype} "
                        "(all tensors must share one dtype)")
    if t.device != input.device:
        raise ValueError(f"{name}: {arg} is on {t.device} but input is on {input.device} "
                         "(all tensors must be on one device)")


def check_layer_args(op: str, input: Tensor, hx: Tensor, cx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                     b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor] = None) -> None:
    """Validates one layer-direction's arguments with messages naming the op and the argument.

    TypeError for non-tensors and unsupported or mismatched dtypes; ValueError for wrong ranks,
    sizes and devices. ``op`` is the cell name ("lstm", "gru", "rnn_tanh", "rnn_relu"). With
    ``w_hr`` (P, H) (LSTM projection) hx and the columns of w_hh are P wide, cx H.
    """
    name = f"rnnfast.{op}"
    cell = CELLS[op]
    G = cell.num_gates
    named = [("input", input), ("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh)]
    if cell.has_cell_state:
        named.insert(2, ("cx", cx))
    named += [(n, b) for n, b in (("b_ih", b_ih), ("b_hh", b_hh), ("w_hr", w_hr)) if b is not None]
    for arg, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    allowed = _CUDA_DTYPES if input.device.type == "cuda" else _CPU_DTYPES
    if input.dtype not in allowed:
        raise TypeError(f"{name} supports float32 and float64 on CPU and float32 on CUDA, "
                        f"got {input.dtype} on {input.device.type.upper()}")
    for arg, t in named[1:]:
        _check_like_input(name, arg, t, input)
    hs = "H" if w_hr is None else "P"  # the width of h (the projection's P)
    ranks = {"input": (3, "(T, B, I)"), "hx": (2, f"(B, {hs})"), "cx": (2, "(B, H)"), "w_ih": (2, "(G*H, I)"),
             "w_hh": (2, f"(G*H, {hs})"), "b_ih": (1, "(G*H,)"), "b_hh": (1, "(G*H,)"), "w_hr": (2, "(P, H)")}
    for arg, t in named:
        rank, sym = ranks[arg]
        if t.dim() != rank:
            raise ValueError(f"{name}: {arg} must be {rank}-D {sym}, got {t.dim()}-D with shape {_shape(t)}")
    T, B, I = input.shape
    P, H = (hx.shape[1], hx.shape[1]) if w_hr is None else w_hr.shape
    if T == 0:
        raise ValueError(f"{name}: expected sequence length > 0 (as torch.nn), got input of shape {_shape(input)}")
    gh = "H" if G == 1 else f"{G}*H"
    want = {"hx": ((B, P), f"(B, {hs})"), "cx": ((B, H), "(B, H)"), "w_hh": ((G * H, P), f"({gh}, {hs})"),
            "w_ih": ((G * H, I), f"({gh}, I)"), "b_ih": ((G * H,), f"({gh},)"), "b_hh": ((G * H,), f"({gh},)"),
            "w_hr": ((P, H), "(P, H)")}
    for arg, t in named[1:]:
        shape, sym = want[arg]
        if _shape(t) != shape:
            raise ValueError(f"{name}: {arg} must have shape {sym} = {shape}, got {_shape(t)}"
                             + (f" (input is {_shape(input)}, hx is {_shape(hx)})" if arg != "hx" else
                                f" (input is {_shape(input)})"))


def check_lengths(op: str, lengths: Optional[Tensor], input: Tensor) -> None:
    """Validates the optional ``lengths`` of a layer call (see the module docstring)."""
    if lengths is None:
        return
    name = f"rnnfast.{op}"
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{name}: lengths must be a torch.Tensor or None, got {type(lengths).__name__}")
    if lengths.dtype != torch.int64:
        raise TypeError(f"{name}: lengths must have dtype torch.int64, got {lengths.dtype}")
    if lengths.device.type != "cpu":
        raise ValueError(f"{name}: lengths must be on the CPU (as PackedSequence.batch_sizes), got {lengths.device}")
    T, B = input.shape[0], input.shape[1]
    if _shape(lengths) != (B,):
        raise ValueError(f"{name}: lengths must have shape (B,) = ({B},), got {_shape(lengths)}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"{name}: lengths must lie in [0, T] = [0, {T}], got values in "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")


def _run_op(name: str, input: Tensor, hx: Tensor, cx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
            b_ih: Optional[Tensor], b_hh: Optional[Tensor], reverse: bool, options: tuple,
            lengths: Optional[Tensor], w_hr: Optional[Tensor] = None) -> tuple:
    """The forward op of registry cell ``name`` (its projection op when w_hr is given), called with
    no Python checks (the op checks its own contract, csrc/core/args.h, and casts under autocast),
    through rnnfast._ops.FORWARD (the op plus the forward-mode AD refusal; its autograd is the C++
    kernel of csrc/autograd.cpp).
    Returns the op's outputs without the workspace: (output, hy[, cy])."""
    cell = CELLS[name]
    states = (hx, cx) if cell.has_cell_state else (hx,)
    if w_hr is None:
        op, weights = cell.name, (w_ih, w_hh)
    else:
        op, weights = cell.projection.name, (w_ih, w_hh, w_hr)
    return _ops.FORWARD[op](input, *states, *weights, b_ih, b_hh, bool(reverse), *options, lengths)[:-1]


def _layer(name: str, input: Tensor, hx: Tensor, cx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
           b_ih: Optional[Tensor], b_hh: Optional[Tensor], reverse: bool, options: tuple,
           lengths: Optional[Tensor], w_hr: Optional[Tensor] = None) -> tuple:
    """One call of a registry cell's forward op, each argument validated once: the op first
    (_run_op: its own checks, csrc/core/args.h, reject every argument the Python checks would, and
    its autocast kernel casts). Only when it refuses do the Python checks run, for the error naming
    the argument and the rule (TypeError / ValueError); the op's own error is re-raised should they
    accept the arguments. Same op, same numbers either way. The modules (rnnfast.nn) call this too."""
    try:
        return _run_op(name, input, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse, options, lengths, w_hr)
    except (RuntimeError, TypeError, ValueError) as err:
        refused = err
    # outside the except block, so the Python check's error does not print the op's as its context
    input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = autocast_float32(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
    check_layer_args(name, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
    check_lengths(name, lengths, input)
    raise refused


def rnn_tanh(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, reverse: bool = False,
             lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Elman RNN layer, h' = tanh(W_ih x + b_ih + W_hh h + b_hh). Returns (output, hy)."""
    return _layer("rnn_tanh", input, hx, None, w_ih, w_hh, b_ih, b_hh, reverse, (), lengths)


def rnn_relu(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, reverse: bool = False,
             lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Elman RNN layer, h' = relu(W_ih x + b_ih + W_hh h + b_hh). Returns (output, hy)."""
    return _layer("rnn_relu", input, hx, None, w_ih, w_hh, b_ih, b_hh, reverse, (), lengths)


def gru(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, reverse: bool = False, reset_after: bool = True,
        lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """GRU layer (gates r, z, n). Returns (output, hy).

    reset_after=True is torch.nn.GRU's form, n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
    reset_after=False is the textbook form, n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
    """
    return _layer("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, reverse, (bool(reset_after),), lengths)


def lstm(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
         b_hh: Optional[Tensor] = None, reverse: bool = False, lengths: Optional[Tensor] = None,
         w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM layer (gates i, f, g, o). Returns (output, hy, cy).

    With ``w_hr`` (P, H), torch.nn.LSTM's projection (proj_size=P): h_t = (o * tanh(c_t)) W_hrᵀ,
    so hx, hy and output rows have P columns, cx and cy H, and w_hh is (4*H, P).
    """
    return _layer("lstm", input, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse, (), lengths, w_hr)
