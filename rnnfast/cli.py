"""`rnnfast` command line: train | generate | eval | stats | sine  (also `python -m rnnfast`).

The benchmarks are not a command of the package: they live with bench/ in the source repository
(`python bench/run.py` or `make bench`).

Bad input (a missing file, an unknown cell, a corrupt checkpoint, ...) ends with a one-line
`rnnfast: error: ...` on stderr and exit status 2, never a traceback.
"""
import argparse
import math
import os
import stat
import sys
import time

from ._cells import NAMES as CELL_NAMES  # the cell registry's names

DEFAULT_BACKEND = "rnnfast"  # the recurrent implementation `rnnfast train` uses unless --backend says otherwise

# `rnnfast train` defaults: the whole Time Machine (170,580 characters), a 1-layer GRU with H=256,
# B=32, T=35, Adam lr=0.01, 8 epochs, one CPU thread: about 55 s of CPU time, 1-2 minutes of wall time
# on 2 shared cores (measured), ending at train perplexity ~3.85, held-out ~5.8, with "time traveller"
# continuing in mostly real words. (d2l's 500 epochs of SGD on 10,000 characters take far longer;
# H=512 reached a lower train but a worse held-out perplexity in twice the time.)
TRAIN_DEFAULTS = {
    "corpus": "timemachine", "token": "char", "max_tokens": -1,
    "cell": "gru", "hidden": 256, "layers": 1, "dropout": 0.0, "embedding": None, "backend": DEFAULT_BACKEND,
    "epochs": 8, "batch_size": 32, "num_steps": 35, "lr": 0.01, "optimizer": "adam", "clip": 1.0,
    "random_iter": False, "seed": 0, "device": "auto",
    "valid": "auto", "valid_tokens": 20000, "threads": 1,
    "weight_decay": 0.0, "patience": 0, "anneal": 0.0,
}
PREFIXES = ("time traveller", "traveller")
CHECKPOINT_HELP = ("checkpoint.pt (the last epoch), best.pt (the epoch of lowest held-out perplexity), "
                   "or a run directory (its checkpoint.pt)")


class CLIError(Exception):
    """Bad input detected by the CLI itself (reported like any other bad-input error)."""


def _device(name, flag="--device"):
    """'auto' -> cuda when available, else cpu; otherwise a CPU or an existing CUDA device."""
    import torch
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CLIError(f"invalid {flag} {name!r}: {str(e).strip().splitlines()[0]}") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"{flag} {name}: rnnfast runs on 'cpu' or 'cuda' devices, not {dev.type!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"{flag} {name}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(dev)


def _set_threads(n):
    # Intra-op threads for CPU work. The d2l-size GEMMs (B=32, H=256) gain little from more than one
    # thread, and on shared cores extra OpenMP threads spin at every barrier: measured here on 2 busy
    # cores, 1 thread ran an epoch 5-20x faster than 2. 0 keeps torch's default.
    import torch
    if n > 0:
        torch.set_num_threads(n)


