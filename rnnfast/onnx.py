"""ONNX export of rnnfast's ops: each layer-direction op becomes one standard ONNX RNN / GRU / LSTM node.

``torch.onnx.export(model, args, dynamo=True)`` needs nothing more from the user: the exporter
builds its op table on every export from torch's own translations and from onnxscript's torchlib
registry (``onnxscript.function_libs.torch_lib.registration.default_registry``), which is where
rnnfast registers the functions below, with onnxscript's public ``torch_op`` decorator, as soon as
that module is imported (``rnnfast._hooks.after_import``; ``import rnnfast`` itself never imports
onnxscript, an optional dependency: ``pip install rnnfast[onnx]``). ``register()`` does it at once.

Translation of ``torch.ops.rnnfast.<cell>_forward(input (T, B, I), hx (B, H)[, cx], w_ih, w_hh,
b_ih, b_hh, reverse, ...)``:

* X = input; W = w_ih, R = w_hh with a leading direction axis of 1; B = [b_ih, b_hh] (absent
  without bias: ONNX's default is zeros); initial_h/initial_c = hx/cx with that axis;
  ``direction`` "forward" or "reverse" (a bidirectional layer is two nodes, as rnnfast runs it);
  ``lengths`` becomes ``sequence_lens`` (int32).
* Gate blocks are reordered: torch's LSTM i,f,g,o -> ONNX i,o,f,c; torch's GRU r,z,n -> ONNX z,r,h
  with ``linear_before_reset=1`` for torch.nn.GRU's form (reset_after=True) and 0 for the textbook
  form (reset_after=False), which is exactly ONNX's default GRU; RNN: ``activations`` Tanh or Relu.
* Y (T, 1, B, H) and Y_h/Y_c (1, B, H) lose the direction axis. The op's workspace output (saved
  for backward) is not part of an inference graph: an empty tensor stands for it.

``LSTM(proj_size > 0)``: ONNX's LSTM has no projection, so its steps are written out with standard
operators (MatMul, Add, Sigmoid, Tanh, Mul; T copies), as torch.onnx does for torch.nn.LSTM with
proj_size. That needs a sequence length fixed at export time: with a dynamic one (or packed input)
the export fails with a message saying so.
"""
from __future__ import annotations

from . import _hooks
from ._cells import CELLS

__all__ = ["register", "PROJECTION_MESSAGE"]

REGISTRATION = "onnxscript.function_libs.torch_lib.registration"

PROJECTION_MESSAGE = ("rnnfast: LSTM(proj_size > 0) with a dynamic sequence length (or packed input) cannot be "
                      "exported to ONNX: ONNX's LSTM operator has no projection (weight_hr), and the steps "
                      "written out need a sequence length fixed at export time")

# ONNX's gate order, as indices of torch's gate blocks
_LSTM_ORDER = (0, 3, 1, 2)  # torch i, f, g, o -> ONNX i, o, f, c
_GRU_ORDER = (1, 0, 2)      # torch r, z, n -> ONNX z, r, h

_registered = False


