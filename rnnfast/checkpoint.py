"""Checkpoints of a language-model run: write, read (validating the structure up front), rebuild.

A checkpoint is one `torch.save`d dict of plain data and tensors, read back with
``weights_only=True`` (no code from the file is ever run). Everything a resumed run needs is
checked here, before any of it is used, so a damaged or hand-edited file is refused with a
ValueError naming the field, never half-applied or reported as a traceback deep in torch.
"""
import math
import os
import stat

import torch

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "restore_checkpoint", "HISTORY_KEYS"]

CHECKPOINT_FORMAT = "rnnfast-lm-checkpoint-v1"
CHECKPOINT_KEYS = ("format", "model_state", "model_config", "vocab", "optimizer", "optimizer_state",
                   "epoch", "torch_rng_state", "loader_state", "train_config", "history")
#: Per-epoch lists a history may hold; each has one entry per epoch done.
HISTORY_KEYS = ("epoch", "train_ppl", "valid_ppl", "tokens_per_s", "lr", "time")
OPTIMIZERS = ("sgd", "adam")
_MODEL_KEYS = ("vocab_size", "num_hiddens", "cell", "num_layers", "dropout", "embedding_dim",
               "backend", "bidirectional", "reset_after")


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


# --------------------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------------------

def _resolve(path):
    """The checkpoint file for `path` (a directory means its checkpoint.pt); refuses anything that is
    not a regular file before opening it (a FIFO would block the read forever)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise ValueError(f"checkpoint {path} cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        inner = os.path.join(path, "checkpoint.pt")
        if not os.path.lexists(inner):
            raise FileNotFoundError(f"no checkpoint.pt in directory {path}")
        return _resolve(inner)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"checkpoint {path} is not a regular file")
    return path


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(cond, path, what):
    if not cond:
        raise ValueError(f"checkpoint {path} is malformed: {what}")


def _check_rng_state(state, path, what):
    _check(isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1,
           path, f"{what} must be a 1-D uint8 tensor")


def _validate(ckpt, path):
    """Check the types and consistency of every field a reader or a resumed run uses."""
    _check(isinstance(ckpt["model_config"], dict) and set(ckpt["model_config"]) <= set(_MODEL_KEYS),
           path, f"model_config must be a dict of RNNLM arguments ({', '.join(_MODEL_KEYS)})")
    vocab_size = ckpt["model_config"].get("vocab_size")
    _check(_is_int(vocab_size) and vocab_size > 0, path, "model_config['vocab_size'] must be a positive int")
    _check(isinstance(ckpt["model_state"], dict)
           and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model_state"].items()),
           path, "model_state must map parameter names to tensors")
    _check(isinstance(ckpt["vocab"], dict), path, "vocab must be a dict (Vocab.to_dict())")
    from .data import Vocab
    try:
        vocab = Vocab.from_dict(ckpt["vocab"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"checkpoint {path} is malformed: vocab: {e}") from None
    _check(len(vocab) == vocab_size, path,
           f"its vocabulary has {len(vocab)} tokens but the model was built for {vocab_size}")

    _check(ckpt["optimizer"] is None or ckpt["optimizer"] in OPTIMIZERS, path,
           f"optimizer must be one of {', '.join(OPTIMIZERS)} or None, got {ckpt['optimizer']!r}")
    _check(ckpt["optimizer_state"] is None or isinstance(ckpt["optimizer_state"], dict), path,
           "optimizer_state must be a dict or None")
    epoch = ckpt["epoch"]
    _check(_is_int(epoch) and epoch >= 0, path, f"epoch must be an int >= 0, got {epoch!r}")
    _check_rng_state(ckpt["torch_rng_state"], path, "torch_rng_state")
    _check(ckpt["torch_rng_state"].numel() == torch.get_rng_state().numel(), path,
           f"torch_rng_state has {ckpt['torch_rng_state'].numel()} bytes, "
           f"torch's CPU generator needs {torch.get_rng_state().numel()}")
    if "cuda_rng_state" in ckpt:
        _check(isinstance(ckpt["cuda_rng_state"], (list, tuple)), path, "cuda_rng_state must be a list")
        for s in ckpt["cuda_rng_state"]:
            _check_rng_state(s, path, "each cuda_rng_state entry")
    loader = ckpt["loader_state"]
    _check(loader is None or isinstance(loader, dict), path, "loader_state must be a dict or None")
    if isinstance(loader, dict) and "generator_state" in loader:
        _check_rng_state(loader["generator_state"], path, "loader_state['generator_state']")
        need = torch.Generator().get_state().numel()
        _check(loader["generator_state"].numel() == need, path,
               f"loader_state['generator_state'] has {loader['generator_state'].numel()} bytes, "
               f"a CPU torch.Generator needs {need}")

    config = ckpt["train_config"]
    _check(isinstance(config, dict) and all(isinstance(k, str) for k in config), path,
           "train_config must be a dict with str keys")
    for key, ok, what in (
            ("lr", lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
            ("clip", lambda v: v is None or (_is_number(v) and math.isfinite(v) and v >= 0),
             "None or a finite number >= 0"),
            ("weight_decay", lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a finite number >= 0"),
            ("patience", lambda v: v is None or (_is_int(v) and v >= 0), "None or an int >= 0"),
            ("anneal", lambda v: v is None or (_is_number(v) and math.isfinite(v) and (v == 0 or v > 1)),
             "None, 0 or a finite number > 1"),
            ("num_epochs", lambda v: _is_int(v) and v >= 0, "an int >= 0"),
            ("batch_size", lambda v: v is None or (_is_int(v) and v > 0), "None or a positive int"),
            ("num_steps", lambda v: v is None or (_is_int(v) and v > 0), "None or a positive int"),
            ("seed", lambda v: v is None or (_is_int(v) and 0 <= v < 2**64), "None or an int in [0, 2**64)"),
            ("use_random_iter", lambda v: isinstance(v, bool), "a bool"),
            ("sep", lambda v: isinstance(v, str), "a str"),
            ("token", lambda v: v in ("char", "word", "byte"), "'char', 'word' or 'byte'"),
            ("corpus", lambda v: isinstance(v, str), "a str"),
            ("cli_settings", lambda v: isinstance(v, dict), "a dict")):
        if key in config:
            _check(ok(config[key]), path, f"train_config[{key!r}] must be {what}, got {config[key]!r}")

    history = ckpt["history"]
    _check(isinstance(history, dict), path, "history must be a dict of per-epoch lists")
    for key, values in history.items():
        _check(isinstance(values, list) and all(_is_number(v) for v in values), path,
               f"history[{key!r}] must be a list of numbers")
        if key in HISTORY_KEYS:
            _check(len(values) == epoch, path,
                   f"history[{key!r}] has {len(values)} entries for {epoch} epochs")
    if "epoch" in history:
        _check(history["epoch"] == list(range(1, epoch + 1)), path,
               f"history['epoch'] must be 1..{epoch}")


def read_checkpoint(path):
    """Read and validate the checkpoint at `path` (a file, or a directory holding checkpoint.pt).

    Returns the checkpoint dict. Raises FileNotFoundError when it is absent and ValueError when it
    is not a regular file, not a readable torch file, not an rnnfast checkpoint, or malformed.
    """
    path = _resolve(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, foreign pickle, ...
        raise ValueError(f"{path} is not a readable rnnfast checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an rnnfast checkpoint (format tag {CHECKPOINT_FORMAT!r} missing)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    _validate(ckpt, path)
    return ckpt


def load_checkpoint(path, device="cpu"):
    """Rebuild the model saved at `path`. Returns (net, vocab, config), net in eval mode on `device`;
    config = {'model': RNNLM kwargs, 'train': training settings, 'epoch': epochs done, 'history': ...}."""
    from .data import Vocab
    from .models import RNNLM
    ckpt = read_checkpoint(path)
    try:
        with torch.device("meta"):  # shapes first, no memory: a config far larger than its
            skeleton = RNNLM(**ckpt["model_config"])  # weights is refused before allocating
        _check_shapes(skeleton, ckpt["model_state"], path)
        net = RNNLM(**ckpt["model_config"])
        net.load_state_dict(ckpt["model_state"])
        vocab = Vocab.from_dict(ckpt["vocab"])
    except (TypeError, RuntimeError, KeyError, ValueError) as e:
        if str(e).startswith(f"checkpoint {path}"):
            raise
        raise ValueError(f"checkpoint {path} does not describe a loadable RNNLM: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    net.to(device).eval()
    config = {"model": dict(ckpt["model_config"]), "train": dict(ckpt["train_config"]),
              "epoch": ckpt["epoch"], "history": ckpt["history"]}
    return net, vocab, config


def _check_shapes(net, state, path):
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        k = diff[0]
        raise ValueError(f"checkpoint {path}: its weights do not fit its model_config ({k}: "
                         f"{got.get(k, 'missing')} in the file, {expected.get(k, 'not in the model')} expected)")


def restore_checkpoint(ckpt, path, net, vocab, optimizer, loader, optimizer_name):
    """Load a (validated) checkpoint into the live objects of a run, refusing anything that does not
    match. The RNG states are set last, so a refused checkpoint leaves them untouched."""
    if dict(ckpt["model_config"]) != dict(getattr(net, "config", None) or {}):
        raise ValueError(f"checkpoint {path} was saved from a different model: "
                         f"{ckpt['model_config']} != {net.config}")
    saved_tokens = ckpt["vocab"].get("idx_to_token")
    if list(saved_tokens) != list(vocab.idx_to_token):
        raise ValueError(f"checkpoint {path} was saved with a different vocabulary "
                         f"({len(saved_tokens)} tokens) than the one given ({len(vocab)} tokens)")
    if ckpt["optimizer"] != optimizer_name:
        raise ValueError(f"checkpoint {path} used optimizer {ckpt['optimizer']!r}, this run {optimizer_name!r}")
    try:
        net.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"checkpoint {path} does not fit this model/optimizer: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    if ckpt["loader_state"] is not None and hasattr(loader, "load_state_dict"):
        try:
            loader.load_state_dict(ckpt["loader_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"checkpoint {path} has a loader state this loader cannot take: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    try:
        torch.set_rng_state(ckpt["torch_rng_state"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} has an invalid torch_rng_state: {e}") from e
    if "cuda_rng_state" in ckpt and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng_state"])
