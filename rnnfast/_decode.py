"""rnnfast::decode's Python side (the op: csrc/core/decode.h, its schema: csrc/ops.cpp).

The op runs rnnfast.generation.predict's per-token loop in C++. Here: its fake kernel, so the op
can be traced like the others (rnnfast/_ops.py imports this module when it has loaded the ops).
"""
import torch


@torch.library.register_fake("rnnfast::decode")
def _decode_fake(cell, options, params, has_biases, state, embedding, head_weight, head_bias, token, num_preds,
                 temperature=0.0, top_k=None, generator=None):
    torch._check(num_preds >= 0, lambda: f"rnnfast::decode: num_preds must be >= 0, got {num_preds}")
    return head_weight.new_empty((num_preds,), dtype=torch.int64)
