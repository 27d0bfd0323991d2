"""Every rnnfast op's schema and CPU kernel signature, against the list taken from main before the
C++ side generated them from one cell list (csrc/core/cells.h's RNNFAST_CELLS, csrc/ops.cpp's schema
templates, csrc/core/recurrent_ops.h's entry points). The schemas (op names, argument names, types,
defaults, return names) are the public contract: torch.ops.rnnfast callers, rnnfast/_ops.py's fakes
and autograd, saved torch.compile/export graphs all depend on them byte for byte. The kernel
signature is what torch inferred from the registered C++ function (its types in order), so a
generated entry point with a reordered or retyped argument fails here even where the schema holds.
"""
import re

import pytest
import torch

import rnnfast  # noqa: F401  (loads the ops)

# (schema, the CPU kernel's inferred signature) per op, taken from main at 7bb46fd.
EXPECTED = [
    ("rnnfast::clip_grad_norm_(Tensor(a!)[] grads, float max_norm, float norm_type) -> Tensor",
     "(Tensor[] _0, float _1, float _2) -> Tensor _0 [ boxed unboxed ]"),
    ("rnnfast::clip_grads_with_norm_(Tensor(a!)[] grads, float max_norm, Tensor total_norm) -> ()",
     "(Tensor[] _0, float _1, Tensor _2) -> () [ boxed unboxed ]"),
    # added after 7bb46fd: predict's generation loop (csrc/core/decode.h), one ATen-only kernel for all
    # backends, so its kernel is the CompositeExplicitAutograd one (KERNEL_KEY)
    ("rnnfast::decode(str cell, bool[] options, Tensor[] params, bool has_biases, Tensor[] state, Tensor? embedding, Tensor head_weight, Tensor? head_bias, int token, int num_preds, float temperature=0., int? top_k=None, Generator? generator=None) -> Tensor tokens",
     "(str _0, bool[] _1, Tensor[] _2, bool _3, Tensor[] _4, Tensor? _5, Tensor _6, Tensor? _7, int _8, int _9, float _10, int? _11, Generator? _12) -> Tensor _0 [ boxed unboxed ]"),
    ("rnnfast::grad_norm(Tensor[] tensors, float norm_type) -> Tensor",
     "(Tensor[] _0, float _1) -> Tensor _0 [ boxed unboxed ]"),
    ("rnnfast::gru_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, bool reset_after, bool input_grad=True, Tensor? lengths=None, bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor _6, Tensor _7, bool _8, bool _9, bool _10, Tensor? _11, bool _12) -> (Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5) [ boxed unboxed ]"),
    ("rnnfast::gru_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse, bool reset_after, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor workspace)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor? _4, Tensor? _5, bool _6, bool _7, Tensor? _8, bool _9) -> (Tensor _0, Tensor _1, Tensor _2) [ boxed unboxed ]"),
    ("rnnfast::lstm_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, bool input_grad=True, Tensor? lengths=None, bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor _6, Tensor _7, Tensor _8, Tensor _9, bool _10, bool _11, Tensor? _12, bool _13) -> (Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor _6) [ boxed unboxed ]"),
    ("rnnfast::lstm_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor? _5, Tensor? _6, bool _7, Tensor? _8, bool _9) -> (Tensor _0, Tensor _1, Tensor _2, Tensor _3) [ boxed unboxed ]"),
    ("rnnfast::lstm_proj_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor w_hr, Tensor output, Tensor workspace, bool reverse, bool input_grad=True, Tensor? lengths=None, bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_w_hr, Tensor grad_b_ih, Tensor grad_b_hh)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor _6, Tensor _7, Tensor _8, Tensor _9, Tensor _10, bool _11, bool _12, Tensor? _13, bool _14) -> (Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor _6, Tensor _7) [ boxed unboxed ]"),
    ("rnnfast::lstm_proj_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor w_hr, Tensor? b_ih, Tensor? b_hh, bool reverse, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor? _6, Tensor? _7, bool _8, Tensor? _9, bool _10) -> (Tensor _0, Tensor _1, Tensor _2, Tensor _3) [ boxed unboxed ]"),
    ("rnnfast::rnn_relu_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, bool input_grad=True, Tensor? lengths=None, bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor _6, Tensor _7, bool _8, bool _9, Tensor? _10, bool _11) -> (Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5) [ boxed unboxed ]"),
    ("rnnfast::rnn_relu_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor workspace)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor? _4, Tensor? _5, bool _6, Tensor? _7, bool _8) -> (Tensor _0, Tensor _1, Tensor _2) [ boxed unboxed ]"),
    ("rnnfast::rnn_tanh_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, bool input_grad=True, Tensor? lengths=None, bool hx_grad=True) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5, Tensor _6, Tensor _7, bool _8, bool _9, Tensor? _10, bool _11) -> (Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor _4, Tensor _5) [ boxed unboxed ]"),
    ("rnnfast::rnn_tanh_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool reverse, Tensor? lengths=None, bool workspace=True) -> (Tensor output, Tensor hy, Tensor workspace)",
     "(Tensor _0, Tensor _1, Tensor _2, Tensor _3, Tensor? _4, Tensor? _5, bool _6, Tensor? _7, bool _8) -> (Tensor _0, Tensor _1, Tensor _2) [ boxed unboxed ]"),
]
EXPECTED_SCHEMAS = {s.split("(", 1)[0]: s for s, _ in EXPECTED}
EXPECTED_CPU = {s.split("(", 1)[0]: k for s, k in EXPECTED}
#: the dispatch key an op's C++ kernel is registered under where it is not CPU (and CUDA)
KERNEL_KEY = {"rnnfast::decode": "CompositeExplicitAutograd"}
RECURRENT = sorted(n for n in EXPECTED_SCHEMAS if n.endswith(("_forward", "_backward")))
REGISTERED_AT = re.compile(r"^(\w+)(?:\[alias\])?: registered at .* :: (.*)$")


def registered_ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("rnnfast::"))


def kernels(name):
    """{dispatch key: the registered kernel's signature} from the dispatcher's dump of one op."""
    out = {}
    for line in torch._C._dispatch_dump(name).splitlines():
        m = REGISTERED_AT.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_the_op_set_is_unchanged():
    assert registered_ops() == sorted(EXPECTED_SCHEMAS)


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEMAS))
def test_schema_is_unchanged(name):
    (schema,) = torch._C._jit_get_schemas_for_operator(name)
    assert str(schema) == EXPECTED_SCHEMAS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEMAS))
def test_cpu_kernel_signature_is_unchanged(name):
    assert kernels(name).get(KERNEL_KEY.get(name, "CPU")) == EXPECTED_CPU[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEMAS))
def test_python_registrations_are_there(name):
    # rnnfast/_ops.py: a fake (Meta) for every op, autograd for every recurrent op
    keys = set(kernels(name))
    want = {"Meta", "Autograd"} if name in RECURRENT else {"Meta"}
    assert want <= keys, f"{name}: {sorted(keys)}"


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEMAS))
def test_cuda_kernel_matches_cpu_where_built(name):
    # a CUDA build registers every op for CUDA too, through the same entry points (same signature)
    table = kernels(name)
    if "CUDA" not in table:
        pytest.skip("rnnfast._C was built without CUDA")
    assert table["CUDA"] == EXPECTED_CPU[name]
