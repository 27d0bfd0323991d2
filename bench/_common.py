"""Shared pieces of the benchmark suites: backends, canonical sizes, adaptive timing.

BACKENDS is the list of recurrent backends every suite compares (names from
rnnfast.models.BACKENDS, the one registry: 'torch', 'scratch', 'rnnfast'). 'rnnfast' has a
registry entry already (rnnfast.nn, imported lazily) and joins the benchmarks by adding it here.
"""
import os
import time

import torch

from rnnfast.models import recurrent_module

BACKENDS = ["scratch", "torch", "rnnfast"]

# docs/design.md §9 canonical sizes. d2l: the textbook's char model (V=28 one-hot input, so I=28).
SIZES = {
    "d2l-256": dict(B=32, T=35, I=28, H=256),
    "d2l-512": dict(B=32, T=35, I=28, H=512),
    "fastrnns": dict(B=64, T=100, I=512, H=512),
}


def make_layer(backend, cell, input_size, hidden_size, device, num_layers=1):
    """One recurrent layer stack from a backend by name (see rnnfast.models.recurrent_module)."""
    return recurrent_module(backend, cell, input_size, hidden_size, num_layers=num_layers).to(device)


def _no_sync():
    pass


def synchronizer(device):
    """The call a timed step ends with: torch.cuda.synchronize on a CUDA device, else a no-op.
    Resolved once per benchmark, outside the timed step: building torch.device(device) inside it
    cost ~0.45 us per call, charged to torch.nn and rnnfast but not to onnxruntime."""
    if torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _no_sync


# Seconds of timed rounds per benchmark: RNNFAST_BENCH_TARGET_S (tools/gpu_verify.sh sets 0.5 to fit
# the whole GPU suite in its window; the min_rounds floor still holds).
TARGET_S = float(os.environ.get("RNNFAST_BENCH_TARGET_S", "1.5"))


def run_adaptive(benchmark, fn, target_s=None, min_rounds=3, max_rounds=200):
    """Time fn with benchmark.pedantic: one or two warmup calls (also measured, to size the run),
    then enough rounds for about target_s seconds (default TARGET_S; at least min_rounds). fn must
    synchronize the device itself. Returns the median time in seconds."""
    target_s = TARGET_S if target_s is None else target_s

    def timed():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    first = timed()
    if first < 1.0:  # the first call pays one-time costs (CUDA context, cuBLAS handles, caches): size on a second
        first = timed()
    rounds = int(min(max_rounds, max(min_rounds, target_s / max(first, 1e-9))))
    # The sizing calls already warmed up; one more warmup only where it is cheap.
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1 if first < 0.2 else 0)
    # --benchmark-disable runs fn once and records nothing: report the sizing call instead.
    return benchmark.stats.stats.median if benchmark.stats is not None else first


def record(benchmark, median_s, **info):
    """Fill extra_info (see bench/report.py for the convention) and tokens_per_s if 'tokens'."""
    benchmark.extra_info.update(info)
    if "tokens" in info:
        benchmark.extra_info["tokens_per_s"] = info["tokens"] / median_s


def inference_step(layer, x, device):
    """One layer call under torch.inference_mode() (the grid's and the off-grid suite's 'fwd')."""
    sync = synchronizer(device)

    def step():
        with torch.inference_mode():
            layer(x)
        sync()
    return step


def forward_backward_step(layer, x, device):
    """One layer call with loss outputs.sum() and its backward, gradients reset first (the layer
    and grid suites' timed work)."""
    sync = synchronizer(device)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = layer(x)
        out.sum().backward()
        sync()
    return step