def _input_file(value, flag, bundled=(), missing="does not exist"):
    """A file the CLI reads: a bundled corpus name, or an existing regular file. Checked with stat,
    never opened here: a FIFO or a device is refused before anything could block reading it."""
    if value in bundled:
        return value
    try:
        st = os.stat(value)
    except FileNotFoundError:
        if bundled:  # worded as rnnfast.data.corpus_path words it, so every path says the same
            raise CLIError(f"corpus file {value!r} does not exist; bundled corpora are "
                           + ", ".join(repr(n) for n in bundled)) from None
        raise CLIError(f"{flag} {value!r} {missing}") from None
    except OSError as e:
        raise CLIError(f"{flag} {value!r} cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CLIError(f"{flag} {value!r} is a directory, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise CLIError(f"{flag} {value!r} is not a regular file (a FIFO, device or socket)")
    if not os.access(value, os.R_OK):
        raise CLIError(f"{flag} {value!r} is not readable (permission denied)")
    return value


def _checkpoint_file(value, flag):
    """--checkpoint/--resume: a checkpoint file, or a run directory (its checkpoint.pt)."""
    if os.path.isdir(value):
        inner = os.path.join(value, "checkpoint.pt")
        if not os.path.lexists(inner):
            raise CLIError(f"{flag} {value!r} is a directory without a checkpoint.pt")
        value = inner
    return _input_file(value, flag, missing="not found: no such checkpoint")


def _output_dir(path, flag="--out"):
    """Create (or accept) the directory a command writes into, before any work starts."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CLIError(f"{flag} {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{flag} {path!r}: cannot create the directory: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path!r}: the directory is not writable")
    return path


def _output_file(path, flag):
    """A file the CLI will write: its directory must exist and be writable, the path not be a directory."""
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path!r} is a directory, not a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"{flag} {path!r}: {parent!r} is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path!r}: the directory {parent!r} is not writable")
    return path


def _sep(token):
    return " " if token == "word" else ""


# --------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------

def cmd_train(args):
    import torch
    from .checkpoint import read_checkpoint
    from .data import BUNDLED_CORPORA

    # Settings: built-in defaults < the checkpoint's own settings (when resuming) < explicit flags.
    # Everything is checked here, before any data is read or any directory is created.
    settings = dict(TRAIN_DEFAULTS)
    done = 0
    if args.resume:
        args.resume = _checkpoint_file(args.resume, "--resume")
        ckpt = read_checkpoint(args.resume)
        stored = ckpt["train_config"].get("cli_settings")
        if stored is None:
            raise CLIError(f"{args.resume} was not written by `rnnfast train`; resume it from Python "
                           "with rnnfast.train(..., resume=path)")
        _check_settings(stored, f"checkpoint {args.resume}")
        settings.update(stored)
        done = ckpt["epoch"]
        if args.lr is not None and args.lr != stored.get("lr", args.lr):
            # the optimizer state (its lr, annealed or not) is what a resumed run continues with
            raise CLIError(f"--lr {args.lr}: a resumed run continues with its optimizer's state "
                           f"(lr {stored.get('lr')} at the start, annealing included); "
                           "start a new run to change it")
    settings.update({k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS and v is not None})
    s = settings
    if args.resume and s["epochs"] <= done:
        raise CLIError(f"checkpoint {args.resume} already has {done} epochs: pass --epochs N with "
                       f"N > {done} to train further")
    if (s["patience"] or s["anneal"]) and (s["valid"] == "none" or (s["valid"] == "auto"
                                                                     and s["corpus"] != "timemachine")):
        raise CLIError("--patience and --anneal watch the held-out perplexity: give a held-out "
                       "corpus with --valid FILE")
    if args.resume and s["patience"]:
        from .train import plateau
        waited = plateau(ckpt["history"].get("valid_ppl", []))[2]
        if waited >= s["patience"]:
            raise CLIError(f"checkpoint {args.resume} stopped early: no held-out improvement in its "
                           f"last {waited} epochs; pass --patience N with N > {waited} (or 0) to go on")
    for key in ("corpus", "valid"):
        if key == "valid" and s[key] in ("auto", "none"):
            continue
        _input_file(s[key], f"--{key}", tuple(BUNDLED_CORPORA))
    from . import distributed
    if args.nproc is not None and not distributed.launched():
        if args.out:
            _output_dir(args.out)
        return _launch(args, s)
    if distributed.launched():  # a rank started by torchrun or by --nproc
        return _train_rank(args, s)
    device = _device(s["device"])
    out = _output_dir(_out_path(args))
    threads_before = torch.get_num_threads()
    _set_threads(s["threads"])
    try:
        return _train_with(args, s, device, out)
    finally:
        torch.set_num_threads(threads_before)  # main() may be called in-process (tests, notebooks)


def _out_path(args):
    return args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume
                        else os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))


def _launch(args, s):
    """`rnnfast train --nproc N`: run this same command as N ranks through torch.distributed.run."""
    from . import distributed
    if args.nproc < 1:
        raise CLIError(f"--nproc must be >= 1, got {args.nproc}")
    distributed.row_slice(s["batch_size"], 0, args.nproc)  # too few rows: refused before starting
    argv = list(args.argv)
    i = next(k for k, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
    del argv[i:i + (1 if "=" in argv[i] else 2)]
    if not args.out and not args.resume:  # one output folder for all ranks, named here
        argv += ["--out", os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))]
    code, error = distributed.launch(args.nproc, argv)
    if error:
        raise CLIError(error)
    return code


def _train_rank(args, s):
    """One rank of a data-parallel run: join the process group, train, leave. Rank 0 prints."""
    import contextlib
    import io
    import torch
    from . import distributed
    if s["device"] not in (None, "auto"):
        _device(s["device"])  # a clear error for a device this machine lacks
    device = distributed.init_from_env(s["device"])
    threads_before = torch.get_num_threads()
    _set_threads(s["threads"])
    finished = False
    try:
        quiet = contextlib.redirect_stdout(io.StringIO()) if distributed.world()[0] else contextlib.nullcontext()
        with quiet:
            result = _train_with(args, s, str(device), _output_dir(_out_path(args)))
        finished = True
        return result
    finally:
        torch.set_num_threads(threads_before)
        distributed.shutdown(barrier=finished)


def _say_if_tokenizing(corpus, token):
    """A big corpus is tokenized once into the cache (rnnfast.data.stream): say so before the wait."""
    from .data import corpus_path, stream
    path = corpus_path(corpus)
    size = path.stat().st_size
    if token != "byte" and size >= stream.STREAM_THRESHOLD and not stream.is_cached(path, token):
        print(f"tokenizing {str(path)!r} ({size / 2**20:,.0f} MiB, {token} level) into the cache "
              f"{stream.cache_dir()}; later runs map it at once", flush=True)


def _train_with(args, s, device, out):
    import torch
    from .data import SeqDataLoader, load_corpus
    from .models import RNNLM
    from .train import train

    _say_if_tokenizing(s["corpus"], s["token"])
    corpus, vocab = load_corpus(s["corpus"], s["token"], s["max_tokens"])
    loader = SeqDataLoader(corpus, vocab, s["batch_size"], s["num_steps"], s["random_iter"], seed=s["seed"])
    valid_name = s["valid"]
    if valid_name == "auto":
        valid_name = "war_of_the_worlds" if s["corpus"] == "timemachine" else "none"
    valid = None
    if valid_name != "none":
        valid, _ = load_corpus(valid_name, s["token"], s["valid_tokens"], vocab=vocab)
    _check_model_fits(s, len(vocab), device)
    torch.manual_seed(s["seed"])  # the initial weights
    try:
        net = RNNLM(len(vocab), num_hiddens=s["hidden"], cell=s["cell"], num_layers=s["layers"],
                    dropout=s["dropout"], embedding_dim=s["embedding"], backend=s["backend"])
    except (RuntimeError, MemoryError) as e:  # e.g. an allocation far beyond this machine's memory
        raise CLIError(f"cannot build the model (--hidden {s['hidden']}, --layers {s['layers']}, "
                       f"vocabulary {len(vocab)}): {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    print(f"training a {s['layers']}-layer {s['cell'].upper()} (H={s['hidden']}, backend {s['backend']}) "
          f"on {s['corpus']!r}: {len(corpus):,} {s['token']} tokens, vocabulary {len(vocab)}, "
          f"{s['epochs']} epochs of {len(loader)} minibatches (B={s['batch_size']}, T={s['num_steps']}), "
          f"{s['optimizer']} lr={s['lr']}, device {device}")
    t0 = time.perf_counter()
    try:
        history = train(net, loader, vocab, s["epochs"], s["lr"], device=device, optimizer=s["optimizer"],
                        clip=s["clip"], out_dir=out, log_every=args.log_every, predict_prefixes=PREFIXES,
                        resume=args.resume, progress=not args.quiet, valid_corpus=valid, seed=s["seed"],
                        use_random_iter=s["random_iter"], sep=_sep(s["token"]),
                        meta={"cli_settings": s, "token": s["token"], "corpus": str(s["corpus"])},
                        weight_decay=s["weight_decay"], patience=s["patience"], anneal=s["anneal"])
    except KeyboardInterrupt:
        ckpt = os.path.join(out, "checkpoint.pt")
        print(f"\ninterrupted; continue with: rnnfast train --resume {ckpt}"
              if os.path.exists(ckpt) else "\ninterrupted before the first checkpoint", file=sys.stderr)
        return 130
    wall = time.perf_counter() - t0
    print(f"done in {wall:.1f} s")
    print(f"train perplexity     {history['train_ppl'][-1]:.2f}")
    if valid is not None:
        print(f"held-out perplexity  {history['valid_ppl'][-1]:.2f}  ({valid_name}, first {len(valid):,} tokens)")
        print(f"best held-out        {history['best_valid_ppl']:.2f}  at epoch {history['best_epoch']} (best.pt)")
    if history["stopped_early"]:
        print(f"stopped early        after epoch {history['epoch'][-1]}: no held-out improvement "
              f"in {s['patience']} epochs")
    print(f"speed                {history['tokens_per_s'][-1]:,.0f} tokens/s")
    for prefix, text in history["samples"].items():
        print(f"sample: {text}")
    paths = history.get("paths")  # absent on ranks other than 0 of a data-parallel run: they write nothing
    if paths is None:
        return 0
    print("wrote " + ", ".join(p for p in paths.values() if os.path.exists(p)))
    return 0


BYTES_PER_PARAMETER = 16  # float32 weight + gradient + Adam's two moments


def _check_model_fits(s, vocab_size, device):
    """Refuse, before allocating anything, a model whose weights, gradients and optimizer state
    alone exceed the device's memory (a typo like --hidden 100000 would otherwise be an
    allocation error deep in torch, or swap the machine to a halt). The model is counted on the
    meta device: shapes only, no memory."""
    import torch
    from .models import RNNLM
    try:
        with torch.device("meta"):
            skeleton = RNNLM(vocab_size, num_hiddens=s["hidden"], cell=s["cell"], num_layers=s["layers"],
                             dropout=s["dropout"], embedding_dim=s["embedding"], backend=s["backend"])
    except RuntimeError as e:  # even the shapes overflow (e.g. "Storage size calculation overflowed")
        raise CLIError(f"the model (--hidden {s['hidden']}, --layers {s['layers']}, vocabulary "
                       f"{vocab_size}) is too large: {_one_line(e)}") from None
    params = sum(p.numel() for p in skeleton.parameters())
    need = params * BYTES_PER_PARAMETER
    if str(device).startswith("cuda"):
        have = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise CLIError(f"the model ({params:,} parameters: --hidden {s['hidden']}, --layers {s['layers']}, "
                       f"vocabulary {vocab_size}) needs about {need / 2**30:,.1f} GiB for weights, "
                       f"gradients and optimizer state; {device} has {have / 2**30:,.1f} GiB")


def cmd_generate(args):
    import torch
    from .train import load_checkpoint, predict
    checkpoint = _checkpoint_file(args.checkpoint, "--checkpoint")
    device = _device(args.device)
    net, vocab, config = load_checkpoint(checkpoint, device=device)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    sep = config["train"].get("sep", "")
    print(predict(args.prefix, args.num, net, vocab, device=device, temperature=args.temperature,
                  top_k=args.top_k, generator=generator, sep=sep))
    return 0


def cmd_eval(args):
    from .data import BUNDLED_CORPORA, load_corpus
    from .train import evaluate, load_checkpoint
    checkpoint = _checkpoint_file(args.checkpoint, "--checkpoint")
    _input_file(args.corpus, "--corpus", tuple(BUNDLED_CORPORA))
    device = _device(args.device)
    net, vocab, config = load_checkpoint(checkpoint, device=device)
    token = config["train"].get("token", "char")
    corpus, _ = load_corpus(args.corpus, token, args.max_tokens, vocab=vocab)
    batch_size = args.batch_size or config["train"].get("batch_size") or 32
    num_steps = args.num_steps or config["train"].get("num_steps") or 35
    batch_size = min(batch_size, max(1, (len(corpus) - 1) // 2))
    ppl = evaluate(net, corpus, batch_size, num_steps, device)
    unk = (corpus == vocab.unk).float().mean().item()
    print(f"held-out perplexity {ppl:.3f} on {args.corpus!r} ({len(corpus):,} {token} tokens, "
          f"{unk:.1%} unknown to the training vocabulary)")
    return 0


def cmd_stats(args):
    from .data import BUNDLED_CORPORA, corpus_stats, format_stats, ngram_freqs, read_text, tokenize, zipf_plot
    _input_file(args.corpus, "--corpus", tuple(BUNDLED_CORPORA))
    if args.plot:
        _output_file(args.plot, "--plot")
    stats = corpus_stats(args.corpus, args.token, args.top)
    print(format_stats(stats))
    if args.plot:
        flat = [t for line in tokenize(read_text(args.corpus), args.token) for t in line]
        try:
            path = zipf_plot([ngram_freqs(flat, n) for n in (1, 2, 3)], args.plot)
        except ImportError as e:
            raise CLIError(str(e)) from None
        print(f"wrote Zipf plot {path}")
    return 0


def cmd_sine(args):
    from .sine import run_sine
    _output_dir(args.out)
    r = run_sine(tau=args.tau, epochs=args.epochs, out_dir=args.out, seed=args.seed)
    print("train loss per epoch: " + ", ".join(f"{l:.4f}" for l in r["train_loss"]))
    print(f"test MSE: 1-step {r['onestep_mse']:.4f}, multistep (fed back) {r['multistep_mse']:.4f}")
    print("k-step MSE: " + ", ".join(f"k={k}: {v:.4f}" for k, v in r["kstep_mse"].items()))
    for p in r["plots"]:
        print(f"wrote {p}")
    return 0


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------

class _Number:
    """An argparse `type=` and a settings check in one: a number of `kind` (int or float), finite,
    within [lo, hi] (`lo_open`: > lo), or one of `special` (e.g. -1 = all). Used for the flags and
    for the settings a checkpoint carries into `train --resume`, so both obey the same rule."""

    def __init__(self, kind, lo=None, hi=None, lo_open=False, special=(), hint=""):
        self.kind, self.lo, self.hi, self.lo_open, self.special = kind, lo, hi, lo_open, tuple(special)
        rule = [f"{'an integer' if kind is int else 'a finite number'}"]
        if lo is not None:
            rule.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            rule.append(f"<= {hi}" if lo is None else f"and <= {hi}")
        self.rule = " ".join(rule) + "".join(f" or {s}" for s in self.special) + hint
        self.__name__ = self.rule  # argparse names the type in its "invalid ... value" message

    def ok(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind is int and not isinstance(v, int):
            return False
        if v in self.special:
            return True
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or v <= self.hi

    def __call__(self, text):
        try:
            v = self.kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {self.rule}, got {text!r}") from None
        if not self.ok(v):
            raise argparse.ArgumentTypeError(f"must be {self.rule}, got {text!r}")
        return v


SEED_MAX = 2**64 - 1  # torch.manual_seed and torch.Generator.manual_seed take [0, 2**64)
MAX_THREADS = 1024
SINE_MAX_TAU = 399  # run_sine's series (T=1000, the first 600 for training) needs tau < T - 600
POSITIVE = _Number(int, lo=1)
SEED = _Number(int, lo=0, hi=SEED_MAX)
TOKENS = _Number(int, lo=1, special=(-1,), hint=" (-1 = all)")

# Every numeric `rnnfast train` setting and its rule (flags and resumed checkpoint settings alike).
TRAIN_NUMBERS = {
    "hidden": POSITIVE, "layers": POSITIVE, "embedding": POSITIVE, "epochs": POSITIVE,
    "batch_size": POSITIVE, "num_steps": POSITIVE,
    "dropout": _Number(float, lo=0, hi=1),
    "lr": _Number(float, lo=0, lo_open=True),
    "clip": _Number(float, lo=0, hint=" (0 = off)"),
    "max_tokens": TOKENS, "valid_tokens": TOKENS,
    "seed": SEED,
    "threads": _Number(int, lo=0, hi=MAX_THREADS, hint=" (0 = torch's default)"),
    "weight_decay": _Number(float, lo=0),
    "patience": _Number(int, lo=0, hint=" (0 = never stop early)"),
    "anneal": _Number(float, lo=1, lo_open=True, special=(0,), hint=" (0 = off)"),
}
TRAIN_CHOICES = {"token": ("char", "word", "byte"), "optimizer": ("sgd", "adam")}
TRAIN_STRINGS = ("corpus", "cell", "backend", "device", "valid")


def _check_settings(settings, origin):
    """Refuse stored `rnnfast train` settings that the flags could not have produced."""
    if not isinstance(settings, dict):
        raise CLIError(f"{origin}: cli_settings must be a dict")
    for key, v in settings.items():
        if key not in TRAIN_DEFAULTS:
            raise CLIError(f"{origin}: unknown setting {key!r}")
        if key in TRAIN_NUMBERS:
            if not (TRAIN_NUMBERS[key].ok(v) or (v is None and key == "embedding")):
                raise CLIError(f"{origin}: setting {key!r} must be {TRAIN_NUMBERS[key].rule}, got {v!r}")
        elif key in TRAIN_CHOICES:
            if v not in TRAIN_CHOICES[key]:
                raise CLIError(f"{origin}: setting {key!r} must be one of {TRAIN_CHOICES[key]}, got {v!r}")
        elif key == "random_iter":
            if not isinstance(v, bool):
                raise CLIError(f"{origin}: setting 'random_iter' must be a bool, got {v!r}")
        elif not isinstance(v, str):
            raise CLIError(f"{origin}: setting {key!r} must be a str, got {v!r}")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one error line: `rnnfast: error: <command>: <message>`, exit 2."""

    def error(self, message):
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"rnnfast: error: {where}{message} (see {self.prog} --help)\n")


