"""Whole-model checkpoints: ``torch.save(model)`` / ``torch.load(path)`` with rnnfast layers inside.

torch.load's default ``weights_only=True`` unpickler builds only allowlisted globals. Importing
rnnfast allowlists (``torch.serialization.add_safe_globals``) exactly what a pickled rnnfast layer
references: its class and ``install_rnnfast_to_load_this`` below. Everything else in a layer's
state (OrderedDict, set, lists of names, Parameters, ints, floats, bools, strings) is already
allowed by torch. The user's own model class and torch.nn's modules (Embedding, Linear, ...) are
not on torch's default list either; a script that loads whole models allowlists those itself,
exactly as it had to with torch.nn's layers.

The layers pickle as ``install_rnnfast_to_load_this(cls, state)`` (``__reduce_ex__``), so the first
global a loader meets in a layer is that function: where rnnfast is not installed, torch.load's
error names ``rnnfast._serialization.install_rnnfast_to_load_this`` (weights_only=True), or says
``No module named 'rnnfast'`` (weights_only=False).
"""
from __future__ import annotations

import torch

_CLASSES: tuple = ()


def install_rnnfast_to_load_this(cls, state):
    """Rebuilds a pickled rnnfast layer: ``cls`` one of rnnfast's module classes, ``state`` what its
    ``__getstate__`` returned (torch.nn's own ``__setstate__`` restores it)."""
    if cls not in _CLASSES:
        raise TypeError(f"install_rnnfast_to_load_this: {cls!r} is not an rnnfast module class")
    if not isinstance(state, dict):
        raise TypeError(f"install_rnnfast_to_load_this: state must be a dict, got {type(state).__name__}")
    module = cls.__new__(cls)
    module.__setstate__(state)
    return module


class PicklableMixin:
    """First in the MRO of rnnfast's layers: pickle (and deepcopy) them through
    install_rnnfast_to_load_this."""

    def __reduce_ex__(self, protocol):
        return install_rnnfast_to_load_this, (type(self), self.__getstate__())


def register(classes) -> None:
    """Allowlists rnnfast's layer classes and their rebuild function for weights_only loads."""
    global _CLASSES
    _CLASSES = tuple(classes)
    torch.serialization.add_safe_globals([install_rnnfast_to_load_this, *_CLASSES])
