"""rnnfast: fused C++/CUDA recurrent kernels and gradient clipping for PyTorch, with the
d2l (Dive into Deep Learning) language-model workflow around them.

    import rnnfast
    lstm = rnnfast.LSTM(28, 256)                     # drop-in for torch.nn.LSTM
    rnnfast.clip_grad_norm_(lstm.parameters(), 1.0)  # drop-in for torch.nn.utils.clip_grad_norm_

Submodules: functional (one layer-direction ops), nn (modules), clip, scratch (pure-PyTorch
textbook references), data (text, Vocab, samplers), models (RNNLM), train (the training API: the
loop, re-exporting evaluation, generation, checkpoint, plotting, schedule and config), sine (the
textbook's sequence-model experiment), onnx (the ONNX translations of the ops, used by
torch.onnx.export(..., dynamo=True)).

The layers are torch.nn's classes (rnnfast.LSTM subclasses torch.nn.LSTM, ...); importing rnnfast
allowlists them for torch.load(weights_only=True) (whole-model checkpoints) and lets
torch.onnx.export find the ONNX translations of its ops (no onnx package is imported until then).
"""
__version__ = "0.1.0"

from . import functional, nn, onnx, scratch  # noqa: E402
from .clip import clip_grad_norm_, clip_grad_value_, get_total_norm  # noqa: E402
from .models import RNNLM  # noqa: E402
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

__all__ = [
    "RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "RNNLM",
    "clip_grad_norm_", "clip_grad_value_", "get_total_norm",
    "functional", "nn", "onnx", "scratch",
]
