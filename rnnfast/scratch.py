"""The from-scratch references: recurrent cells in plain PyTorch, written for clarity.

This module is the yardstick every fast kernel in rnnfast is tested against. It follows the
textbook (d2l, "RNN from scratch", "GRU", "LSTM"): a Python loop over time steps of matrix
products and elementwise ops, and parameters in the textbook's own layout, one matrix per
gate and per source (input x or hidden state h):

    W_x* : (num_inputs, num_hiddens)     W_h* : (num_hiddens, num_hiddens)     b_* : (num_hiddens,)

Layer parameter lists (one layer, one direction):

    RNN                     [W_xh, W_hh, b_h]
    GRU, reset_after=False  [W_xr, W_hr, b_r, W_xz, W_hz, b_z, W_xh, W_hh, b_h]          (9)
    GRU, reset_after=True   [W_xr, W_hr, b_r, W_xz, W_hz, b_z, W_xh, W_hh, b_xh, b_hh]   (10)
    LSTM                    [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c]

The cells (X: (B, I) one time step, H, C: (B, H)):

    RNN   H = act(X W_xh + H W_hh + b_h),  act = tanh or relu
    GRU   R = sigmoid(X W_xr + H W_hr + b_r),  Z = sigmoid(X W_xz + H W_hz + b_z)
          reset_after=False (textbook, Cho et al. 2014):  N = tanh(X W_xh + (R * H) W_hh + b_h)
          reset_after=True  (torch.nn.GRU, cuDNN):        N = tanh(X W_xh + b_xh + R * (H W_hh + b_hh))
          H = Z * H + (1 - Z) * N
    LSTM  I, F, O = sigmoid(X W_x* + H W_h* + b_*),  C~ = tanh(X W_xc + H W_hc + b_c)
          C = F * C + I * C~,  H = O * tanh(C)

The reset_after=True candidate needs two biases because the recurrent one sits inside R * (...);
in every other place a single bias per gate suffices.

Mapping to torch.nn (``to_torch_params`` / ``from_torch_params``): torch stores per layer
weight_ih_l{k} = [W_x*ᵀ stacked by gate] (G*H, I), weight_hh_l{k} = [W_h*ᵀ] (G*H, H) and two
biases bias_ih_l{k}, bias_hh_l{k} (G*H,), gate order RNN: one; GRU: r, z, n; LSTM: i, f, g, o
(g is the textbook's candidate cell C~). The textbook bias of a gate is b = b_ih + b_hh, except
the reset_after GRU candidate where b_xh = b_ih[n] and b_hh = b_hh[n] stay separate.
``to_torch_params`` puts each textbook bias into bias_ih and zeros into bias_hh (for the
reset_after candidate: b_xh into bias_ih, b_hh into bias_hh), so textbook -> torch -> textbook
is exact, bit for bit. torch -> textbook -> torch keeps the weights exactly and moves the whole
bias into bias_ih: a different split with the same sum, hence the same function.

Running a backward direction: every layer function takes ``reverse=True``, which walks
t = T-1 .. 0 and stores output[t] = the state after consuming input[t] (as torch.nn's reverse
directions). Equivalently: ``out, h = layer(inputs.flip(0), ...); out = out.flip(0)``.

Also here: the textbook language model (``get_*_params``, ``init_*_state``, ``rnn``, ``gru``,
``lstm``, ``RNNModelScratch``), ``grad_clipping`` and ``ScratchRNN``, a torch.nn-compatible
multi-layer module that runs this module's math (a slow but transparent recurrent backend).
"""
import math
from typing import Callable, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._cells import CELLS as _REGISTRY, NAMES

__all__ = [
    "CELLS", "REFERENCES", "rnn_layer", "gru_layer", "lstm_layer", "layer", "torch_layer",
    "to_torch_params", "from_torch_params",
    "get_rnn_params", "get_gru_params", "get_lstm_params",
    "init_rnn_state", "init_gru_state", "init_lstm_state",
    "rnn", "gru", "lstm", "RNNModelScratch", "ScratchRNN", "grad_clipping",
]