def onnxruntime_step(layer, x, threads):
    """The layer exported to ONNX and loaded in onnxruntime with `threads` intra-op threads; returns
    one inference call. ImportError without onnxruntime; the exporter's own errors pass through."""
    import io
    import warnings

    import onnxruntime as ort
    f = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation and batch-size notes
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x,), f, input_names=["x"], output_names=["y", "h"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # With more than one thread, onnxruntime's pool threads spin-wait after each call (its default),
    # holding a core while the next implementation is timed in the same process (bench/recheck.py,
    # gru fwd H64 B8 T8, 2 threads: rnnfast 0.50x onnxruntime with spinning, 1.11x without; the
    # grid times them one after the other, as exposed). Off, each timing owns the machine; but
    # onnxruntime then wakes its threads per call. 1-thread sessions have no pool threads.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(f.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: sess.run(None, feed)


def grid_step(impl, cell, mode, H, B, T, threads, device):
    """One point of the size grid (bench/test_grid.py; bench/recheck.py re-measures the same): a
    layer with I = H from seed 0, time-major input (T, B, H), zero initial state; returns the timed
    unit of work. 'fwd': one call under torch.inference_mode(); 'fwdbwd': forward + backward of
    outputs.sum(); impl 'onnxruntime': the torch.nn layer exported, forward only (CPU)."""
    torch.manual_seed(0)
    layer = make_layer("torch" if impl == "onnxruntime" else impl, cell, H, H, device)
    x = torch.randn(T, B, H, device=device)
    if impl == "onnxruntime":
        return onnxruntime_step(layer.eval(), x, threads)
    if mode == "fwd":
        return inference_step(layer, x, device)
    return forward_backward_step(layer, x.requires_grad_(True), device)


def packed_lengths(profile, T, B):
    """Sequence lengths (B,) of a PackedSequence suite point, seed 0, the longest T: 'equal' (all T,
    a bucketed batch), 'uniform' (uniform in [1, T]) or 'ragged' (one of T, the rest uniform in
    [1, max(1, T // 10)]: one long sequence among short ones)."""
    g = torch.Generator().manual_seed(0)
    if profile == "equal":
        return torch.full((B,), T, dtype=torch.int64)
    top = T if profile == "uniform" else max(1, T // 10)
    lengths = torch.randint(1, top + 1, (B,), generator=g)
    lengths[0] = T
    return lengths


def packed_layer_step(layer, x, lengths, mode, device):
    """The timed call of `layer` on pack_padded_sequence(x, lengths, enforce_sorted=False), the
    packing included as a user's loop does it: 'fwd' under torch.inference_mode(), 'fwdbwd' forward
    + backward of the packed output's data summed (x then requires grad; grads reset first)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    sync = synchronizer(device)

    def fwd():
        with torch.inference_mode():
            layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
        sync()

    def fwdbwd():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
        out.data.sum().backward()
        sync()

    return fwd if mode == "fwd" else fwdbwd


def packed_step(impl, cell, mode, profile, H, B, T, device):
    """One point of the PackedSequence suite (bench/test_packed_grid.py): a layer with I = H from seed
    0 on a time-major x (T, B, H) with packed_lengths(profile, T, B), timed by packed_layer_step."""
    torch.manual_seed(0)
    layer = make_layer(impl, cell, H, H, device)
    x = torch.randn(T, B, H, device=device, requires_grad=mode == "fwdbwd")
    return packed_layer_step(layer, x, packed_lengths(profile, T, B), mode, device)


CELL_CLASSES = {"rnn_tanh": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}
CELL_STEPS = 100


def cell_loop_step(impl, cell, H, B, device):
    """One point of the cells suite (bench/test_cells.py; bench/recheck.py re-measures the same): the
    cell (I = H, seed 0) stepped CELL_STEPS times in a Python loop as a decoder does, then backward
    of the summed outputs; returns the timed unit of work."""
    import rnnfast

    torch.manual_seed(0)
    module = getattr(torch.nn if impl == "torch" else rnnfast, CELL_CLASSES[cell])(H, H).to(device)
    xs = torch.randn(CELL_STEPS, B, H, device=device)
    sync = synchronizer(device)

    def step():
        module.zero_grad(set_to_none=True)
        state = None
        total = 0
        for t in range(CELL_STEPS):
            state = module(xs[t], state)
            h = state[0] if isinstance(state, tuple) else state
            total = total + h.sum()
        total.backward()
        sync()

    return step
