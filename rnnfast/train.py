"""Training, evaluation and generation for character/word language models.

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
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_KEYS as _CHECKPOINT_KEYS, load_checkpoint,
                         read_checkpoint, restore_checkpoint, save_checkpoint)
from .models import detach_state

__all__ = [
    "train_epoch", "train", "evaluate", "perplexity", "predict",
    "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT",
]

_read_checkpoint = read_checkpoint  # older names, from before checkpoints had a module of their own


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
        # inference_mode, not no_grad: nothing here is ever differentiated, and under no_grad every
        # layer call still enters the autograd dispatch (for rnnfast's ops a Python redispatch, ~20 µs
        # a call, a fifth of a T=1 step at H=256)
        with torch.inference_mode():
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
                    if not torch.isfinite(logits).all():
                        raise ValueError("the model's logits are not finite (NaN or Inf): cannot "
                                         "sample; greedy decoding (temperature=0) still works")
                    # in float64 and shifted so the largest is 0: a tiny temperature gives
                    # exp(-inf) = 0 for the others, never 0/0 = NaN
                    logits = (logits.double() - logits.max()) / temperature
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


def _make_optimizer(name, params, lr, weight_decay=0.0):
    # weight_decay: the L2 penalty (wd/2)·||w||² of the textbook's "Weight decay" section, added to
    # each gradient as wd·w by the optimizer (for Adam, the coupled form: before the moments).
    name = str(name).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: choose 'sgd' or 'adam'")


def plateau(valid_ppl):
    """(best held-out perplexity, its epoch, epochs since then) from the per-epoch list.

    An epoch improves when its perplexity is strictly lower than every earlier one (NaN never
    does). Derived from the history alone, so a resumed run continues the count exactly."""
    best, best_epoch = math.inf, 0
    for epoch, ppl in enumerate(valid_ppl, 1):
        if ppl < best:
            best, best_epoch = ppl, epoch
    return best, best_epoch, len(valid_ppl) - best_epoch


def _held_out_step(valid_ppl, opt, anneal, patience):
    """After an epoch's held-out perplexity (the last of `valid_ppl`): (improved, stop).

    Without improvement, `anneal` divides the lr of every parameter group (the next epoch runs at
    the lower rate); `patience` epochs in a row without improvement stop the run."""
    _, best_epoch, waited = plateau(valid_ppl)
    improved = best_epoch == len(valid_ppl)
    if not improved and anneal:
        for group in opt.param_groups:
            group["lr"] = group["lr"] / anneal
    return improved, bool(patience) and waited >= patience


# --------------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------------

def train(net, loader, vocab, num_epochs, lr, device="cpu", optimizer="sgd", clip=1.0, out_dir=None,
          log_every=10, predict_prefixes=("time traveller",), checkpoint_every=1, resume=None,
          progress=True, valid_corpus=None, seed=0, use_random_iter=None, num_preds=50, sep="",
          meta=None, weight_decay=0.0, patience=None, anneal=None):
    """Train a language model (the textbook's train_ch8) and return its history.

    net: an RNNLM (anything with forward(X, state) -> (logits (T*B, V), state), begin_state, config).
    loader: yields (X, Y) minibatches of shape (B, T); a SeqDataLoader's sampling mode and generator
    state are picked up and checkpointed. optimizer: 'sgd' or 'adam'. clip: max gradient norm.
    out_dir: where metrics.jsonl, perplexity.png, checkpoint.pt (the last epoch) and best.pt (the
    epoch of lowest held-out perplexity so far; only with valid_corpus) go (None: nothing is written).
    Every `log_every` epochs (and at the end) the model continues each of `predict_prefixes`.
    resume: a checkpoint path; training continues after its epoch up to `num_epochs`, and on CPU with
    the same seed and data the final weights equal those of an uninterrupted run bit for bit.
    valid_corpus: held-out token ids; its perplexity is computed each epoch.
    seed: seeds torch's global RNG at the start of a fresh run (None: leave it alone).
    meta: extra JSON-able settings stored in the checkpoint's train config (e.g. token, corpus).
    weight_decay: L2 regularization passed to the optimizer (0: none).
    patience: stop after this many epochs in a row without a lower held-out perplexity (None or 0:
    never); needs valid_corpus.
    anneal: divide the learning rate by this factor (> 1) after each epoch without a lower held-out
    perplexity, as the PyTorch word_language_model example does with 4 (None or 0: never); needs
    valid_corpus. The lr of each epoch is in history['lr'] and metrics.jsonl. On resume the
    optimizer's state wins over `lr`: an annealed lr continues where it was.

    Under torch.distributed (a process group of N > 1 ranks, e.g. under torchrun) every rank calls
    train() with the same global `loader`, model and seed: each keeps its rows of every minibatch,
    the model runs in DistributedDataParallel, and the updates are those of one process with the
    global batch (see rnnfast.distributed). Rank 0 alone prints and writes; the checkpoint
    resumes at any world size.

    Returns a dict of per-epoch lists ('epoch', 'train_ppl', 'tokens_per_s', 'lr', 'time', and
    'valid_ppl' when a held-out corpus is given) plus 'samples' (prefix -> text at the end),
    'stopped_early' (True when patience ended the run) and, with a held-out corpus, 'best_valid_ppl'
    and 'best_epoch'.
    """
    if int(num_epochs) != num_epochs or num_epochs < 0:
        raise ValueError(f"num_epochs must be a non-negative integer, got {num_epochs!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if clip is not None and not (clip >= 0 and math.isfinite(clip)):
        raise ValueError(f"clip must be None or a finite number >= 0, got {clip!r}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    patience = patience or None
    anneal = anneal or None
    if patience is not None and (int(patience) != patience or patience < 0):
        raise ValueError(f"patience must be None or an integer >= 0, got {patience!r}")
    if anneal is not None and not (anneal > 1 and math.isfinite(anneal)):
        raise ValueError(f"anneal must be None, 0 or a finite factor > 1, got {anneal!r}")
    patience = int(patience) if patience else None
    anneal = float(anneal) if anneal else None
    weight_decay = float(weight_decay)
    if valid_corpus is not None and len(valid_corpus) < 2:
        raise ValueError(f"the held-out corpus has {len(valid_corpus)} token(s): its perplexity needs "
                         "at least 2 (an input and a target)")
    if (patience or anneal) and valid_corpus is None:
        raise ValueError("patience and anneal watch the held-out perplexity: pass valid_corpus")
    if use_random_iter is None:
        use_random_iter = bool(getattr(loader, "use_random_iter", False))
    device = torch.device(device)
    net.to(device)
    optimizer_name = str(optimizer).lower()
    opt = _make_optimizer(optimizer_name, net.parameters(), lr, weight_decay)
    loss = nn.CrossEntropyLoss()
    train_config = {"num_epochs": int(num_epochs), "lr": lr, "optimizer": optimizer_name, "clip": clip,
                    "weight_decay": weight_decay, "patience": patience, "anneal": anneal,
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
        ckpt = read_checkpoint(resume)
        if num_epochs < ckpt["epoch"]:
            raise ValueError(f"num_epochs={num_epochs} is fewer than the {ckpt['epoch']} epochs "
                             f"checkpoint {resume} already has")
        restore_checkpoint(ckpt, resume, net, vocab, opt, loader, optimizer_name)
        for group in opt.param_groups:  # the lr continues from the checkpoint; the L2 is this run's
            group["weight_decay"] = weight_decay
        start_epoch = ckpt["epoch"]
        for k, v in ckpt["history"].items():
            if k in history:
                history[k] = list(v)
        if valid_corpus is not None and len(history["valid_ppl"]) < start_epoch:
            # the checkpoint was trained without a held-out corpus: its epochs have no perplexity
            history["valid_ppl"] = [math.nan] * start_epoch
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
        if valid_corpus is not None:
            paths["best.pt"] = os.path.join(out_dir, "best.pt")
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
    stopped_early = False
    try:
        for epoch in bar:
            if patience and plateau(history["valid_ppl"])[2] >= patience:
                stopped_early = True  # a resumed run that had already run out of patience
                break
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
            improved, stopped_early = (_held_out_step(history["valid_ppl"], opt, anneal, patience)
                                       if valid_corpus is not None else (False, False))
            last = epoch + 1 == num_epochs or stopped_early
            if progress and log_every and ((epoch + 1) % log_every == 0 or last):
                line = f"epoch {epoch + 1}/{num_epochs}  perplexity {ppl:.2f}"
                if valid_corpus is not None:
                    line += f"  held-out {record['valid_ppl']:.2f}"
                say(line + f"  {speed:,.0f} tokens/s")
                for p, text in samples().items():
                    say(f"  {text!r}")
                if stopped_early:
                    say(f"stopping: no held-out improvement in {patience} epochs")
            if paths and (last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0)):
                save_checkpoint(paths["checkpoint.pt"], net, vocab, opt, epoch + 1, loader,
                                train_config, history)
                plot_perplexity(history, paths["perplexity.png"])
            if paths and improved:
                save_checkpoint(paths["best.pt"], net, vocab, opt, epoch + 1, loader, train_config, history)
            if stopped_early:
                break
    finally:
        bar.close()
    history["samples"] = samples() if predict_prefixes and rank == 0 else {}
    history["stopped_early"] = stopped_early
    if valid_corpus is not None:
        history["best_valid_ppl"], history["best_epoch"], _ = plateau(history["valid_ppl"])
    if paths:
        history["paths"] = paths
    return history