#: Cell names accepted by ``layer``, ``ScratchRNN`` and the converters: the registry's (rnnfast._cells).
CELLS = NAMES


def _check_cell(cell, allowed=CELLS):
    if cell not in allowed:
        raise ValueError(f"unknown cell {cell!r}; valid cells: {', '.join(allowed)}")


def _check_layer_args(inputs, states, hidden_size):
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
        raise ValueError("inputs must be a tensor of shape (T, B, I) (time-major), got "
                         + (f"shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor)
                            else type(inputs).__name__))
    if inputs.shape[0] == 0:
        raise ValueError("inputs has no time steps (T == 0)")
    B = inputs.shape[1]
    for s in states:
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (B, hidden_size):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"state must have shape (B, H) = ({B}, {hidden_size}), got {got}")


def _check_params(name, params, expected):
    if len(params) not in expected:
        lens = " or ".join(str(n) for n in expected)
        raise ValueError(f"{name} takes a list of {lens} layer parameters (textbook layout, "
                         f"without the output layer W_hq, b_q), got {len(params)}")


def _time_steps(num_steps, reverse):
    return range(num_steps - 1, -1, -1) if reverse else range(num_steps)


# ---------------------------------------------------------------------------------------------
# Layer-level references: one layer, one direction, inputs (T, B, I) -> outputs (T, B, H)
# ---------------------------------------------------------------------------------------------

def rnn_layer(inputs, H, params, nonlinearity="tanh", reverse=False):
    """Vanilla RNN layer. params = [W_xh, W_hh, b_h]; returns (outputs (T, B, H), H_T)."""
    _check_params("rnn_layer", params, (3,))
    W_xh, W_hh, b_h = params
    if nonlinearity == "tanh":
        act = torch.tanh
    elif nonlinearity == "relu":
        act = torch.relu
    else:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    _check_layer_args(inputs, (H,), W_hh.shape[0])
    outputs = [None] * inputs.shape[0]
    for t in _time_steps(inputs.shape[0], reverse):
        X = inputs[t]
        H = act(X @ W_xh + H @ W_hh + b_h)
        outputs[t] = H
    return torch.stack(outputs), H


def gru_layer(inputs, H, params, reset_after=False, reverse=False):
    """GRU layer. params: 9 entries (reset_after=False, textbook) or 10 (reset_after=True,
    candidate biases b_xh and b_hh apart), see the module docstring. Returns (outputs, H_T)."""
    if reset_after:
        _check_params("gru_layer(reset_after=True)", params, (10,))
        W_xr, W_hr, b_r, W_xz, W_hz, b_z, W_xh, W_hh, b_xh, b_hh = params
    else:
        _check_params("gru_layer(reset_after=False)", params, (9,))
        W_xr, W_hr, b_r, W_xz, W_hz, b_z, W_xh, W_hh, b_h = params
    _check_layer_args(inputs, (H,), W_hh.shape[0])
    outputs = [None] * inputs.shape[0]
    for t in _time_steps(inputs.shape[0], reverse):
        X = inputs[t]
        R = torch.sigmoid(X @ W_xr + H @ W_hr + b_r)
        Z = torch.sigmoid(X @ W_xz + H @ W_hz + b_z)
        if reset_after:
            H_tilde = torch.tanh(X @ W_xh + b_xh + R * (H @ W_hh + b_hh))
        else:
            H_tilde = torch.tanh(X @ W_xh + (R * H) @ W_hh + b_h)
        H = Z * H + (1 - Z) * H_tilde
        outputs[t] = H
    return torch.stack(outputs), H


