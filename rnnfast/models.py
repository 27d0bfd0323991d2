"""RNNLM: the textbook's recurrent language model, with a choice of recurrent backend.

    tokens (B, T) -> one-hot (T, B, V) or nn.Embedding (T, B, E) -> recurrent layers (T, B, H)
                  -> linear head -> logits (T*B, V), row t*B + b = step t of sequence b

The logits' layout is the textbook's (``Y.T.reshape(-1)`` is the matching target vector), so
``F.cross_entropy(logits, Y.T.reshape(-1))`` is the loss.

Backends (``BACKENDS``; ``recurrent_module`` builds one layer stack):
    'torch'    torch.nn.RNN / GRU / LSTM (oneDNN/ATen on CPU, cuDNN on GPU)
    'scratch'  rnnfast.scratch.ScratchRNN: the plain-PyTorch references, slow and transparent
    'rnnfast'  rnnfast.nn.RNN / GRU / LSTM: the fused kernels (imported lazily)
All three share torch.nn's parameter names and shapes, so a state_dict moves between them.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ._cells import CELLS as _REGISTRY, NAMES as CELLS

__all__ = ["RNNLM", "BACKENDS", "CELLS", "recurrent_module", "detach_state"]


def _module_for(namespace, cell):
    """The torch.nn-style class of a cell in `namespace` (torch.nn or rnnfast.nn) and its extra
    constructor arguments: RNN with the nonlinearity, else the class named by the mode (GRU, LSTM)."""
    row = _REGISTRY[cell]
    if row.nonlinearity:
        return namespace.RNN, {"nonlinearity": row.nonlinearity}
    return getattr(namespace, row.mode), {}


def _torch_backend(cell, reset_after):
    if "reset_after" in _REGISTRY[cell].options and not reset_after:
        raise ValueError("backend 'torch' has only torch.nn.GRU's reset_after=True form; "
                         "for the textbook GRU (reset_after=False) use backend 'scratch' or "
                         "'rnnfast'")
    return _module_for(nn, cell)


def _scratch_backend(cell, reset_after):
    from .scratch import ScratchRNN

    def make(input_size, hidden_size, **kwargs):
        return ScratchRNN(cell, input_size, hidden_size, reset_after=reset_after, **kwargs)

    return make, {}


def _rnnfast_backend(cell, reset_after):
    try:
        from . import nn as rnnfast_nn
    except ImportError as e:
        raise ImportError(f"backend 'rnnfast' needs rnnfast.nn and its compiled extension "
                          f"rnnfast._C (pip install --no-build-isolation -e .): {e}") from e
    cls, extra = _module_for(rnnfast_nn, cell)
    if "reset_after" in _REGISTRY[cell].options:
        extra["reset_after"] = reset_after
    return cls, extra


#: backend name -> factory(cell, reset_after) -> (module class or constructor, extra kwargs).
#: The constructor is called as cls(input_size, hidden_size, num_layers=..., dropout=..., **extra).
BACKENDS = {
    "torch": _torch_backend,
    "scratch": _scratch_backend,
    "rnnfast": _rnnfast_backend,
}


def _check_choice(what, value, valid):
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(repr, valid))}")


def recurrent_module(backend, cell, input_size, hidden_size, num_layers=1, dropout=0.0,
                     reset_after=True):
    """Build a (time-major, unidirectional) recurrent layer stack from a backend by name."""
    _check_choice("backend", backend, tuple(BACKENDS))
    _check_choice("cell", cell, CELLS)
    cls, extra = BACKENDS[backend](cell, reset_after)
    return cls(input_size, hidden_size, num_layers=num_layers, dropout=dropout, **extra)


def detach_state(state):
    """Cut the graph behind a recurrent state (a tensor, or a tuple such as LSTM's (h, c))."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(detach_state(s) for s in state)


class RNNLM(nn.Module):
    """Recurrent language model: (one-hot | embedding) -> recurrent layers -> linear head.

    Args:
        vocab_size: number of token ids V.
        num_hiddens: hidden size H of every recurrent layer.
        cell: a cell name of the registry, rnnfast._cells.NAMES (e.g. 'gru', 'lstm').
        num_layers: stacked recurrent layers; dropout: between them (as torch.nn's dropout).
        embedding_dim: None for the textbook's one-hot input, else an nn.Embedding of that size.
        backend: 'torch', 'scratch' or 'rnnfast' (see the module docstring).
        bidirectional: must be False (a language model may not read the tokens it predicts).
        reset_after: GRU candidate form; False (the textbook's) needs 'scratch' or 'rnnfast'.

    ``config`` holds the constructor arguments: ``RNNLM(**model.config)`` rebuilds the model.
    """

    def __init__(self, vocab_size, num_hiddens=256, cell="gru", num_layers=1, dropout=0.0,
                 embedding_dim=None, backend="rnnfast", bidirectional=False, reset_after=True):
        super().__init__()
        _check_choice("cell", cell, CELLS)
        _check_choice("backend", backend, tuple(BACKENDS))
        if bidirectional:
            raise ValueError("bidirectional=True is not allowed for a language model: the "
                             "backward direction reads the future tokens the model must "
                             "predict, so it would learn to copy them (perplexity ~1 in "
                             "training, useless for generation)")
        for name, v in (("vocab_size", vocab_size), ("num_hiddens", num_hiddens),
                        ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if embedding_dim is not None and (not isinstance(embedding_dim, int) or embedding_dim <= 0):
            raise ValueError(f"embedding_dim must be None or a positive int, got {embedding_dim!r}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
        self.config = dict(vocab_size=vocab_size, num_hiddens=num_hiddens, cell=cell,
                           num_layers=num_layers, dropout=float(dropout),
                           embedding_dim=embedding_dim, backend=backend,
                           bidirectional=bool(bidirectional), reset_after=bool(reset_after))
        self.vocab_size, self.num_hiddens, self.cell = vocab_size, num_hiddens, cell
        self.num_layers, self.num_directions = num_layers, 1
        if embedding_dim is None:
            self.embedding = None
            input_size = vocab_size
        else:
            self.embedding = nn.Embedding(vocab_size, embedding_dim)
            input_size = embedding_dim
        self.rnn = recurrent_module(backend, cell, input_size, num_hiddens,
                                    num_layers=num_layers, dropout=dropout,
                                    reset_after=reset_after)
        self.linear = nn.Linear(num_hiddens, vocab_size)

    def forward(self, X, state=None):
        """X: (B, T) int64 token ids; state from begin_state (None: zeros).
        Returns (logits (T*B, V), new state)."""
        if not isinstance(X, torch.Tensor) or X.dim() != 2:
            raise ValueError("X must be a 2-D tensor of token ids, shape (batch, num_steps), got "
                             + (f"shape {tuple(X.shape)}" if isinstance(X, torch.Tensor)
                                else type(X).__name__))
        if X.is_floating_point() or X.is_complex() or X.dtype == torch.bool:
            raise TypeError(f"X must hold integer token ids (int64), got dtype {X.dtype}")
        if state is None:
            state = self.begin_state(X.shape[0], X.device)
        if self.embedding is None:
            inputs = F.one_hot(X.T.long(), self.vocab_size).to(self.linear.weight.dtype)
        else:
            inputs = self.embedding(X.T.long())
        Y, state = self.rnn(inputs, state)
        return self.linear(Y.reshape(-1, Y.shape[-1])), state

    def _decoder(self):
        """The arguments rnnfast::decode (csrc/core/decode.h) needs to run this model's generation steps
        in C++, as a dict, or None when the op would not compute exactly what forward computes: another
        backend (torch, scratch), a subclass with its own forward, a layer stack rnnfast.nn did not build
        as is (a subclass, LSTM proj_size > 0), an Embedding with max_norm (its lookup renormalizes rows
        in place), forward hooks, or tensors of mixed dtype or device. Dropout needs no check: generation
        runs in eval mode, where there is none."""
        if self.config.get("backend") != "rnnfast" or type(self).forward is not RNNLM.forward:
            return None
        from . import nn as rnnfast_nn  # built it, so importable

        if type(self.rnn) not in (rnnfast_nn.RNN, rnnfast_nn.GRU, rnnfast_nn.LSTM) or type(self.linear) is not nn.Linear:
            return None
        if self.embedding is not None and (type(self.embedding) is not nn.Embedding
                                           or self.embedding.max_norm is not None):
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.modules()):
            return None
        from torch.nn.modules import module as _module
        if _module._global_forward_hooks or _module._global_forward_pre_hooks:
            return None
        layers = self.rnn._decode_params()
        if layers is None:
            return None
        cell, options, params, has_biases = layers
        head_weight = self.linear.weight
        embedding = None if self.embedding is None else self.embedding.weight
        tensors = params + [t for t in (embedding, self.linear.bias) if t is not None]
        if any(t.dtype != head_weight.dtype or t.device != head_weight.device for t in tensors):
            return None
        return dict(cell=cell, options=options, params=params, has_biases=has_biases, embedding=embedding,
                    head_weight=head_weight, head_bias=self.linear.bias)

    def begin_state(self, batch_size, device=None):
        """Zeros of shape (num_layers, batch_size, H); a pair (h, c) of them for 'lstm'."""
        w = self.linear.weight
        shape = (self.num_layers * self.num_directions, batch_size, self.num_hiddens)
        h = torch.zeros(shape, device=w.device if device is None else device, dtype=w.dtype)
        return (h, torch.zeros_like(h)) if _REGISTRY[self.cell].has_cell_state else h

    @staticmethod
    def detach_state(state):
        return detach_state(state)
