"""Recurrent modules on rnnfast's fused ops: drop-ins for torch.nn.RNN, GRU, LSTM and their cells.

Each class *is* its torch.nn namesake: ``rnnfast.LSTM`` subclasses ``torch.nn.LSTM`` (and so
``torch.nn.RNNBase``), ``rnnfast.LSTMCell`` subclasses ``torch.nn.LSTMCell``, etc. The constructor
is torch.nn's own ``__init__``: the same argument validation, attributes (``mode``,
``_flat_weights``, ``_flat_weights_names``, ``_all_weights``, ``proj_size``, ...), parameter
names, shapes, registration order and initialization, repr, state_dict, and torch.nn's
semi-public methods (``check_forward_args``, ``check_input``, ``check_hidden_size``,
``get_expected_hidden_size``, ``permute_hidden``, ``flatten_parameters``, ``reset_parameters``).
Only ``forward`` is rnnfast's: it has torch.nn's signature and return values (optional hx,
unbatched input, batch_first, bidirectional, dropout between layers, PackedSequence) and makes one
call into ``rnnfast.functional`` per layer and direction; each call runs the whole sequence in C++
(never a Python loop over time steps). Cells are one step (T = 1) of the same ops.

Differences from torch.nn, all of them explicit errors or additions, never silent changes:

* ``GRU(reset_after=False)`` / ``GRUCell(reset_after=False)`` select the textbook GRU (Cho et
  al. 2014); the default ``reset_after=True`` is torch.nn.GRU's (cuDNN's) formulation. The repr
  shows ``reset_after=False`` only when set; the state_dict is torch.nn.GRU's either way.
* ``PackedSequence`` input runs the padded batch with per-sequence lengths (a finished sequence's
  state is frozen, never updated by padding; no sorting) and returns a ``PackedSequence`` with the
  input's ``batch_sizes`` and indices, as torch.nn does.
* ``repr(RNN(..., nonlinearity='relu'))`` shows the nonlinearity (torch.nn.RNN's repr omits it).
* ``RNNCell(nonlinearity=...)`` is checked when the cell is built (torch.nn.RNNCell waits for
  forward).
* Under ``torch.autocast`` the layers compute and return float32 (see rf.autocast_float32).
* Pickling (``torch.save(model)``) goes through ``rnnfast._serialization``: importing rnnfast
  allowlists the layers for torch.load's default ``weights_only=True``.

Dropout between layers is ``torch.nn.functional.dropout`` on each time-major layer output (for
packed input: on its packed rows), the same call ATen's CPU RNN makes, so on CPU a given seed gives
torch.nn's masks.

torch.compile: Dynamo refuses every module that is an instance of torch.nn.RNN/GRU/LSTM unless
``torch._dynamo.config.allow_rnn`` is set. rnnfast's layers run no cuDNN code, so rnnfast lifts
that refusal for its own classes only (``_hooks.let_dynamo_trace``; torch.nn's own layers are
treated as before).
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import _hooks, _ops, _serialization
from ._serialization import PicklableMixin as _PicklableMixin
from . import functional as rf
from ._cells import CELLS, lookup as _cell_of

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]


#: torch.nn.RNN's nonlinearity -> its mode string, from the registry (rnnfast._cells)
_RNN_MODES = {c.nonlinearity: c.mode for c in CELLS.values() if c.nonlinearity}
#: torch.nn's mode string -> the cell's op name (the fast path's lookup; rnnfast._cells.lookup's)
_OP_OF_MODE = {c.mode: c.name for c in CELLS.values()}
#: a cell's parameter names for the fast path, by its `bias`
_CELL_PARAMS = {True: ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), False: ("weight_ih", "weight_hh")}


def _rnn_mode(nonlinearity):
    if nonlinearity in _RNN_MODES:
        return _RNN_MODES[nonlinearity]
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


class _Packing(NamedTuple):
    """The layout of a PackedSequence input: packed row k is row idx[k] of the (T*B, *) zero-padded
    batch, time-major, its sequences in the PackedSequence's sorted order (longest first: the ops'
    steps then run over their live rows only, csrc/cpu/backend.h live_end); lengths (B,) int64 are
    in that order too. sorted_indices / unsorted_indices (None when the PackedSequence has none) put
    hx, given in the caller's batch order as torch.nn reads it, into the sorted order (states_in)
    and h_n back (states_out)."""
    like: PackedSequence
    lengths: Tensor
    idx: Tensor
    T: int
    B: int
    sorted_indices: Optional[Tensor] = None
    unsorted_indices: Optional[Tensor] = None

    def states_in(self, s):
        """A state (L*D, B, H) in the caller's batch order -> the sorted order."""
        return s if self.sorted_indices is None else s.index_select(1, self.sorted_indices)

    def states_out(self, s):
        """A final state (L*D, B, H) in the sorted order -> the caller's batch order."""
        return s if self.unsorted_indices is None else s.index_select(1, self.unsorted_indices)

    @classmethod
    def of(cls, packed):
        """Validates a PackedSequence (a hand-made one may hold anything) and returns its packing.

        ValueError/TypeError for: batch_sizes not a non-increasing, positive, 1-D int64 CPU tensor;
        data whose row count is not sum(batch_sizes); sorted_indices that is not a permutation of
        0..B-1 (duplicates, out of range, wrong shape or dtype); unsorted_indices that is not its
        inverse. On CUDA the index tensors are read on the host once, in a single copy (one sync
        per module call, needed both to validate them and for the CPU lengths the ops take;
        torch.nn reads them on the host too); pack_padded_sequence(enforce_sorted=True) input has
        no indices and needs none. The index of packed rows into the padded batch is built on the
        CPU and sent to the data's device without waiting (pinned memory)."""
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        where = "PackedSequence"
        if not isinstance(batch_sizes, Tensor) or batch_sizes.dtype != torch.int64 or batch_sizes.dim() != 1:
            raise TypeError(f"{where}: batch_sizes must be a 1-D int64 tensor, got "
                            + (f"{batch_sizes.dim()}-D {batch_sizes.dtype}" if isinstance(batch_sizes, Tensor)
                               else type(batch_sizes).__name__))
        if batch_sizes.device.type != "cpu":
            raise ValueError(f"{where}: batch_sizes must be on the CPU, got {batch_sizes.device}")
        if batch_sizes.numel() == 0 or int(batch_sizes.min()) < 1 or bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
            raise ValueError(f"{where}: batch_sizes must be non-empty, positive and non-increasing, got "
                             f"{batch_sizes.tolist()}")
        T, B = batch_sizes.numel(), int(batch_sizes[0])
        if not isinstance(data, Tensor) or data.dim() < 1 or data.shape[0] != int(batch_sizes.sum()):
            raise ValueError(f"{where}: data must have sum(batch_sizes) = {int(batch_sizes.sum())} rows, got "
                             + (f"shape {tuple(data.shape)}" if isinstance(data, Tensor) else type(data).__name__))
        perm = None  # sorted_indices on the CPU
        if sorted_indices is not None or unsorted_indices is not None:
            for name, ix in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
                if not isinstance(ix, Tensor) or ix.dtype != torch.int64 or tuple(ix.shape) != (B,):
                    got = (f"{ix.dtype} of shape {tuple(ix.shape)}" if isinstance(ix, Tensor)
                           else type(ix).__name__)
                    raise ValueError(f"{where}: {name} must be an int64 tensor of shape (B,) = ({B},) "
                                     f"(batch_sizes[0] = B), got {got}")
            if sorted_indices.device != unsorted_indices.device:
                raise ValueError(f"{where}: sorted_indices is on {sorted_indices.device} but unsorted_indices "
                                 f"on {unsorted_indices.device}")
            perm, inverse = torch.stack((sorted_indices, unsorted_indices)).cpu()  # the one host read
            arange = torch.arange(B)
            if not torch.equal(perm.sort().values, arange):
                raise ValueError(f"{where}: sorted_indices must be a permutation of 0..{B - 1} (each sequence "
                                 f"once), got {perm.tolist()}")
            if not torch.equal(inverse[perm], arange):
                raise ValueError(f"{where}: unsorted_indices must be the inverse permutation of sorted_indices "
                                 f"({perm.tolist()}), got {inverse.tolist()}")
        alive = torch.arange(B)[None, :] < batch_sizes[:, None]  # (T, B): sorted slot j alive at step t
        t_idx, j_idx = alive.nonzero(as_tuple=True)               # t-major, then slot: the packed order
        lengths = alive.sum(0)  # the length of the sequence in each sorted slot
        idx = t_idx * B + j_idx
        if data.device.type == "cuda":
            idx = idx.pin_memory().to(data.device, non_blocking=True)
        else:
            idx = idx.to(data.device)
        if perm is None:
            return cls(packed, lengths, idx, T, B)
        return cls(packed, lengths, idx, T, B, sorted_indices.to(data.device), unsorted_indices.to(data.device))

    def rows(self, padded):
        """(T, B, *) padded -> its packed rows (N, *)."""
        rows = padded.reshape((-1,) + tuple(padded.shape[2:]))
        return rows if self.full else rows.index_select(0, self.idx)

    @property
    def full(self):
        """Every sequence T long: idx is the identity, the packed rows already the padded batch."""
        return self.idx.numel() == self.T * self.B

    def padded(self, rows):
        """Packed rows (N, *) -> (T, B, *), zeros past each sequence's end."""
        tail = tuple(rows.shape[1:])
        if self.full:
            return rows.reshape((self.T, self.B) + tail)
        return rows.new_zeros((self.T * self.B,) + tail).index_copy_(0, self.idx, rows).view((self.T, self.B) + tail)

    def repack(self, padded):
        """(T, B, *) padded output -> a PackedSequence laid out as the input."""
        like = self.like
        return PackedSequence(self.rows(padded), like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _suffix(layer, direction):
    """Parameter name suffix of a layer-direction, as torch.nn: _l0, _l0_reverse, ..."""
    return f"_l{layer}" + ("_reverse" if direction == 1 else "")


def _param(module, name):
    """module.<name> for a parameter, without nn.Module.__getattr__ (~1 us a lookup, 5 of them per
    layer call: a fifth of a small T=1 step): straight from _parameters, else (a parametrization's
    property, torch.func.functional_call's swapped-in plain tensor) the attribute as usual."""
    w = module._parameters.get(name)
    return w if w is not None else getattr(module, name)


def _check_tensor(name, what, t, weight):
    """Input/state tensors must share the parameters' dtype and device (clear error otherwise).
    Returns t, cast to float32 where autocast produced it in lower precision (see rf.autocast_float32)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected {what} to be a Tensor, got {type(t).__name__}")
    if weight.dtype == torch.float32:
        (t,) = rf.autocast_float32(t)
    if t.dtype != weight.dtype:
        raise ValueError(
            f"{name} {what} dtype ({t.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert {what}: {what}.to({weight.dtype}), or convert model: model.to({t.dtype})")
    if t.device != weight.device:
        raise RuntimeError(
            f"{name} {what} is on device {t.device} but the weights are on {weight.device}; "
            f"move one of them (model.to({t.device}) or {what}.to({weight.device}))")
    return t


def _check_shape(t, expected, msg="Expected hidden size {}, got {}"):
    if tuple(t.shape) != tuple(expected):
        raise RuntimeError(msg.format(tuple(expected), list(t.shape)))


def _cell_and_options(mode, reset_after):
    """The registry Cell of torch.nn's mode string and its option values for the ops (gru:
    (reset_after,); others: ())."""
    cell = _cell_of(mode)
    return cell, ((bool(reset_after),) if cell.options else ())


def _call_layer(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, reverse, reset_after, lengths=None, w_hr=None):
    """One layer, one direction, the whole sequence: x (T, B, I) -> (output, hy[, cy]), through
    rnnfast.functional's one call path (the op first; the Python checks only name the argument of a
    call the op refuses). mode: torch.nn's mode string, looked up in the cell registry."""
    cell, options = _cell_and_options(mode, reset_after)
    return rf._layer(cell.name, x, h, c if cell.has_cell_state else None, w_ih, w_hh, b_ih, b_hh, bool(reverse),
                     options, lengths, w_hr)


