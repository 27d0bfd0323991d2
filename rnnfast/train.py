"""Training, evaluation, checkpoints and generation for character/word language models.

The loop follows the textbook (d2l, "RNN from scratch"/"concise RNN") so it reads top to bottom:

    for each epoch:                                   train()
        for each minibatch (X, Y):                    train_epoch()
            fresh state (first batch, or random sampling)  |  detached state (sequential)
            logits = net(X, state); loss = CE(logits, Y.T.reshape(-1))
            backward; clip gradient norm; optimizer step
        perplexity = exp(mean loss over tokens)

Two things differ from the textbook's plain loop, both for speed and neither for semantics: the loss is
summed on the device and read once per epoch (no host synchronization inside the step), and the
gradient clipping is rnnfast's fused `clip_grad_norm_` (torch's contract, one C++ call for the whole
gradient list, no host synchronization).
"""
import json
import math
import os
import sys
import time
import warnings

import torch
from torch import nn
from .clip import clip_grad_norm_  # the one clipping entry point of the loop: fused, no host sync

from . import distributed
from .models import detach_state

__all__ = [
    "train_epoch", "train", "evaluate", "perplexity", "predict",
    "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "rnnfast-lm-checkpoint-v1"
_CHECKPOINT_KEYS = ("format", "model_state", "model_config", "vocab", "optimizer", "optimizer_state",
                    "epoch", "torch_rng_state", "loader_state", "train_config", "history")


# --------------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------------

def train_epoch(net, loader, loss, optimizer, device, use_random_iter, clip=1.0):
    """Train `net` for one pass over `loader` (the textbook's train_epoch_ch8).

    Returns (perplexity, tokens per second). `clip` is the max gradient norm (None or 0: no clipping).
    Under torch.distributed (`net` a DistributedDataParallel, `loader` this rank's rows) both are
    over all ranks: the sums are all-reduced once, at the end of the epoch.
    """
    net.train()
    model = getattr(net, "module", net)  # DistributedDataParallel keeps the RNNLM as .module
    # Under torch.distributed the loader holds this rank's rows of each global minibatch
    # (distributed.RowShard). DDP averages gradients over ranks, so a rank's mean loss is weighted by
    # world size * its rows / all rows, making the update that of the mean over the global batch
    # (a weight of exactly 1 when the rows split evenly).
    local_rows = getattr(loader, "local_rows", 1)
    global_rows = getattr(loader, "global_rows", 1)
    weight = local_rows * distributed.world()[1] / global_rows
    state = None
    loss_sum = torch.zeros((), device=device)  # sum over tokens of the loss, kept on the device
    num_tokens = 0  # a Python int: counting tokens needs no device synchronization
    start = time.perf_counter()
    for X, Y in loader:
        if state is None or use_random_iter:
            # First minibatch, or random sampling (neighbouring minibatches are unrelated in the text):
            # start from a fresh zero state.
            state = model.begin_state(batch_size=X.shape[0], device=device)
        else:
            # Sequential partitioning: minibatch i+1 continues the text of minibatch i, so carry the
            # state on, but detach it so backpropagation stops here (truncated BPTT).
            state = detach_state(state)
        X, Y = X.to(device, non_blocking=True), Y.to(device, non_blocking=True)
        y = Y.T.reshape(-1)  # the model emits logits time-major: row t*B + b is step t of sequence b
        y_hat, state = net(X, state)
        l = loss(y_hat, y).mean()
        optimizer.zero_grad(set_to_none=True)
        (l if weight == 1 else l * weight).backward()
        if clip:
            clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        loss_sum += l.detach() * y.numel()
        num_tokens += y.numel()
    if num_tokens == 0:
        raise ValueError("the loader yielded no minibatches: the corpus is too short for its "
                         "batch_size * num_steps")
    # Under torch.distributed: summed over ranks (one all-reduce per epoch).
    totals = torch.stack([loss_sum.double(), torch.tensor(num_tokens, dtype=torch.float64, device=device)])
    totals = distributed.all_reduce_sum(totals)
    mean_loss = (totals[0] / totals[1]).item()  # the epoch's one host synchronization
    num_tokens = num_tokens * global_rows // local_rows  # all ranks' tokens
    elapsed = time.perf_counter() - start
    return math.exp(mean_loss), num_tokens / max(elapsed, 1e-9)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------

def _split_prefix(prefix, sep):
    return list(prefix) if sep == "" else prefix.split(sep if sep.strip() else None)


def predict(prefix, num_preds, net, vocab, device="cpu", temperature=0.0, top_k=None, generator=None,
            sep=""):
    """Continue `prefix` by `num_preds` tokens (the textbook's predict_ch8) and return the text.

    The state starts at zero for a batch of one; the prefix is fed as warm-up (its true tokens are
    kept, the model's guesses for them are ignored); then each step feeds the last token and picks
    the next: argmax when temperature == 0 (greedy, deterministic), else a sample from
    softmax(logits / temperature), restricted to the `top_k` most likely tokens when top_k is given
    (draws use `generator`, a torch.Generator, when given). Tokens are joined with `sep` ('' for a
    character vocabulary, ' ' for words). Prefix tokens unknown to the vocabulary are fed as <unk>;
    the returned text starts with the prefix exactly as given.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("prefix must be a non-empty string")
    tokens = _split_prefix(prefix, sep)
    if not tokens:
        raise ValueError(f"prefix {prefix!r} contains no tokens")
    if int(num_preds) != num_preds or num_preds < 0:
        raise ValueError(f"num_preds must be a non-negative integer, got {num_preds!r}")
    if temperature is None or temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    ids = [vocab[t] for t in tokens]  # Vocab maps unknown tokens to <unk>
    was_training = net.training
    net.eval()
    outputs = []
    try:
        with torch.no_grad():
            state = net.begin_state(batch_size=1, device=device)
            if len(ids) > 1:  # warm-up: run the prefix through the model, keep only the state
                _, state = net(torch.tensor([ids[:-1]], device=device), state)
            last = ids[-1]
            for _ in range(int(num_preds)):
                logits, state = net(torch.tensor([[last]], device=device), state)
                logits = logits.reshape(-1).float()
                if temperature == 0:
                    last = int(logits.argmax())
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.numel():
                        kth = torch.topk(logits, int(top_k)).values[-1]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = torch.softmax(logits, dim=0)
                    gen_device = generator.device if generator is not None else probs.device
                    last = int(torch.multinomial(probs.to(gen_device), 1, generator=generator))
                outputs.append(last)
    finally:
        net.train(was_training)
    generated = vocab.to_tokens(outputs) if outputs else []
    if not generated:
        return prefix
    return prefix + sep + sep.join(generated) if sep else prefix + "".join(generated)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def save_checkpoint(path, net, vocab, optimizer, epoch, loader=None, train_config=None, history=None):
    """Write everything needed to rebuild the model and to resume training exactly."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model_state": net.state_dict(),
        "model_config": dict(getattr(net, "config", None) or {}),  # RNNLM(**config) rebuilds it
        "vocab": vocab.to_dict(),
        "optimizer": type(optimizer).__name__.lower() if optimizer is not None else None,
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "torch_rng_state": torch.get_rng_state(),
        "loader_state": loader.state_dict() if hasattr(loader, "state_dict") else None,
        "train_config": dict(train_config or {}),
        "history": history or {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        ckpt["cuda_rng_state"] = torch.cuda.get_rng_state_all()
    path = os.fspath(path)
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint


def _read_checkpoint(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "checkpoint.pt")):
            path = os.path.join(path, "checkpoint.pt")
        else:
            raise FileNotFoundError(f"no checkpoint.pt in directory {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, foreign pickle, ...
        raise ValueError(f"{path} is not a readable rnnfast checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an rnnfast checkpoint (format tag {CHECKPOINT_FORMAT!r} missing)")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return ckpt


def load_checkpoint(path, device="cpu"):
    """Rebuild the model saved at `path`. Returns (net, vocab, config), net in eval mode on `device`;
    config = {'model': RNNLM kwargs, 'train': training settings, 'epoch': epochs done, 'history': ...}."""
    from .data import Vocab
    from .models import RNNLM
    ckpt = _read_checkpoint(path)
    try:
        net = RNNLM(**ckpt["model_config"])
        net.load_state_dict(ckpt["model_state"])
        vocab = Vocab.from_dict(ckpt["vocab"])
    except (TypeError, RuntimeError, KeyError) as e:
        raise ValueError(f"checkpoint {path} does not describe a loadable RNNLM: {e}") from e
    net.to(device).eval()
    config = {"model": dict(ckpt["model_config"]), "train": dict(ckpt["train_config"]),
              "epoch": ckpt["epoch"], "history": ckpt["history"]}
    return net, vocab, config


def _restore(ckpt, path, net, vocab, optimizer, loader, optimizer_name):
    """Load a checkpoint into the live objects of a run, refusing anything that does not match."""
    if dict(ckpt["model_config"]) != dict(getattr(net, "config", None) or {}):
        raise ValueError(f"checkpoint {path} was saved from a different model: "
                         f"{ckpt['model_config']} != {net.config}")
    saved_tokens = ckpt["vocab"].get("idx_to_token") if isinstance(ckpt["vocab"], dict) else None
    if saved_tokens != list(vocab.idx_to_token):
        raise ValueError(f"checkpoint {path} was saved with a different vocabulary "
                         f"({len(saved_tokens or [])} tokens) than the one given ({len(vocab)} tokens)")
    if ckpt["optimizer"] != optimizer_name:
        raise ValueError(f"checkpoint {path} used optimizer {ckpt['optimizer']!r}, this run {optimizer_name!r}")
    try:
        net.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"checkpoint {path} does not fit this model/optimizer: {e}") from e
    torch.set_rng_state(ckpt["torch_rng_state"])
    if "cuda_rng_state" in ckpt and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng_state"])
    if ckpt["loader_state"] is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(ckpt["loader_state"])


# --------------------------------------------------------------------------------------------------
# Logging helpers: metrics.jsonl and the perplexity plot
# --------------------------------------------------------------------------------------------------

_warned_no_matplotlib = False


def plot_perplexity(history, path):
    """Write perplexity per epoch (train, and held-out when present) to a PNG. Returns False (after
    one warning per process) when matplotlib is not installed."""
    global _warned_no_matplotlib
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone
    except ImportError:
        if not _warned_no_matplotlib:
            warnings.warn("matplotlib is not installed: skipping the perplexity plot "
                          "(pip install 'rnnfast[plot]')", stacklevel=2)
            _warned_no_matplotlib = True
        return False
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(history["epoch"], history["train_ppl"], marker=".", label="train")
    if history.get("valid_ppl"):
        ax.plot(history["epoch"], history["valid_ppl"], marker=".", label="held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _make_optimizer(name, params, lr):
    name = str(name).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: choose 'sgd' or 'adam'")


# --------------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------------

def train(net, loader, vocab, num_epochs, lr, device="cpu", optimizer="sgd", clip=1.0, out_dir=None,
          log_every=10, predict_prefixes=("time traveller",), checkpoint_every=1, resume=None,
          progress=True, valid_corpus=None, seed=0, use_random_iter=None, num_preds=50, sep="",
          meta=None):
    """Train a language model (the textbook's train_ch8) and return its history.

    net: an RNNLM (anything with forward(X, state) -> (logits (T*B, V), state), begin_state, config).
    loader: yields (X, Y) minibatches of shape (B, T); a SeqDataLoader's sampling mode and generator
    state are picked up and checkpointed. optimizer: 'sgd' or 'adam'. clip: max gradient norm.
    out_dir: where metrics.jsonl, perplexity.png and checkpoint.pt go (None: nothing is written).
    Every `log_every` epochs (and at the end) the model continues each of `predict_prefixes`.
    resume: a checkpoint path; training continues after its epoch up to `num_epochs`, and on CPU with
    the same seed and data the final weights equal those of an uninterrupted run bit for bit.
    valid_corpus: held-out token ids; its perplexity is computed each epoch.
    seed: seeds torch's global RNG at the start of a fresh run (None: leave it alone).
    meta: extra JSON-able settings stored in the checkpoint's train config (e.g. token, corpus).

    Under torch.distributed (a process group of N > 1 ranks, e.g. under torchrun) every rank calls
    train() with the same global `loader`, model and seed: each keeps its rows of every minibatch,
    the model runs in DistributedDataParallel, and the updates are those of one process with the
    global batch (see rnnfast.distributed). Rank 0 alone prints and writes; the checkpoint
    resumes at any world size.

    Returns a dict of per-epoch lists ('epoch', 'train_ppl', 'tokens_per_s', 'lr', 'time', and
    'valid_ppl' when a held-out corpus is given) plus 'samples' (prefix -> text at the end).
    """
    if int(num_epochs) != num_epochs or num_epochs < 0:
        raise ValueError(f"num_epochs must be a non-negative integer, got {num_epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if clip is not None and clip < 0:
        raise ValueError(f"clip must be >= 0 or None, got {clip!r}")
    if use_random_iter is None:
        use_random_iter = bool(getattr(loader, "use_random_iter", False))
    device = torch.device(device)
    net.to(device)
    optimizer_name = str(optimizer).lower()
    opt = _make_optimizer(optimizer_name, net.parameters(), lr)
    loss = nn.CrossEntropyLoss()
    train_config = {"num_epochs": int(num_epochs), "lr": lr, "optimizer": optimizer_name, "clip": clip,
                    "seed": seed, "use_random_iter": use_random_iter, "sep": sep,
                    "batch_size": getattr(loader, "batch_size", None),
                    "num_steps": getattr(loader, "num_steps", None), **(meta or {})}
    history = {"epoch": [], "train_ppl": [], "tokens_per_s": [], "lr": [], "time": []}
    if valid_corpus is not None:
        history["valid_ppl"] = []
        eval_batch = min(getattr(loader, "batch_size", 32) or 32, max(1, (len(valid_corpus) - 1) // 2))
        eval_steps = getattr(loader, "num_steps", 35) or 35

    start_epoch = 0
    if resume is not None:
        ckpt = _read_checkpoint(resume)
        _restore(ckpt, resume, net, vocab, opt, loader, optimizer_name)
        start_epoch = ckpt["epoch"]
        for k, v in ckpt["history"].items():
            if k in history:
                history[k] = list(v)
    elif seed is not None:
        torch.manual_seed(seed)

    rank, world_size = distributed.world()
    model, batches = net, loader  # what the epochs run: this rank's rows under torch.distributed
    if world_size > 1:
        model = distributed.data_parallel(net, device)
        batches = distributed.RowShard(loader, rank, world_size)
    progress = progress and rank == 0

    paths = {}
    if out_dir is not None and rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        paths = {name: os.path.join(out_dir, name)
                 for name in ("metrics.jsonl", "perplexity.png", "checkpoint.pt")}
        # A fresh run starts a fresh log; a resumed run rewrites it up to the checkpoint's epoch
        # (an interrupted run may have logged epochs after its last checkpoint).
        with open(paths["metrics.jsonl"], "w") as f:
            for i in range(len(history["epoch"])):
                f.write(json.dumps({k: v[i] for k, v in history.items() if len(v) > i}) + "\n")

    def samples():
        return {p: predict(p, num_preds, net, vocab, device, sep=sep) for p in predict_prefixes}

    use_bar = bool(progress) and sys.stderr.isatty()
    from tqdm import tqdm
    bar = tqdm(range(start_epoch, int(num_epochs)), desc="train", unit="epoch", disable=not use_bar,
               initial=0, total=max(0, int(num_epochs) - start_epoch), dynamic_ncols=True)
    say = tqdm.write if use_bar else print
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            ppl, speed = train_epoch(model, batches, loss, opt, device, use_random_iter, clip)
            record = {"epoch": epoch + 1, "train_ppl": ppl}
            if valid_corpus is not None:
                record["valid_ppl"] = evaluate(net, valid_corpus, eval_batch, eval_steps, device)
            record.update(tokens_per_s=speed, lr=opt.param_groups[0]["lr"], time=time.perf_counter() - t0)
            for k, v in record.items():
                history[k].append(v)
            bar.set_postfix(ppl=f"{ppl:.2f}", tok_s=f"{speed:,.0f}")
            if paths:
                with open(paths["metrics.jsonl"], "a") as f:
                    f.write(json.dumps(record) + "\n")
            last = epoch + 1 == num_epochs
            if progress and log_every and ((epoch + 1) % log_every == 0 or last):
                line = f"epoch {epoch + 1}/{num_epochs}  perplexity {ppl:.2f}"
                if valid_corpus is not None:
                    line += f"  held-out {record['valid_ppl']:.2f}"
                say(line + f"  {speed:,.0f} tokens/s")
                for p, text in samples().items():
                    say(f"  {text!r}")
            if paths and (last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0)):
                save_checkpoint(paths["checkpoint.pt"], net, vocab, opt, epoch + 1, loader,
                                train_config, history)
                plot_perplexity(history, paths["perplexity.png"])
    finally:
        bar.close()
    history["samples"] = samples() if predict_prefixes and rank == 0 else {}
    if paths:
        history["paths"] = paths
    return history
