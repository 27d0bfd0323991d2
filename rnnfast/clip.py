"""Gradient clipping with torch.nn.utils' contract, fused into one C++ call per gradient list.

``clip_grad_norm_`` returns the same total norm and leaves the same clipped grads as
``torch.nn.utils.clip_grad_norm_`` (to summation-order rounding: rnnfast accumulates in float64 on
CPU, so for long float32 lists its norm is the more accurate one), but runs one op for the whole list: one parallel pass for the norm and one for the scale on
CPU; on CUDA at most three kernel launches and no host synchronization.

``foreach`` is accepted for signature compatibility and otherwise ignored: the fused op always
handles the whole list at once. Lists the fused op does not take (grads on several devices, sparse
or complex grads, devices other than CPU/CUDA) are passed to torch's implementation unchanged,
``foreach`` included.
"""
import types
import warnings

import torch

from . import _ops as _registered  # noqa: F401  (loads the ops and their fake kernels)

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_", "grad_clipping"]

_ops = torch.ops.rnnfast


def _nonfinite_error(norm_type):
    # torch's message, word for word.
    return RuntimeError(
        f"The total norm of order {norm_type} for gradients from "
        "`parameters` is non-finite, so it cannot be clipped. To disable "
        "this error and scale the gradients by the non-finite norm anyway, "
        "set `error_if_nonfinite=False`"
    )


def _tensor_list(tensors):
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


@torch.no_grad()
def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """The p-norm of ``tensors`` viewed as one vector (torch.nn.utils.get_total_norm)."""
    tensors = _tensor_list(tensors)
    norm_type = float(norm_type)
    if not tensors:
        return torch.tensor(0.0)
    try:
        total = _ops.grad_norm(tensors, norm_type)
    except NotImplementedError:
        return torch.nn.utils.get_total_norm(tensors, norm_type, error_if_nonfinite, foreach)
    if error_if_nonfinite and torch.logical_or(total.isnan(), total.isinf()):
        raise _nonfinite_error(norm_type)
    return total


@torch.no_grad()
def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """grad *= clamp(max_norm / (total_norm + 1e-6), max=1) for every grad, in place
    (torch.nn.utils.clip_grads_with_norm_)."""
    grads = [p.grad for p in _tensor_list(parameters) if p.grad is not None]
    max_norm = float(max_norm)
    if not grads:
        return
    if isinstance(total_norm, torch.Tensor) and total_norm.device != grads[0].device:
        total_norm = total_norm.to(grads[0].device)  # torch moves it too (non_blocking is not needed)
    try:
        _ops.clip_grads_with_norm_(grads, max_norm, total_norm)
    except NotImplementedError:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Clip the gradient norm of ``parameters`` in place; return the total norm before clipping.

    Same contract as torch.nn.utils.clip_grad_norm_: ``parameters`` is a tensor or an iterable of
    tensors (a generator is consumed once); grads that are None are skipped; the coefficient
    ``max_norm / (total_norm + 1e-6)``, clamped at 1, multiplies every grad; ``norm_type`` may be
    any float accepted by torch, ``inf`` included; the norm is a 0-dim tensor of the promoted
    grad dtype on the first grad's device (``torch.tensor(0.)`` when there is no grad); with
    ``error_if_nonfinite=True`` a nan/inf norm raises RuntimeError before any grad changes (this
    needs one device-to-host read, as in torch). ``foreach`` is ignored (see the module docstring).
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and not parameters:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    grads = [p.grad for p in parameters if p.grad is not None]
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not grads:
        return torch.tensor(0.0)
    try:
        if not error_if_nonfinite:
            return _ops.clip_grad_norm_(grads, max_norm, norm_type)
        total = _ops.grad_norm(grads, norm_type)
    except NotImplementedError:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    if torch.logical_or(total.isnan(), total.isinf()):
        raise _nonfinite_error(norm_type)
    _ops.clip_grads_with_norm_(grads, max_norm, total)
    return total


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every grad to [-clip_value, clip_value] in place (torch.nn.utils.clip_grad_value_).

    Elementwise clamping needs no reduction, so there is nothing to fuse: this is torch's own
    implementation (foreach clamp per device and dtype), re-exported for a single import site."""
    return torch.nn.utils.clip_grad_value_(parameters, clip_value, foreach)


def grad_clipping(net, theta):
    """The textbook's call shape, ``grad_clipping(net, theta)``, on the fused op: clips the grads of
    ``net.parameters()`` (an nn.Module; only parameters that require grad) or of ``net.params`` (the
    from-scratch models) to global L2 norm ``theta``; returns the norm before clipping (a tensor).

    The arithmetic is torch's, not the textbook's: the coefficient is theta / (norm + 1e-6) clamped
    at 1 rather than theta / norm when norm > theta (a relative difference of 1e-6 / norm), and no
    host-side comparison happens, so the step never waits for the device.
    """
    if isinstance(net, torch.nn.Module):
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        params = list(net.params)
    return clip_grad_norm_(params, theta)