def _define(registration) -> None:
    """Defines the translations and registers them in onnxscript's torchlib registry."""
    global _registered
    if _registered:
        return
    from onnxscript import ir
    from onnxscript.onnx_opset import opset18 as op

    torch_op = registration.torch_op

    def reorder(t, order):
        """Gate blocks of a (G*H, ...) weight or (G*H,) bias in ONNX's order. Slices of static sizes
        (not a Split), so that the exporter's constant folding stores reordered initializers."""
        if order is None:
            return t
        H = t.shape[0] // len(order)
        return op.Concat(*[op.Slice(t, [i * H], [(i + 1) * H], [0]) for i in order], axis=0)

    def layer_inputs(w_ih, w_hh, b_ih, b_hh, lengths, order):
        W = op.Unsqueeze(reorder(w_ih, order), [0])
        R = op.Unsqueeze(reorder(w_hh, order), [0])
        B = None
        if b_ih is not None or b_hh is not None:
            b_ih = b_ih if b_ih is not None else op.Mul(b_hh, op.CastLike(0, b_hh))
            b_hh = b_hh if b_hh is not None else op.Mul(b_ih, op.CastLike(0, b_ih))
            B = op.Unsqueeze(op.Concat(reorder(b_ih, order), reorder(b_hh, order), axis=0), [0])
        seq = None if lengths is None else op.Cast(lengths, to=ir.DataType.INT32)
        return W, R, B, seq

    def hidden_size(w_hh, gates):
        return w_hh.shape[0] // gates  # static: the weights' shapes are fixed by the module

    def empty_workspace(like):
        return op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), like)

    def squeeze_outputs(y, *states):
        return (op.Squeeze(y, [1]),) + tuple(op.Squeeze(s, [0]) for s in states)

    @torch_op("rnnfast::lstm_forward", trace_only=True)
    def rnnfast_lstm_forward(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, lengths=None):
        W, R, B, seq = layer_inputs(w_ih, w_hh, b_ih, b_hh, lengths, _LSTM_ORDER)
        y, y_h, y_c = op.LSTM(input, W, R, B, seq, op.Unsqueeze(hx, [0]), op.Unsqueeze(cx, [0]),
                              hidden_size=hidden_size(w_hh, CELLS["lstm"].num_gates),
                              direction="reverse" if reverse else "forward")
        return squeeze_outputs(y, y_h, y_c) + (empty_workspace(input),)

    @torch_op("rnnfast::gru_forward", trace_only=True)
    def rnnfast_gru_forward(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, reset_after=True,
                            lengths=None):
        W, R, B, seq = layer_inputs(w_ih, w_hh, b_ih, b_hh, lengths, _GRU_ORDER)
        y, y_h = op.GRU(input, W, R, B, seq, op.Unsqueeze(hx, [0]),
                        hidden_size=hidden_size(w_hh, CELLS["gru"].num_gates),
                        direction="reverse" if reverse else "forward",
                        linear_before_reset=1 if reset_after else 0)
        return squeeze_outputs(y, y_h) + (empty_workspace(input),)

    def rnn(cell):
        activation = cell.nonlinearity.capitalize()  # tanh -> ONNX's Tanh, relu -> Relu

        def translate(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, lengths=None):
            W, R, B, seq = layer_inputs(w_ih, w_hh, b_ih, b_hh, lengths, None)
            y, y_h = op.RNN(input, W, R, B, seq, op.Unsqueeze(hx, [0]), hidden_size=hidden_size(w_hh, cell.num_gates),
                            direction="reverse" if reverse else "forward", activations=[activation])
            return squeeze_outputs(y, y_h) + (empty_workspace(input),)
        translate.__name__ = f"rnnfast_{cell.forward_op}"
        return translate

    for cell in CELLS.values():  # the Elman cells of the registry: ONNX RNN with their activation
        if cell.nonlinearity:
            torch_op(f"rnnfast::{cell.forward_op}", trace_only=True)(rnn(cell))

    @torch_op("rnnfast::lstm_proj_forward", trace_only=True)
    def rnnfast_lstm_proj_forward(input, hx, cx, w_ih, w_hh, w_hr, b_ih=None, b_hh=None, reverse=False,
                                  lengths=None):
        # ONNX's LSTM has no projection: the steps are written out with standard operators (MatMul,
        # Add, Sigmoid, Tanh, Mul), as torch.onnx exports torch.nn.LSTM(proj_size>0). That needs
        # a sequence length fixed at export time.
        T = input.shape[0]
        if not isinstance(T, int) or lengths is not None:
            raise NotImplementedError(PROJECTION_MESSAGE)
        H = w_hr.shape[1]
        gates_x = op.MatMul(input, op.Transpose(w_ih, perm=[1, 0]))  # (T, B, 4H), all steps at once
        for b in (b_ih, b_hh):
            if b is not None:
                gates_x = op.Add(gates_x, b)
        w_hh_t, w_hr_t = op.Transpose(w_hh, perm=[1, 0]), op.Transpose(w_hr, perm=[1, 0])
        h, c = hx, cx
        outputs = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            gates = op.Add(op.Gather(gates_x, op.Constant(value_int=t), axis=0), op.MatMul(h, w_hh_t))
            i, f, g, o = (op.Slice(gates, [k * H], [(k + 1) * H], [1]) for k in range(4))
            c = op.Add(op.Mul(op.Sigmoid(f), c), op.Mul(op.Sigmoid(i), op.Tanh(g)))
            h = op.MatMul(op.Mul(op.Sigmoid(o), op.Tanh(c)), w_hr_t)
            outputs[t] = op.Unsqueeze(h, [0])
        return op.Concat(*outputs, axis=0), h, c, empty_workspace(input)

    _registered = True


def register() -> None:
    """Registers rnnfast's ONNX translations now (imports onnxscript; normally not needed: it happens
    by itself when the exporter first imports onnxscript's torchlib registry)."""
    import importlib

    _define(importlib.import_module(REGISTRATION))


_hooks.after_import(REGISTRATION, _define)
