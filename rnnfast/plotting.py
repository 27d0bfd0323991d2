"""Plotting: the perplexity curve of a training run (PNG, through matplotlib when installed)."""
import warnings

__all__ = ["plot_perplexity"]

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