def lstm_layer(inputs, state, params, reverse=False):
    """LSTM layer. state = (H, C); params = [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o,
    W_xc, W_hc, b_c]. Returns (outputs (T, B, H), (H_T, C_T))."""
    _check_params("lstm_layer", params, (12,))
    W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c = params
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError("lstm_layer state must be a pair (H, C)")
    H, C = state
    _check_layer_args(inputs, (H, C), W_hi.shape[0])
    outputs = [None] * inputs.shape[0]
    for t in _time_steps(inputs.shape[0], reverse):
        X = inputs[t]
        I = torch.sigmoid(X @ W_xi + H @ W_hi + b_i)
        F_ = torch.sigmoid(X @ W_xf + H @ W_hf + b_f)
        O = torch.sigmoid(X @ W_xo + H @ W_ho + b_o)
        C_tilde = torch.tanh(X @ W_xc + H @ W_hc + b_c)
        C = F_ * C + I * C_tilde
        H = O * torch.tanh(C)
        outputs[t] = H
    return torch.stack(outputs), (H, C)


class Reference(NamedTuple):
    """A cell's reference: its layer function, called as layer(inputs, state, params, reverse,
    reset_after), and the torch gate index of each textbook gate group, in the textbook's order
    (the textbook's LSTM lists i, f, o, c; torch's order is i, f, g(=c), o)."""
    layer: Callable
    textbook_order: Tuple[int, ...]


#: cell name -> its reference: one entry per row of the cell registry (rnnfast._cells).
REFERENCES = {
    "rnn_tanh": Reference(lambda x, s, p, reverse, reset_after: rnn_layer(x, s, p, "tanh", reverse), (0,)),
    "rnn_relu": Reference(lambda x, s, p, reverse, reset_after: rnn_layer(x, s, p, "relu", reverse), (0,)),
    "gru": Reference(lambda x, s, p, reverse, reset_after: gru_layer(x, s, p, reset_after, reverse), (0, 1, 2)),
    "lstm": Reference(lambda x, s, p, reverse, reset_after: lstm_layer(x, s, p, reverse), (0, 1, 3, 2)),
}


def layer(cell, inputs, state, params, reverse=False, reset_after=True):
    """Dispatch to the layer function of ``cell`` ('rnn_tanh', 'rnn_relu', 'gru', 'lstm').
    state is H, or (H, C) for lstm; ``reset_after`` only matters for 'gru'."""
    _check_cell(cell, CELLS)
    return REFERENCES[cell].layer(inputs, state, params, reverse, reset_after)


def torch_layer(cell, inputs, state, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, reset_after=True):
    """``layer`` on weights in torch.nn's layout (w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,) or
    None): the reference for rnnfast.functional's calls, converted through ``from_torch_params``
    (differentiable: gradients reach the torch-layout tensors). Returns what ``layer`` returns."""
    sd = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
    if b_ih is not None:
        sd["bias_ih_l0"] = b_ih
    if b_hh is not None:
        sd["bias_hh_l0"] = b_hh
    params = from_torch_params(cell, sd, reset_after=reset_after)
    return layer(cell, inputs, state, params, reverse=reverse, reset_after=reset_after)


# ---------------------------------------------------------------------------------------------
# Converters between the textbook layout and torch.nn's
# ---------------------------------------------------------------------------------------------
# Textbook gate groups (W_x*, W_h*, b_*) in torch's gate order (REFERENCES[cell].textbook_order,
# a self-inverse permutation). For the reset_after GRU the candidate group carries two biases.
def _has_reset_after(cell):
    return "reset_after" in _REGISTRY[cell].options


def _textbook_groups(cell, params):
    """Split a textbook list into per-gate (W_x, W_h, [biases]) in torch's gate order."""
    _check_cell(cell)
    G = _REGISTRY[cell].num_gates
    if _has_reset_after(cell):
        _check_params(f"to_torch_params({cell!r})", params, (3 * G, 3 * G + 1))
    else:
        _check_params(f"to_torch_params({cell!r})", params, (3 * G,))
    groups = [list(params[3 * g:3 * g + 3]) for g in range(G)]
    if len(params) == 3 * G + 1:
        groups[-1].append(params[-1])  # the candidate's second bias, b_hh
    return [groups[g] for g in REFERENCES[cell].textbook_order]


