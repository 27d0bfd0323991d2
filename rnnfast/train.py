"""The training loop for character/word language models, and the public training API.

``rnnfast.train`` is what users import: the loop (``train``, ``train_epoch``) lives here, and the
other rooms of a run are re-exported from their own modules: evaluation (``evaluate``,
``perplexity``: rnnfast.evaluation), generation (``predict``: rnnfast.generation), checkpoints
(rnnfast.checkpoint), the perplexity plot (rnnfast.plotting), the optimizer and the held-out
schedule (rnnfast.schedule) and the run's settings (rnnfast.config).

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

import torch
from torch import nn
from .clip import clip_grad_norm_  # the one clipping entry point of the loop: fused, no host sync

from . import distributed
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_KEYS as _CHECKPOINT_KEYS, load_checkpoint,
                         read_checkpoint, restore_checkpoint, save_checkpoint)
from .config import check_train_args, train_config as _train_config
from .evaluation import evaluate, perplexity
from .generation import predict
from .models import detach_state
from .plotting import plot_perplexity
from .schedule import held_out_step as _held_out_step, make_optimizer as _make_optimizer, plateau

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
    patience, anneal, weight_decay = check_train_args(num_epochs, lr, clip, weight_decay, patience, anneal,
                                                      valid_corpus)
    if use_random_iter is None:
        use_random_iter = bool(getattr(loader, "use_random_iter", False))
    device = torch.device(device)
    net.to(device)
    optimizer_name = str(optimizer).lower()
    opt = _make_optimizer(optimizer_name, net.parameters(), lr, weight_decay)
    loss = nn.CrossEntropyLoss()
    train_config = _train_config(num_epochs, lr, optimizer_name, clip, weight_decay, patience, anneal, seed,
                                 use_random_iter, sep, loader, meta)
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