# ---- multi-layer modules -----------------------------------------------------------------------

class _RecurrentMixin:
    """rnnfast's forward for RNN, GRU and LSTM. It comes before torch.nn.RNN/GRU/LSTM in the MRO:
    torch.nn's __init__, attributes and helper methods stay, forward is replaced."""

    _reset_after = True  # only GRU uses it

    def _check_config(self, name):
        """torch.nn.RNNBase.__init__ accepts num_layers=True and bidirectional='yes' or 1, and its
        forward then fails with a TypeError; rnnfast's forward raises the same type, with a message."""
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, numbers.Integral):
            raise TypeError(f"{name}: num_layers must be an int, got {type(self.num_layers).__name__} "
                            f"{self.num_layers!r}")
        if not isinstance(self.bidirectional, bool):
            raise TypeError(f"{name}: bidirectional must be a bool, got "
                            f"{type(self.bidirectional).__name__} {self.bidirectional!r}")

    def _layer_weights(self, layer, direction):
        suffix = _suffix(layer, direction)
        w_ih = _param(self, "weight_ih" + suffix)
        w_hh = _param(self, "weight_hh" + suffix)
        if self.bias:
            return w_ih, w_hh, _param(self, "bias_ih" + suffix), _param(self, "bias_hh" + suffix)
        return w_ih, w_hh, None, None

    def _decode_params(self):
        """What rnnfast::decode needs of this stack to step it in C++ (csrc/core/decode.h): (cell name,
        option values, flat per-layer weights w_ih, w_hh[, b_ih, b_hh], has_biases), read from the
        registry row and _layer_weights, the same cell and weights forward runs. None for what the op
        does not run: a bidirectional stack, or an LSTM with a projection (proj_size > 0)."""
        if self.bidirectional or self.proj_size:
            return None
        cell, options = _cell_and_options(self.mode, self._reset_after)
        options = list(options)
        params = [w for layer in range(self.num_layers) for w in self._layer_weights(layer, 0) if w is not None]
        return cell.name, options, params, bool(self.bias)

    def _projection(self, layer, direction):
        """weight_hr of a layer-direction (LSTM proj_size > 0), else None."""
        if not self.proj_size:
            return None
        return _param(self, "weight_hr" + _suffix(layer, direction))

    def _usual_call(self, input, states):
        """The usual call in a few comparisons, as the cells' _step: a 3-D tensor of the weights'
        dtype and device and the module's input size, states None or exactly the expected shapes,
        dtype and device. Returns (time-major contiguous input, h0, c0 or None), or None for anything
        else, which goes through _prepare: its checks, casts (autocast), unbatched input,
        PackedSequence and error messages. For the usual call every check of _prepare passes and
        changes nothing, so both give the same arguments to the same ops."""
        w = _param(self, "weight_ih_l0")
        if not (isinstance(input, Tensor) and input.dim() == 3 and input.dtype == w.dtype
                and input.device == w.device and input.size(2) == self.input_size
                and type(self.num_layers) is int and type(self.bidirectional) is bool):
            return None
        if self.batch_first:
            input = input.transpose(0, 1)
        if input.size(0) == 0:
            return None
        layers, batch = self.num_layers * (2 if self.bidirectional else 1), input.size(1)
        shapes = ((layers, batch, self.proj_size or self.hidden_size), (layers, batch, self.hidden_size))
        if states is None:
            states = tuple(input.new_zeros(shapes[i]) for i in range(1 + _cell_of(self.mode).has_cell_state))
        elif all(isinstance(s, Tensor) and s.shape == shapes[i] and s.dtype == w.dtype and s.device == w.device
                 for i, s in enumerate(states)):
            states = tuple(s.contiguous() for s in states)
        else:
            return None
        return input.contiguous(), states[0], (states[1] if len(states) == 2 else None)

    def _prepare(self, input, states):
        """Checks input and states (a tuple of 1 or 2 tensors, or None) like torch.nn, returns
        (time-major contiguous input, full states (L*D, B, H), is_batched, packing). A PackedSequence
        becomes its padded data and packing its _Packing (else None)."""
        name = type(self).__name__
        self._check_config(name)
        packing = None
        if isinstance(input, PackedSequence):
            packing = _Packing.of(input)
            input = packing.padded(input.data)
        elif not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        weight = self.weight_ih_l0
        input = _check_tensor(name, "input", input, weight)
        is_batched = input.dim() == 3
        batch_first = self.batch_first and packing is None  # packed data is time-major already
        if not is_batched:
            input = input.unsqueeze(0 if batch_first else 1)
        if batch_first:
            input = input.transpose(0, 1)
        if input.size(-1) != self.input_size:
            raise RuntimeError("input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {input.size(-1)}")
        if input.size(0) == 0:
            # torch.nn's message; a zero-length sequence has no output to return.
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        batch = input.size(1)
        layers = self.num_layers * (2 if self.bidirectional else 1)
        # h: (L*D, B, proj_size or H); c: (L*D, B, H)
        shapes = [(layers, batch, self.proj_size or self.hidden_size), (layers, batch, self.hidden_size)]
        if states is None:
            states = tuple(input.new_zeros(shapes[i]) for i in range(1 + _cell_of(self.mode).has_cell_state))
        else:
            kind = "hx and cx" if len(states) == 2 else "hx"
            dims = tuple(s.dim() if isinstance(s, Tensor) else None for s in states)
            want = 3 if is_batched else 2
            if any(d != want for d in dims):
                got = ", ".join(f"{d}-D" for d in dims)
                got = f"({got}) tensors" if len(states) == 2 else f"{got} tensor"
                rank = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {rank} input, {kind} should also be {want}-D but got {got}")
            if not is_batched:
                states = tuple(s.unsqueeze(1) for s in states)
            states = tuple(_check_tensor(name, "hx" if i == 0 else "cx", s, weight) for i, s in enumerate(states))
            for i, s in enumerate(states):
                msg = (f"Expected hidden[{i}] size {{}}, got {{}}" if len(states) == 2
                       else "Expected hidden size {}, got {}")
                _check_shape(s, shapes[i], msg)
        if packing is not None:
            states = tuple(packing.states_in(s) for s in states)
        return input.contiguous(), tuple(s.contiguous() for s in states), is_batched, packing

    def _run(self, input, h0, c0, packing=None):
        """All layers and directions; input (T, B, I) contiguous -> (output (T, B, D*H), h_n[, c_n]).
        packing: the _Packing of a PackedSequence input, else None."""
        lengths = packing.lengths if packing else None
        num_directions = 2 if self.bidirectional else 1
        cell, options = _cell_and_options(self.mode, self._reset_after)  # once, not per layer
        h_n, c_n = [], []
        layer_input = input
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                idx = layer * num_directions + direction
                res = rf._layer(cell.name, layer_input, h0[idx], c0[idx] if c0 is not None else None,
                                *self._layer_weights(layer, direction), direction == 1, options, lengths,
                                self._projection(layer, direction))
                outputs.append(res[0])
                h_n.append(res[1])
                if c0 is not None:
                    c_n.append(res[2])
            layer_output = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_output = self._dropout(layer_output, packing)
            layer_input = layer_output
        if len(h_n) == 1:  # one layer-direction: (1, B, H) views of the op's fresh hy/cy, no copy
            return layer_input, h_n[0].unsqueeze(0), (c_n[0].unsqueeze(0) if c0 is not None else None)
        return layer_input, torch.stack(h_n), (torch.stack(c_n) if c0 is not None else None)

    def _dropout(self, output, packing):
        """Dropout between layers, drawn as torch.nn draws it (same masks for the same seed on CPU): on
        the time-major layer output, or for packed input on the packed rows (padding stays zero)."""
        if packing is None:
            return torch.nn.functional.dropout(output, self.dropout, True)
        return packing.padded(torch.nn.functional.dropout(packing.rows(output), self.dropout, True))

    def _finish(self, output, is_batched, packing=None):
        if packing is not None:
            return packing.repack(output)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
        return output

    def _fast(self, input, states):
        """The usual call in C++ (rnnfast._C.forward_layers, csrc/python.cpp): the same op calls as
        _run with the same arguments (unbatched input, a PackedSequence and dropout between layers
        while training too, with the same dropout draws), without the Python around them; None where
        it declines (see there) or where this is not plain eager execution (_ops.eager_fast), and then
        forward takes the Python path."""
        if not _ops.eager_fast():
            return None
        packing = None
        if isinstance(input, PackedSequence):
            packing = (input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            input = input.data
        fast = _ops.forward_layers(_OP_OF_MODE.get(self.mode), self._reset_after, input, states, self._parameters,
                                   self._flat_weights_names, self.num_layers, self.bidirectional,
                                   self.batch_first, self.input_size, self.hidden_size, False,
                                   self.dropout if self.training else 0.0, packing, self.proj_size)
        if fast is None or packing is None:
            return fast
        return PackedSequence(fast[0], *packing), fast[1]

    def forward(self, input, hx=None):
        fast = self._fast(input, None if hx is None else (hx,))
        if fast is not None:
            return fast
        usual = self._usual_call(input, None if hx is None else (hx,))
        if usual is not None:
            output, h_n, _ = self._run(usual[0], usual[1], None)
            return (output.transpose(0, 1) if self.batch_first else output), h_n
        input, (h0,), is_batched, packing = self._prepare(input, None if hx is None else (hx,))
        output, h_n, _ = self._run(input, h0, None, packing)
        if packing is not None:
            h_n = packing.states_out(h_n)
        return self._finish(output, is_batched, packing), (h_n if is_batched else h_n.squeeze(1))


class _ResetAfterMixin:
    """GRU's candidate form, shared by GRU and GRUCell: reset_after=True is torch.nn.GRU's
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); False is the textbook's n = tanh(W_in x + b_in +
    W_hn (r*h) + b_hn). Both keep torch.nn's parameter names and shapes (and state_dict)."""

    @staticmethod
    def _checked_reset_after(reset_after):
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after should be of type bool, got: {type(reset_after).__name__}")
        return reset_after

    @property
    def _reset_after(self):
        # getattr: a GRU pickled by torch.save(model) before reset_after existed loads as the default
        return self.__dict__.get("reset_after", True)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if not self._reset_after:
            s += ", reset_after=False"
        return s


class _NonlinearityMixin:
    """RNN: the repr names a non-default nonlinearity (torch.nn.RNNCell's does, torch.nn.RNN's not)."""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s


class RNN(_PicklableMixin, _NonlinearityMixin, _RecurrentMixin, torch.nn.RNN):
    """Drop-in for ``torch.nn.RNN`` (Elman RNN, tanh or ReLU) on rnnfast's fused ops; a subclass of
    torch.nn.RNN.

    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Same constructor (torch.nn.RNN's own),
    parameters, initialization, forward signature and outputs as torch.nn.RNN:
    ``output, h_n = rnn(x, h0)``. A torch.nn.RNN state_dict loads unchanged, and vice versa.
    PackedSequence input gives a PackedSequence output, as torch.nn.RNN.
    """


class GRU(_PicklableMixin, _ResetAfterMixin, _RecurrentMixin, torch.nn.GRU):
    """Drop-in for ``torch.nn.GRU`` on rnnfast's fused ops, plus the textbook variant; a subclass of
    torch.nn.GRU.

    Gates r, z, n (PyTorch's order). With the default ``reset_after=True`` this is exactly
    torch.nn.GRU (and cuDNN): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    ``reset_after=False`` is the textbook GRU (Cho et al. 2014; d2l):
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn). Both share h' = (1 - z) * n + z * h and the same
    parameter names and shapes, so either loads a torch.nn.GRU state_dict (the numbers only match
    torch.nn.GRU's with reset_after=True).

    Same constructor (torch.nn.GRU's, plus keyword-only ``reset_after``), parameters,
    initialization, forward signature and outputs as torch.nn.GRU: ``output, h_n = gru(x, h0)``.
    """

    def __init__(self, *args, reset_after=True, **kwargs):
        reset_after = self._checked_reset_after(reset_after)
        super().__init__(*args, **kwargs)
        self.reset_after = reset_after


class LSTM(_PicklableMixin, _RecurrentMixin, torch.nn.LSTM):
    """Drop-in for ``torch.nn.LSTM`` on rnnfast's fused ops; a subclass of torch.nn.LSTM.

    Gates i, f, g, o (PyTorch's order); c' = f * c + i * g, h' = o * tanh(c'). Same constructor
    (torch.nn.LSTM's own), parameters, initialization, forward signature and outputs as
    torch.nn.LSTM: ``output, (h_n, c_n) = lstm(x, (h0, c0))``. A torch.nn.LSTM state_dict loads
    unchanged, and vice versa.

    ``proj_size > 0`` adds torch.nn.LSTM's projection h' = W_hr (o * tanh(c')) (weight_hr_l*,
    (proj_size, hidden_size); h0/h_n and the output have proj_size features).
    PackedSequence input gives a PackedSequence output, as torch.nn.LSTM.
    """

    def forward(self, input, hx=None):
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError("LSTM: hx must be a tuple (h_0, c_0) of two tensors")
        fast = self._fast(input, None if hx is None else tuple(hx))
        if fast is not None:
            return fast
        usual = self._usual_call(input, None if hx is None else tuple(hx))
        if usual is not None:
            output, h_n, c_n = self._run(*usual)
            return (output.transpose(0, 1) if self.batch_first else output), (h_n, c_n)
        input, (h0, c0), is_batched, packing = self._prepare(input, None if hx is None else tuple(hx))
        output, h_n, c_n = self._run(input, h0, c0, packing)
        if packing is not None:
            h_n, c_n = packing.states_out(h_n), packing.states_out(c_n)
        if not is_batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._finish(output, is_batched, packing), (h_n, c_n)


# ---- cells: one time step of the same ops ------------------------------------------------------

class _CellMixin:
    """rnnfast's forward for the cells (before torch.nn.RNNCell/GRUCell/LSTMCell in the MRO):
    weight_ih (G*H, I), weight_hh (G*H, H), bias_ih/bias_hh (G*H) or None are torch.nn's."""

    _reset_after = True

    def _step(self, input, states):
        """Checks like torch.nn's cells, then runs one step (T = 1). states: tuple or None."""
        if _ops.eager_fast():  # the usual call in C++ (see _RecurrentMixin._fast)
            fast = _ops.forward_layers(_OP_OF_MODE.get(self.mode), self._reset_after, input, states, self._parameters,
                                       _CELL_PARAMS[self.bias], 1, False, False, self.input_size,
                                       self.hidden_size, True, 0.0, None, 0)
            if fast is not None:
                return fast
        w_ih = _param(self, "weight_ih")
        # The usual call (batched tensors of the weights' dtype and device, the module's sizes) in a
        # few comparisons: every check of _checked_step passes for it and changes nothing. Anything
        # else goes through _checked_step, its casts and its errors.
        if not (isinstance(input, Tensor) and input.dim() == 2 and input.dtype == w_ih.dtype
                and input.device == w_ih.device and input.size(1) == self.input_size):
            return self._checked_step(input, states)
        shape = (input.size(0), self.hidden_size)
        if states is None:
            states = tuple(input.new_zeros(shape) for _ in range(1 + _cell_of(self.mode).has_cell_state))
        elif not all(isinstance(s, Tensor) and s.shape == shape and s.dtype == w_ih.dtype
                     and s.device == w_ih.device for s in states):
            return self._checked_step(input, states)
        c = states[1].contiguous() if len(states) == 2 else None
        b_ih, b_hh = (_param(self, "bias_ih"), _param(self, "bias_hh")) if self.bias else (None, None)
        return _call_layer(self.mode, input.unsqueeze(0).contiguous(), states[0].contiguous(), c, w_ih,
                           _param(self, "weight_hh"), b_ih, b_hh, False, self._reset_after)[1:]

    def _checked_step(self, input, states):
        """_step with every check (messages as torch.nn's cells) and autocast's cast."""
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        input = _check_tensor(name, "input", input, self.weight_ih)
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"{name}: input has inconsistent input_size: got {input.size(-1)}, "
                               f"expected {self.input_size}")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        expected = (input.size(0), self.hidden_size)
        if states is None:
            states = tuple(input.new_zeros(expected) for _ in range(1 + _cell_of(self.mode).has_cell_state))
        else:
            checked = []
            for i, s in enumerate(states):
                what = "hx" if len(states) == 1 else f"hx[{i}]"
                if not isinstance(s, Tensor):
                    raise TypeError(f"{name}: expected {what} to be a Tensor, got {type(s).__name__}")
                if s.dim() != input.dim() - (0 if is_batched else 1):
                    raise RuntimeError(
                        f"{name}: Expected {what} to be {'2D' if is_batched else '1D'} for "
                        f"{'batched 2D' if is_batched else 'unbatched 1D'} input, got {s.dim()}D")
                checked.append(_check_tensor(name, what, s, self.weight_ih))
            states = tuple(checked)
            if not is_batched:
                states = tuple(s.unsqueeze(0) for s in states)
            for i, s in enumerate(states):
                msg = (f"{name}: Expected hidden[{i}] size {{}}, got {{}}" if len(states) == 2
                       else f"{name}: Expected hidden size {{}}, got {{}}")
                _check_shape(s, expected, msg)
        h = states[0].contiguous()
        c = states[1].contiguous() if len(states) == 2 else None
        res = _call_layer(self.mode, input.unsqueeze(0).contiguous(), h, c, self.weight_ih,
                          self.weight_hh, self.bias_ih, self.bias_hh, reverse=False,
                          reset_after=self._reset_after)
        new_states = res[1:]
        if not is_batched:
            new_states = tuple(s.squeeze(0) for s in new_states)
        return new_states