def build_parser():
    d = TRAIN_DEFAULTS
    parser = _Parser(prog="rnnfast", description="RNN language models the textbook way, fast.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a character/word language model",
                       description="Train an RNN language model; writes checkpoint.pt (last epoch), best.pt "
                                   "(lowest held-out perplexity; with a held-out corpus), metrics.jsonl "
                                   "and perplexity.png to --out. Flags left out take the defaults "
                                   "shown (or, with --resume, the checkpoint's settings).")
    t.add_argument("--corpus", help=f"bundled name (timemachine, war_of_the_worlds) or a text file [{d['corpus']}]")
    t.add_argument("--token", choices=("char", "word", "byte"),
                   help=f"byte: ids are the file's bytes, vocabulary 256 [{d['token']}]")
    t.add_argument("--cell", help=f"{', '.join(CELL_NAMES[:-1])} or {CELL_NAMES[-1]} [{d['cell']}]")
    t.add_argument("--hidden", type=POSITIVE, help=f"hidden units [{d['hidden']}]")
    t.add_argument("--layers", type=POSITIVE, help=f"[{d['layers']}]")
    t.add_argument("--dropout", type=TRAIN_NUMBERS["dropout"], help=f"between layers [{d['dropout']}]")
    t.add_argument("--embedding", type=POSITIVE, help="embedding size [one-hot inputs]")
    t.add_argument("--backend", help=f"torch, scratch or rnnfast [{d['backend']}]")
    t.add_argument("--epochs", type=POSITIVE, help=f"total epochs (with --resume: the new total) [{d['epochs']}]")
    t.add_argument("--batch-size", dest="batch_size", type=POSITIVE, help=f"[{d['batch_size']}]")
    t.add_argument("--num-steps", dest="num_steps", type=POSITIVE, help=f"[{d['num_steps']}]")
    t.add_argument("--lr", type=TRAIN_NUMBERS["lr"], help=f"[{d['lr']}]")
    t.add_argument("--optimizer", choices=("sgd", "adam"), help=f"[{d['optimizer']}]")
    t.add_argument("--clip", type=TRAIN_NUMBERS["clip"], help=f"max gradient norm, 0 = off [{d['clip']}]")
    t.add_argument("--weight-decay", dest="weight_decay", type=TRAIN_NUMBERS["weight_decay"],
                   help="L2 regularization (the optimizer's weight_decay) [0]")
    t.add_argument("--patience", type=TRAIN_NUMBERS["patience"],
                   help="stop after N epochs without a lower held-out perplexity, 0 = never [0]")
    t.add_argument("--anneal", type=TRAIN_NUMBERS["anneal"],
                   help="divide lr by F after an epoch without a lower held-out perplexity "
                        "(e.g. 4), 0 = off [0]")
    t.add_argument("--max-tokens", dest="max_tokens", type=TOKENS, help="keep the first N tokens, -1 = all [-1]")
    t.add_argument("--random-iter", dest="random_iter", action="store_const", const=True,
                   help="random sampling instead of sequential partitioning")
    t.add_argument("--seed", type=SEED, help=f"[{d['seed']}]")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... [auto]")
    t.add_argument("--valid", help="held-out corpus, or 'none' [auto: war_of_the_worlds for timemachine]")
    t.add_argument("--valid-tokens", dest="valid_tokens", type=TOKENS,
                   help=f"held-out tokens used (-1 = all) [{d['valid_tokens']}]")
    t.add_argument("--threads", type=TRAIN_NUMBERS["threads"], help="CPU intra-op threads, 0 = torch's default "
                   f"[{d['threads']}: small RNN GEMMs gain little from more, and idle threads spin on shared cores]")
    t.add_argument("--out", help="output directory [runs/<timestamp>; with --resume: the checkpoint's]")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run")
    t.add_argument("--log-every", dest="log_every", type=_Number(int, lo=0, hint=" (0 = never)"), default=1, help="print a sample every N epochs [1]")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--nproc", type=POSITIVE, help="data-parallel processes on this machine (torch.distributed; "
                   "the global --batch-size is split across them) [1, or torchrun's]")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="continue a prefix with a trained model")
    g.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    g.add_argument("--prefix", default="time traveller")
    g.add_argument("--num", type=_Number(int, lo=0), default=100, help="tokens to generate [100]")
    g.add_argument("--temperature", type=_Number(float, lo=0), default=0.0, help="0 = greedy argmax [0]")
    g.add_argument("--top-k", dest="top_k", type=POSITIVE, default=None, help="sample only among the k most likely")
    g.add_argument("--seed", type=SEED, default=None)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="held-out perplexity through the training vocabulary")
    e.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    e.add_argument("--corpus", default="war_of_the_worlds")
    e.add_argument("--max-tokens", dest="max_tokens", type=TOKENS, default=-1)
    e.add_argument("--batch-size", dest="batch_size", type=POSITIVE, default=None)
    e.add_argument("--num-steps", dest="num_steps", type=POSITIVE, default=None)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("stats", help="vocabulary size, top n-grams, Zipf plot")
    s.add_argument("--corpus", default="timemachine")
    s.add_argument("--token", choices=("char", "word"), default="word")
    s.add_argument("--top", type=POSITIVE, default=10)
    s.add_argument("--plot", metavar="PATH", help="write a Zipf (log-log frequency/rank) PNG")
    s.set_defaults(func=cmd_stats)

    n = sub.add_parser("sine", help="the textbook's sequence-model experiment on a noisy sine")
    n.add_argument("--tau", type=_Number(int, lo=1, hi=SINE_MAX_TAU), default=4)
    n.add_argument("--epochs", type=POSITIVE, default=5)
    n.add_argument("--seed", type=SEED, default=0)
    n.add_argument("--out", default=os.path.join("runs", "sine"))
    n.set_defaults(func=cmd_sine)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, NotImplementedError, ImportError) as e:
        # bad input, or a backend that is not built
        _exit_rank(e, _one_line(e))
        parser.exit(2, f"rnnfast: error: {_one_line(e)}\n")
    except KeyboardInterrupt:  # `train` handles its own (it says how to resume)
        parser.exit(130, "rnnfast: interrupted\n")
    except OSError as e:  # a file that vanished, a full disk, a permission changed mid-run, ...
        what = f"{e.strerror}: {e.filename!r}" if e.strerror and e.filename else _one_line(e)
        _exit_rank(e, what)
        parser.exit(2, f"rnnfast: error: {what}\n")
    except Exception as e:  # in a rank of a data-parallel run: also a collective broken off
        from . import distributed
        if not distributed.launched():
            raise
        _exit_rank(e, f"{type(e).__name__}: {_one_line(e)}")


def _one_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _exit_rank(e, msg):
    """In a rank of `rnnfast train --nproc N`: hand the error to the launcher (which prints one
    line for the run) and exit 2; under plain torchrun the rank prints its own line. Elsewhere
    (not a rank): returns, and the caller reports the error."""
    from . import distributed
    if distributed.launched():
        if distributed.report_worker_error(msg, distributed.is_secondary_error(e)):
            sys.exit(2)
        sys.stderr.write(f"rnnfast: error: rank {os.environ.get('RANK')}: {msg}\n")
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
