"""Evaluation: the perplexity of a language model on held-out token ids (the textbook's measure)."""
import math

import torch
from torch import nn

from . import distributed

__all__ = ["evaluate", "perplexity"]


def evaluate(net, corpus, batch_size=32, num_steps=35, device="cpu"):
    """Perplexity of `net` on held-out token ids `corpus` (already mapped through the training vocab).

    The ids are cut into `batch_size` contiguous streams read `num_steps` at a time with the state
    carried across chunks (sequential partitioning without the random offset), so every token but the
    first of each stream is predicted exactly once. Runs in eval mode under torch.no_grad.
    Under torch.distributed the streams are split across ranks and the loss is summed over them
    (every rank gets the perplexity of the whole corpus).
    """
    corpus = torch.as_tensor(corpus)
    if corpus.dim() != 1:
        raise ValueError(f"corpus must be a 1-D tensor of token ids, got shape {tuple(corpus.shape)}")
    if corpus.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint16, torch.uint8):
        raise TypeError(f"corpus must hold integer token ids, got dtype {corpus.dtype}")
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got {batch_size} and {num_steps}")
    stream_len = (corpus.numel() - 1) // batch_size
    if stream_len < 1:
        raise ValueError(f"held-out corpus of {corpus.numel()} tokens is too short for "
                         f"batch_size={batch_size} (needs at least {batch_size + 1} tokens)")
    n = stream_len * batch_size
    rank, world_size = distributed.world()
    rows = torch.arange(batch_size).tensor_split(world_size)[rank]  # this rank's streams
    rows = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)
    Xs = corpus[:n].reshape(batch_size, stream_len)[rows].long()
    Ys = corpus[1:n + 1].reshape(batch_size, stream_len)[rows].long()
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    try:
        with torch.no_grad():
            state = net.begin_state(batch_size=Xs.shape[0], device=device)
            for i in range(0, stream_len if Xs.shape[0] else 0, num_steps):
                X = Xs[:, i:i + num_steps].to(device)
                y = Ys[:, i:i + num_steps].T.reshape(-1).to(device)
                y_hat, state = net(X, state)
                loss_sum += nn.functional.cross_entropy(y_hat.float(), y, reduction="sum").double()
    finally:
        net.train(was_training)
    return math.exp(distributed.all_reduce_sum(loss_sum).item() / n)


perplexity = evaluate  # the textbook's name for the quantity