def to_torch_params(cell, params, layer=0, suffix=""):
    """Textbook layer params -> {'weight_ih_l{layer}{suffix}': ..., 'weight_hh_...', 'bias_ih_...',
    'bias_hh_...'} in torch.nn's layout. For 'gru' the layout is read from len(params): 9 is the
    textbook (reset_after=False) form, 10 the reset_after=True form. Each textbook bias goes to
    bias_ih and bias_hh gets zeros, except the reset_after candidate's b_hh. Differentiable."""
    groups = _textbook_groups(cell, params)
    w_ih = torch.cat([g[0].t() for g in groups], 0)
    w_hh = torch.cat([g[1].t() for g in groups], 0)
    b_ih = torch.cat([g[2] for g in groups], 0)
    b_hh = torch.cat([g[3] if len(g) == 4 else torch.zeros_like(g[2]) for g in groups], 0)
    tag = f"_l{layer}{suffix}"
    return {"weight_ih" + tag: w_ih, "weight_hh" + tag: w_hh,
            "bias_ih" + tag: b_ih, "bias_hh" + tag: b_hh}


def from_torch_params(cell, state_dict, layer=0, suffix="", reset_after=True):
    """torch.nn layout -> textbook layer params (a list, see the module docstring).

    ``state_dict`` is anything with torch.nn's names (a module's state_dict(), dict of
    named_parameters(), the output of ``to_torch_params``); the biases may be absent
    (bias=False), then they count as zeros. For 'gru', ``reset_after`` picks the 10-entry
    (True) or 9-entry (False: candidate biases summed) layout. Differentiable: gradients flow
    back to the torch-layout tensors."""
    _check_cell(cell)
    tag = f"_l{layer}{suffix}"
    if "weight_ih" + tag not in state_dict or "weight_hh" + tag not in state_dict:
        raise KeyError(f"weight_ih{tag} / weight_hh{tag} not found in the given state dict")
    G = _REGISTRY[cell].num_gates
    w_ih, w_hh = state_dict["weight_ih" + tag], state_dict["weight_hh" + tag]
    if w_ih.shape[0] % G or w_hh.shape != (w_ih.shape[0], w_ih.shape[0] // G):
        raise ValueError(f"{cell} weights must be (G*H, I) and (G*H, H) with G={G}; got "
                         f"{tuple(w_ih.shape)} and {tuple(w_hh.shape)}")
    zeros = w_ih.new_zeros(w_ih.shape[0])
    b_ih = state_dict.get("bias_ih" + tag, zeros)
    b_hh = state_dict.get("bias_hh" + tag, zeros)
    W_x, W_h = w_ih.chunk(G, 0), w_hh.chunk(G, 0)
    B_ih, B_hh = b_ih.chunk(G, 0), b_hh.chunk(G, 0)
    groups = []
    for g in range(G):
        group = [W_x[g].t(), W_h[g].t()]
        if _has_reset_after(cell) and g == G - 1 and reset_after:
            group += [B_ih[g], B_hh[g]]
        else:
            group.append(B_ih[g] + B_hh[g])
        groups.append(group)
    order = REFERENCES[cell].textbook_order  # a self-inverse permutation
    return [p for g in order for p in groups[g]]


# ---------------------------------------------------------------------------------------------
# The textbook language model: parameters, states, forward functions, RNNModelScratch
# ---------------------------------------------------------------------------------------------

def _normal(shape, device):
    return torch.randn(size=shape, device=device) * 0.01


def _three(num_inputs, num_hiddens, device):
    return (_normal((num_inputs, num_hiddens), device),
            _normal((num_hiddens, num_hiddens), device),
            torch.zeros(num_hiddens, device=device))


def _with_output_layer(params, num_hiddens, num_outputs, device):
    params = list(params) + [_normal((num_hiddens, num_outputs), device),
                             torch.zeros(num_outputs, device=device)]
    for p in params:
        p.requires_grad_(True)
    return params


def get_rnn_params(vocab_size, num_hiddens, device):
    """[W_xh, W_hh, b_h, W_hq, b_q]: weights normal * 0.01, biases zeros (the textbook init)."""
    return _with_output_layer(_three(vocab_size, num_hiddens, device),
                              num_hiddens, vocab_size, device)


def get_gru_params(vocab_size, num_hiddens, device):
    """[W_xr, W_hr, b_r, W_xz, W_hz, b_z, W_xh, W_hh, b_h, W_hq, b_q] (reset_after=False form)."""
    layer_params = [p for _ in range(3) for p in _three(vocab_size, num_hiddens, device)]
    return _with_output_layer(layer_params, num_hiddens, vocab_size, device)


def get_lstm_params(vocab_size, num_hiddens, device):
    """[W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q]."""
    layer_params = [p for _ in range(4) for p in _three(vocab_size, num_hiddens, device)]
    return _with_output_layer(layer_params, num_hiddens, vocab_size, device)


def init_rnn_state(batch_size, num_hiddens, device, dtype=None):
    return (torch.zeros((batch_size, num_hiddens), device=device, dtype=dtype),)


def init_gru_state(batch_size, num_hiddens, device, dtype=None):
    return (torch.zeros((batch_size, num_hiddens), device=device, dtype=dtype),)


def init_lstm_state(batch_size, num_hiddens, device, dtype=None):
    return (torch.zeros((batch_size, num_hiddens), device=device, dtype=dtype),
            torch.zeros((batch_size, num_hiddens), device=device, dtype=dtype))


def _steps_tensor(inputs):
    # The textbook passes a (T, B, V) tensor; a list of (B, V) steps is accepted too.
    return torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs


def _output_layer(outputs, W_hq, b_q):
    # torch.cat of the per-step H @ W_hq + b_q: rows t*B + b.
    return torch.cat([H @ W_hq + b_q for H in outputs], dim=0)


def rnn(inputs, state, params):
    """Textbook RNN forward: inputs (T, B, V) one-hot, state (H,) -> (Y (T*B, V), (H,))."""
    outputs, H = rnn_layer(_steps_tensor(inputs), state[0], params[:3])
    return _output_layer(outputs, *params[3:]), (H,)


def gru(inputs, state, params):
    """Textbook GRU forward (reset_after=False): -> (Y (T*B, V), (H,))."""
    outputs, H = gru_layer(_steps_tensor(inputs), state[0], params[:9], reset_after=False)
    return _output_layer(outputs, *params[9:]), (H,)


def lstm(inputs, state, params):
    """Textbook LSTM forward: state (H, C) -> (Y (T*B, V), (H, C))."""
    outputs, (H, C) = lstm_layer(_steps_tensor(inputs), tuple(state), params[:12])
    return _output_layer(outputs, *params[12:]), (H, C)


class RNNModelScratch:
    """A textbook RNN language model implemented from scratch.

    net = RNNModelScratch(len(vocab), 512, device, get_gru_params, init_gru_state, gru)
    Y, state = net(X, net.begin_state(X.shape[0], device))   # X: (B, T) token ids
    """

    def __init__(self, vocab_size, num_hiddens, device, get_params, init_state, forward_fn):
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.params = get_params(vocab_size, num_hiddens, device)
        self.init_state, self.forward_fn = init_state, forward_fn

    def __call__(self, X, state):
        if not isinstance(X, torch.Tensor) or X.dim() != 2 or X.is_floating_point():
            raise ValueError("X must be an integer tensor of token ids, shape (batch, num_steps)")
        X = F.one_hot(X.T.long(), self.vocab_size).to(self.params[0].dtype)
        return self.forward_fn(X, state, self.params)

    def begin_state(self, batch_size, device):
        return self.init_state(batch_size, self.num_hiddens, device, dtype=self.params[0].dtype)

    def parameters(self):
        """The params list, so that torch.optim.SGD(net.parameters(), lr) works as usual."""
        return iter(self.params)


def grad_clipping(net, theta):
    """The textbook gradient clipping: rescale all gradients so that their global L2 norm is at
    most theta (no epsilon, host-side comparison). Returns the norm before clipping."""
    if isinstance(net, nn.Module):
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        params = net.params
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
    if norm > theta:
        for param in params:
            param.grad[:] *= theta / norm
    return norm


# ---------------------------------------------------------------------------------------------
# ScratchRNN: a torch.nn-compatible multi-layer module running the reference math
# ---------------------------------------------------------------------------------------------

class ScratchRNN(nn.Module):
    """torch.nn.RNN/GRU/LSTM look-alike (same parameter names, shapes, init, call convention)
    whose forward converts its parameters to the textbook layout (``from_torch_params``) and runs
    the layer references above. Slow; meant as a transparent backend and a test reference.

    cell: 'rnn_tanh', 'rnn_relu', 'gru' or 'lstm'. reset_after only matters for 'gru'
    (True: torch.nn.GRU's formula; False: the textbook's). forward(input (T, B, I), hx=None)
    returns (output (T, B, D*H), h_n (D*num_layers, B, H)) or, for lstm, (output, (h_n, c_n)).
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, dropout=0.0,
                 reset_after=True, bias=True, batch_first=False, bidirectional=False):
        super().__init__()
        _check_cell(cell, CELLS)
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.dropout, self.reset_after = num_layers, float(dropout), reset_after
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self._suffixes = ["", "_reverse"] if bidirectional else [""]
        G = _REGISTRY[cell].num_gates
        for k in range(num_layers):
            layer_in = input_size if k == 0 else hidden_size * len(self._suffixes)
            for sfx in self._suffixes:
                tag = f"_l{k}{sfx}"
                self.register_parameter("weight_ih" + tag,
                                        nn.Parameter(torch.empty(G * hidden_size, layer_in)))
                self.register_parameter("weight_hh" + tag,
                                        nn.Parameter(torch.empty(G * hidden_size, hidden_size)))
                if bias:
                    self.register_parameter("bias_ih" + tag,
                                            nn.Parameter(torch.empty(G * hidden_size)))
                    self.register_parameter("bias_hh" + tag,
                                            nn.Parameter(torch.empty(G * hidden_size)))
        self.reset_parameters()

    def reset_parameters(self):
        # torch.nn's init: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self):
        return (f"{self.cell!r}, {self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, dropout={self.dropout}, "
                f"reset_after={self.reset_after}, bidirectional={self.bidirectional}")

    def forward(self, input, hx=None):
        if not isinstance(input, torch.Tensor) or input.dim() != 3:
            raise ValueError("ScratchRNN input must be a 3-D tensor (T, B, I) "
                             "((B, T, I) with batch_first=True)")
        if self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input feature size {input.shape[-1]} != input_size "
                             f"{self.input_size}")
        D = len(self._suffixes)
        B = input.shape[1]
        state_shape = (self.num_layers * D, B, self.hidden_size)
        is_lstm = _REGISTRY[self.cell].has_cell_state
        if hx is None:
            zeros = input.new_zeros(state_shape)
            hx = (zeros, zeros) if is_lstm else zeros
        states = list(hx) if is_lstm else [hx]
        if is_lstm and len(states) != 2:
            raise ValueError("LSTM hx must be a pair (h_0, c_0)")
        for s in states:
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != state_shape:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"hidden state must have shape {state_shape}, got {got}")

        weights = self._parameters
        layer_input = input
        h_n, c_n = [], []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            direction_outputs = []
            for d, sfx in enumerate(self._suffixes):
                params = from_torch_params(self.cell, weights, layer=k, suffix=sfx,
                                           reset_after=self.reset_after)
                i = k * D + d
                state = (states[0][i], states[1][i]) if is_lstm else states[0][i]
                out, final = layer(self.cell, layer_input, state, params,
                                   reverse=(sfx == "_reverse"), reset_after=self.reset_after)
                direction_outputs.append(out)
                if is_lstm:
                    h_n.append(final[0])
                    c_n.append(final[1])
                else:
                    h_n.append(final)
            layer_input = torch.cat(direction_outputs, dim=-1) if D > 1 else direction_outputs[0]
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        if is_lstm:
            return output, (torch.stack(h_n), torch.stack(c_n))
        return output, torch.stack(h_n)
