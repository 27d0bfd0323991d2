"""The Python package's rooms: rnnfast.train is the public training API, and each concern it
re-exports lives in a module of its own (one concern each); the benchmark runners are not in the
package (they live with bench/)."""
import importlib
import pathlib

import rnnfast
import rnnfast.train as T

ROOMS = {  # public name in rnnfast.train -> the module that defines it
    "train": "rnnfast.train", "train_epoch": "rnnfast.train",
    "evaluate": "rnnfast.evaluation", "perplexity": "rnnfast.evaluation",
    "predict": "rnnfast.generation",
    "save_checkpoint": "rnnfast.checkpoint", "load_checkpoint": "rnnfast.checkpoint",
    "plot_perplexity": "rnnfast.plotting",
    "plateau": "rnnfast.schedule",
}


def test_train_reexports_each_room():
    for name in T.__all__:
        assert hasattr(T, name), name
    for name, module in ROOMS.items():
        obj = getattr(T, name)
        assert obj.__module__ == module, (name, obj.__module__)
        assert getattr(importlib.import_module(module), name) is obj


def test_the_package_holds_no_benchmark_runner():
    pkg = pathlib.Path(rnnfast.__file__).parent
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        assert "bench/run.py\", " not in text and "_bench_script" not in text, path
