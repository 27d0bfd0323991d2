"""Loads rnnfast._C and registers the fake (meta) implementations of the clipping ops, so they
trace under torch.compile and pass torch.library.opcheck. Schemas live in csrc/ops.cpp."""
import functools

import torch

from . import _C  # noqa: F401  (importing the extension runs its op registrations)

__all__ = ["result_dtype"]


def result_dtype(tensors):
    """The dtype of the total norm: torch.stack's promotion of all dtypes in the list."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def _fake_norm(tensors, *args):
    torch._check(len(tensors) > 0, lambda: "rnnfast: expected at least one tensor, got an empty list")
    return tensors[0].new_empty((), dtype=result_dtype(tensors))


@torch.library.register_fake("rnnfast::grad_norm")
def _grad_norm_fake(tensors, norm_type):
    return _fake_norm(tensors)


@torch.library.register_fake("rnnfast::clip_grads_with_norm_")
def _clip_grads_with_norm_fake(grads, max_norm, total_norm):
    return None


@torch.library.register_fake("rnnfast::clip_grad_norm_")
def _clip_grad_norm_fake(grads, max_norm, norm_type):
    return _fake_norm(grads)
