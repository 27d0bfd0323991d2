"""The optimizer and what changes it over a run: the choice of optimizer (with weight decay), and the
held-out schedule (learning-rate annealing and early stopping on a plateau of held-out perplexity)."""
import math

import torch

__all__ = ["make_optimizer", "plateau", "held_out_step"]


def make_optimizer(name, params, lr, weight_decay=0.0):
    """torch.optim.SGD or Adam by name ('sgd', 'adam'); ValueError for any other."""
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


def held_out_step(valid_ppl, opt, anneal, patience):
    """After an epoch's held-out perplexity (the last of `valid_ppl`): (improved, stop).

    Without improvement, `anneal` divides the lr of every parameter group (the next epoch runs at
    the lower rate); `patience` epochs in a row without improvement stop the run."""
    _, best_epoch, waited = plateau(valid_ppl)
    improved = best_epoch == len(valid_ppl)
    if not improved and anneal:
        for group in opt.param_groups:
            group["lr"] = group["lr"] / anneal
    return improved, bool(patience) and waited >= patience
