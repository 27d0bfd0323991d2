"""`rnnfast` command line: train | generate | eval | stats | sine | bench  (also `python -m rnnfast`).

Bad input (a missing file, an unknown cell, a corrupt checkpoint, ...) ends with a one-line
`rnnfast: error: ...` on stderr and exit status 2, never a traceback.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

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
}
PREFIXES = ("time traveller", "traveller")


class CLIError(Exception):
    """Bad input detected by the CLI itself (reported like any other bad-input error)."""


def _device(name):
    import torch
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"invalid --device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return str(dev)


def _set_threads(n):
    # Intra-op threads for CPU work. The d2l-size GEMMs (B=32, H=256) gain little from more than one
    # thread, and on shared cores extra OpenMP threads spin at every barrier: measured here on 2 busy
    # cores, 1 thread ran an epoch 5-20x faster than 2. 0 keeps torch's default.
    import torch
    if n is None or n < 0:
        raise CLIError(f"--threads must be >= 0, got {n}")
    if n > 0:
        torch.set_num_threads(n)


def _sep(token):
    return " " if token == "word" else ""


# --------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------

def cmd_train(args):
    import torch
    from .train import _read_checkpoint

    # Settings: built-in defaults < the checkpoint's own settings (when resuming) < explicit flags.
    settings = dict(TRAIN_DEFAULTS)
    if args.resume:
        stored = _read_checkpoint(args.resume)["train_config"].get("cli_settings")
        if stored is None:
            raise CLIError(f"{args.resume} was not written by `rnnfast train`; resume it from Python "
                           "with rnnfast.train(..., resume=path)")
        settings.update(stored)
    settings.update({k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS and v is not None})
    s = settings
    s["cell"] = {"rnn": "rnn_tanh", "relu": "rnn_relu"}.get(s["cell"], s["cell"])
    if s["token"] not in ("char", "word", "byte"):
        raise CLIError(f"--token must be 'char', 'word' or 'byte', got {s['token']!r}")
    from . import distributed
    if args.nproc is not None and not distributed.launched():
        return _launch(args, s)
    if distributed.launched():  # a rank started by torchrun or by --nproc
        return _train_rank(args, s)
    device = _device(s["device"])
    threads_before = torch.get_num_threads()
    _set_threads(s["threads"])
    try:
        return _train_with(args, s, device)
    finally:
        torch.set_num_threads(threads_before)  # main() may be called in-process (tests, notebooks)


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
    try:
        quiet = contextlib.redirect_stdout(io.StringIO()) if distributed.world()[0] else contextlib.nullcontext()
        with quiet:
            return _train_with(args, s, str(device))
    finally:
        torch.set_num_threads(threads_before)
        distributed.shutdown()


def _say_if_tokenizing(corpus, token):
    """A big corpus is tokenized once into the cache (rnnfast.data.stream): say so before the wait."""
    from .data import corpus_path, stream
    path = corpus_path(corpus)
    size = path.stat().st_size
    if token != "byte" and size >= stream.STREAM_THRESHOLD and not stream.is_cached(path, token):
        print(f"tokenizing {str(path)!r} ({size / 2**20:,.0f} MiB, {token} level) into the cache "
              f"{stream.cache_dir()}; later runs map it at once", flush=True)


def _train_with(args, s, device):
    import torch
    from .data import SeqDataLoader, load_corpus
    from .models import RNNLM
    from .train import train

    out = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume
                       else os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))

    _say_if_tokenizing(s["corpus"], s["token"])
    corpus, vocab = load_corpus(s["corpus"], s["token"], s["max_tokens"])
    loader = SeqDataLoader(corpus, vocab, s["batch_size"], s["num_steps"], s["random_iter"], seed=s["seed"])
    valid_name = s["valid"]
    if valid_name == "auto":
        valid_name = "war_of_the_worlds" if s["corpus"] == "timemachine" else "none"
    valid = None
    if valid_name != "none":
        valid, _ = load_corpus(valid_name, s["token"], s["valid_tokens"], vocab=vocab)
    torch.manual_seed(s["seed"])  # the initial weights
    net = RNNLM(len(vocab), num_hiddens=s["hidden"], cell=s["cell"], num_layers=s["layers"],
                dropout=s["dropout"], embedding_dim=s["embedding"], backend=s["backend"])
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
                        meta={"cli_settings": s, "token": s["token"], "corpus": str(s["corpus"])})
    except KeyboardInterrupt:
        ckpt = os.path.join(out, "checkpoint.pt")
        print(f"\ninterrupted; continue with: rnnfast train --resume {ckpt}"
              if os.path.exists(ckpt) else "\ninterrupted before the first checkpoint", file=sys.stderr)
        return 130
    wall = time.perf_counter() - t0
    if not history["train_ppl"]:
        print(f"nothing to do: the checkpoint already has {s['epochs']} epochs (raise --epochs)")
        return 0
    print(f"done in {wall:.1f} s")
    print(f"train perplexity     {history['train_ppl'][-1]:.2f}")
    if valid is not None:
        print(f"held-out perplexity  {history['valid_ppl'][-1]:.2f}  ({valid_name}, first {len(valid):,} tokens)")
    print(f"speed                {history['tokens_per_s'][-1]:,.0f} tokens/s")
    for prefix, text in history["samples"].items():
        print(f"sample: {text}")
    p = history.get("paths")  # absent on ranks other than 0 of a data-parallel run: they write nothing
    if p is None:
        return 0
    print(f"wrote {p['checkpoint.pt']}, {p['metrics.jsonl']}"
          + (f", {p['perplexity.png']}" if os.path.exists(p["perplexity.png"]) else ""))
    return 0


def cmd_generate(args):
    import torch
    from .train import load_checkpoint, predict
    device = _device(args.device)
    net, vocab, config = load_checkpoint(args.checkpoint, device=device)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    sep = config["train"].get("sep", "")
    print(predict(args.prefix, args.num, net, vocab, device=device, temperature=args.temperature,
                  top_k=args.top_k, generator=generator, sep=sep))
    return 0


def cmd_eval(args):
    from .data import load_corpus
    from .train import evaluate, load_checkpoint
    device = _device(args.device)
    net, vocab, config = load_checkpoint(args.checkpoint, device=device)
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
    from .data import corpus_stats, format_stats, ngram_freqs, read_text, tokenize, zipf_plot
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
    r = run_sine(tau=args.tau, epochs=args.epochs, out_dir=args.out, seed=args.seed)
    print("train loss per epoch: " + ", ".join(f"{l:.4f}" for l in r["train_loss"]))
    print(f"test MSE: 1-step {r['onestep_mse']:.4f}, multistep (fed back) {r['multistep_mse']:.4f}")
    print("k-step MSE: " + ", ".join(f"k={k}: {v:.4f}" for k, v in r["kstep_mse"].items()))
    for p in r["plots"]:
        print(f"wrote {p}")
    return 0


def _bench_script():
    """bench/run.py beside the package: present in a source checkout, absent in an installed wheel."""
    return Path(__file__).resolve().parent.parent / "bench" / "run.py"


def cmd_bench(args):
    run = _bench_script()
    if not run.is_file():
        raise CLIError("the benchmarks live in the source repository (bench/run.py), not in the "
                       "installed package: clone the repository and run `make bench` there")
    return subprocess.call([sys.executable, str(run), *args.bench_args], cwd=str(run.parent.parent))


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------

def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def build_parser():
    d = TRAIN_DEFAULTS
    parser = argparse.ArgumentParser(prog="rnnfast", description="RNN language models the textbook way, fast.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a character/word language model",
                       description="Train an RNN language model; writes checkpoint.pt, metrics.jsonl "
                                   "and perplexity.png to --out. Flags left out take the defaults "
                                   "shown (or, with --resume, the checkpoint's settings).")
    t.add_argument("--corpus", help=f"bundled name (timemachine, war_of_the_worlds) or a text file [{d['corpus']}]")
    t.add_argument("--token", choices=("char", "word", "byte"),
                   help=f"byte: ids are the file's bytes, vocabulary 256 [{d['token']}]")
    t.add_argument("--cell", help=f"rnn (= rnn_tanh), rnn_relu, gru or lstm [{d['cell']}]")
    t.add_argument("--hidden", type=_positive_int, help=f"hidden units [{d['hidden']}]")
    t.add_argument("--layers", type=_positive_int, help=f"[{d['layers']}]")
    t.add_argument("--dropout", type=float, help=f"between layers [{d['dropout']}]")
    t.add_argument("--embedding", type=_positive_int, help="embedding size [one-hot inputs]")
    t.add_argument("--backend", help=f"torch, scratch or rnnfast [{d['backend']}]")
    t.add_argument("--epochs", type=int, help=f"total epochs (with --resume: the new total) [{d['epochs']}]")
    t.add_argument("--batch-size", dest="batch_size", type=_positive_int, help=f"[{d['batch_size']}]")
    t.add_argument("--num-steps", dest="num_steps", type=_positive_int, help=f"[{d['num_steps']}]")
    t.add_argument("--lr", type=float, help=f"[{d['lr']}]")
    t.add_argument("--optimizer", choices=("sgd", "adam"), help=f"[{d['optimizer']}]")
    t.add_argument("--clip", type=float, help=f"max gradient norm, 0 = off [{d['clip']}]")
    t.add_argument("--max-tokens", dest="max_tokens", type=int, help="keep the first N tokens, -1 = all [-1]")
    t.add_argument("--random-iter", dest="random_iter", action="store_const", const=True,
                   help="random sampling instead of sequential partitioning")
    t.add_argument("--seed", type=int, help=f"[{d['seed']}]")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... [auto]")
    t.add_argument("--valid", help="held-out corpus, or 'none' [auto: war_of_the_worlds for timemachine]")
    t.add_argument("--valid-tokens", dest="valid_tokens", type=int,
                   help=f"held-out tokens used (-1 = all) [{d['valid_tokens']}]")
    t.add_argument("--threads", type=int, help="CPU intra-op threads, 0 = torch's default "
                   f"[{d['threads']}: small RNN GEMMs gain little from more, and idle threads spin on shared cores]")
    t.add_argument("--out", help="output directory [runs/<timestamp>; with --resume: the checkpoint's]")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run")
    t.add_argument("--log-every", dest="log_every", type=int, default=1, help="print a sample every N epochs [1]")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--nproc", type=int, help="data-parallel processes on this machine (torch.distributed; "
                   "the global --batch-size is split across them) [1, or torchrun's]")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="continue a prefix with a trained model")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--prefix", default="time traveller")
    g.add_argument("--num", type=int, default=100, help="tokens to generate [100]")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy argmax [0]")
    g.add_argument("--top-k", dest="top_k", type=_positive_int, default=None, help="sample only among the k most likely")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="held-out perplexity through the training vocabulary")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--corpus", default="war_of_the_worlds")
    e.add_argument("--max-tokens", dest="max_tokens", type=int, default=-1)
    e.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=None)
    e.add_argument("--num-steps", dest="num_steps", type=_positive_int, default=None)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("stats", help="vocabulary size, top n-grams, Zipf plot")
    s.add_argument("--corpus", default="timemachine")
    s.add_argument("--token", choices=("char", "word"), default="word")
    s.add_argument("--top", type=_positive_int, default=10)
    s.add_argument("--plot", metavar="PATH", help="write a Zipf (log-log frequency/rank) PNG")
    s.set_defaults(func=cmd_stats)

    n = sub.add_parser("sine", help="the textbook's sequence-model experiment on a noisy sine")
    n.add_argument("--tau", type=_positive_int, default=4)
    n.add_argument("--epochs", type=_positive_int, default=5)
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", default=os.path.join("runs", "sine"))
    n.set_defaults(func=cmd_sine)

    b = sub.add_parser("bench", help="run the benchmarks (source checkout only)")
    b.add_argument("bench_args", nargs="*", metavar="ARG", help="passed to bench/run.py (e.g. -k gru)")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["bench"] and argv[1:] not in (["-h"], ["--help"]):
        # everything after `bench` goes to bench/run.py untouched (pytest options such as -k)
        args = argparse.Namespace(command="bench", func=cmd_bench, bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (CLIError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError, TypeError,
            NotImplementedError, ImportError) as e:  # bad input or a backend that is not built
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _exit_rank(e, msg)
        parser.exit(2, f"rnnfast: error: {msg}\n")
    except Exception as e:  # in a rank of a data-parallel run: also a collective broken off
        from . import distributed
        if not distributed.launched():
            raise
        _exit_rank(e, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")


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