class RNNCell(_PicklableMixin, _CellMixin, torch.nn.RNNCell):
    """Drop-in for ``torch.nn.RNNCell`` (a subclass): h' = act(W_ih x + b_ih + W_hh h + b_hh), act
    tanh or relu.

    Same constructor, parameters (weight_ih, weight_hh, bias_ih, bias_hh), initialization and
    forward (input (B, I) or (I,), optional hx) as torch.nn.RNNCell; runs one step of rnnfast's
    sequence op. An unknown nonlinearity is a ValueError here already (torch.nn: at forward).
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None):
        _rnn_mode(nonlinearity)  # ValueError naming the choices
        super().__init__(input_size, hidden_size, bias, nonlinearity, device, dtype)

    @property
    def mode(self):
        return _rnn_mode(self.nonlinearity)

    def forward(self, input, hx=None):
        return self._step(input, None if hx is None else (hx,))[0]


class GRUCell(_PicklableMixin, _ResetAfterMixin, _CellMixin, torch.nn.GRUCell):
    """Drop-in for ``torch.nn.GRUCell`` (a subclass; gates r, z, n), plus the textbook variant.

    ``reset_after=True`` (default) is torch.nn.GRUCell exactly; ``reset_after=False`` is the
    textbook GRU, n = tanh(W_in x + b_in + W_hn (r * h) + b_hn), with the same parameter names
    and shapes. Runs one step of rnnfast's sequence op.
    """

    mode = CELLS["gru"].mode

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 reset_after=True):
        reset_after = self._checked_reset_after(reset_after)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.reset_after = reset_after

    def forward(self, input, hx=None):
        return self._step(input, None if hx is None else (hx,))[0]


class LSTMCell(_PicklableMixin, _CellMixin, torch.nn.LSTMCell):
    """Drop-in for ``torch.nn.LSTMCell`` (a subclass): ``h', c' = cell(x, (h, c))``, gates i, f, g, o.

    Same constructor, parameters, initialization and forward as torch.nn.LSTMCell; runs one step
    of rnnfast's sequence op.
    """

    mode = CELLS["lstm"].mode

    def forward(self, input, hx=None):
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError("LSTMCell: hx must be a tuple (h_0, c_0) of two tensors")
        h, c = self._step(input, None if hx is None else tuple(hx))
        return h, c


_hooks.let_dynamo_trace((RNN, GRU, LSTM))
_serialization.register((RNN, GRU, LSTM, RNNCell, GRUCell, LSTMCell))  # torch.load(weights_only=True)
