"""The settings of a training run: checking train()'s arguments, and the record of them a checkpoint
keeps (its ``train_config``, which `rnnfast train --resume` and `generate`/`eval` read back)."""
import math

__all__ = ["check_train_args", "train_config"]


def check_train_args(num_epochs, lr, clip, weight_decay, patience, anneal, valid_corpus):
    """ValueError for a setting train() cannot run with; returns (patience, anneal, weight_decay)
    normalized: None for "off" (0 or None), an int, a float and a float."""
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
    if valid_corpus is not None and len(valid_corpus) < 2:
        raise ValueError(f"the held-out corpus has {len(valid_corpus)} token(s): its perplexity needs "
                         "at least 2 (an input and a target)")
    if (patience or anneal) and valid_corpus is None:
        raise ValueError("patience and anneal watch the held-out perplexity: pass valid_corpus")
    return (int(patience) if patience else None), (float(anneal) if anneal else None), float(weight_decay)


def train_config(num_epochs, lr, optimizer, clip, weight_decay, patience, anneal, seed, use_random_iter, sep,
                 loader, meta=None):
    """The JSON-able settings of a run, as stored in its checkpoints (``meta``: extra settings, e.g.
    the CLI's, merged in last)."""
    return {"num_epochs": int(num_epochs), "lr": lr, "optimizer": optimizer, "clip": clip,
            "weight_decay": weight_decay, "patience": patience, "anneal": anneal,
            "seed": seed, "use_random_iter": use_random_iter, "sep": sep,
            "batch_size": getattr(loader, "batch_size", None),
            "num_steps": getattr(loader, "num_steps", None), **(meta or {})}
