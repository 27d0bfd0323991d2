"""Integration with optional or heavy parts of torch, set up lazily so ``import rnnfast`` stays cheap.

``after_import(name, callback)`` runs ``callback(module)`` once module ``name`` is imported (at
once if it already is), through a standard ``importlib`` meta-path finder that wraps the module's
loader; nothing is imported ahead of need. rnnfast uses it for:

* Dynamo (``torch._dynamo.variables.builder``): ``let_dynamo_trace`` lets torch.compile trace
  rnnfast's RNN/GRU/LSTM, which are torch.nn.RNN/GRU/LSTM subclasses and so fall under Dynamo's
  blanket refusal of those classes (``torch._dynamo.config.allow_rnn``, meant for cuDNN's RNNs);
* ONNX (``onnxscript.function_libs.torch_lib.registration``): ``rnnfast.onnx`` registers the
  translations of rnnfast's ops there, where ``torch.onnx.export(..., dynamo=True)`` looks up
  every op's ONNX function.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading
import warnings

_lock = threading.Lock()
_pending: dict = {}  # module name -> callbacks to run after it is imported


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it asks the other finders for the spec and wraps
    its loader's exec_module so that the callbacks run right after the module's code."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_run_callbacks(module):
            exec_module(module)
            _run_callbacks(fullname, module)

        loader.exec_module = exec_then_run_callbacks  # this spec's own loader instance
        return spec


_finder = _AfterImportFinder()


def _run_callbacks(name, module):
    with _lock:
        callbacks = _pending.pop(name, [])
    for callback in callbacks:
        try:
            callback(module)
        except Exception as e:  # an integration must never break the user's import
            warnings.warn(f"rnnfast: could not set up its integration with {name}: {e!r}", stacklevel=2)


def after_import(name: str, callback) -> None:
    """Run callback(module) once module `name` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        with _lock:
            _pending.setdefault(name, []).append(callback)
        _run_callbacks(name, module)
        return
    with _lock:
        _pending.setdefault(name, []).append(callback)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


# ---- Dynamo --------------------------------------------------------------------------------------

def let_dynamo_trace(classes) -> None:
    """Dynamo refuses to trace any instance of torch.nn.RNN/GRU/LSTM ("Attempted to wrap RNN, GRU,
    or LSTM") unless torch._dynamo.config.allow_rnn is set, a guard for cuDNN's RNN. rnnfast's
    subclasses run rnnfast's ops (with fake kernels, fine under torch.compile), so the check is
    lifted for instances of `classes` only, while Dynamo wraps them; torch.nn's own layers keep
    the default."""
    classes = tuple(classes)

    def patch(builder):
        VariableBuilder = getattr(builder, "VariableBuilder", None)
        wrap_module = getattr(VariableBuilder, "wrap_module", None)
        if wrap_module is None or getattr(wrap_module, "_rnnfast_classes", None) is not None:
            return
        from torch._dynamo import config

        def rnnfast_wrap_module(self, value):
            if isinstance(value, classes) and not config.allow_rnn:
                with config.patch(allow_rnn=True):
                    return wrap_module(self, value)
            return wrap_module(self, value)

        rnnfast_wrap_module._rnnfast_classes = classes
        rnnfast_wrap_module.__wrapped__ = wrap_module
        VariableBuilder.wrap_module = rnnfast_wrap_module

    after_import("torch._dynamo.variables.builder", patch)
