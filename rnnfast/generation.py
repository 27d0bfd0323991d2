"""Generation: continue a text prefix with a trained language model (the textbook's predict_ch8)."""
import math

import torch

__all__ = ["predict"]

#: Private, for tests: False forces the Python loop even where rnnfast::decode could run the steps.
_USE_DECODE = True


def _decode(net, state, last, num_preds, temperature, top_k, generator):
    """The generated tokens from rnnfast::decode (csrc/core/decode.h: the loop below, in C++, the same
    ops and draws), or None where the model cannot describe itself to the op (RNNLM._decoder) or the
    state is not on the model's device and dtype (the Python loop then runs, and refuses, as before)."""
    describe = getattr(net, "_decoder", None)
    spec = describe() if _USE_DECODE and callable(describe) else None
    if spec is None:
        return None
    states = list(state) if isinstance(state, tuple) else [state]
    w = spec["head_weight"]
    if any(s.device != w.device or s.dtype != w.dtype for s in states):
        return None
    tokens = torch.ops.rnnfast.decode(spec["cell"], spec["options"], spec["params"], spec["has_biases"], states,
                                      spec["embedding"], w, spec["head_bias"], int(last), int(num_preds),
                                      float(temperature), None if top_k is None else int(top_k), generator)
    return tokens.tolist()


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
            # the whole loop below in one C++ call where the model allows it, else token by token
            outputs = _decode(net, state, last, num_preds, temperature, top_k, generator)
            if outputs is not None:
                num_preds = 0
            else:
                outputs = []
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
