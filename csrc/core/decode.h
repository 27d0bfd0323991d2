// rnnfast::decode (schema: csrc/ops.cpp): the generation loop of rnnfast.generation.predict in C++.
//
// Per generated token predict's Python loop runs RNNLM.forward (checks, one-hot or embedding, one op
// call per layer, the head) and then argmax or sampling and int(...): at B = 1, T = 1 that is tens of
// microseconds of Python and per-op overhead around two small GEMVs. This op runs the same steps with
// the same ATen calls and, for the layers, the cells' own registered forward ops (called through the
// dispatcher, so the same kernel as the modules), so the tokens are exactly those of the Python loop
// (the sampling draws too, given the same torch.Generator). The token stays a device tensor from step
// to step: no host sync per token. ATen calls only, so one function serves every backend.
//
// Inference only: the ops' autograd kernels (csrc/autograd.cpp) are skipped, as under inference_mode.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "cells.h"
#include "layer_op.h"

namespace rnnfast {
namespace core {

namespace decode_detail {

using Tensor = at::Tensor;
using Opt = c10::optional<at::Tensor>;

// predict's own words (rnnfast/generation.py), so both paths raise the same ValueError.
constexpr const char* kNotFinite =
    "the model's logits are not finite (NaN or Inf): cannot sample; greedy decoding (temperature=0) still works";

// One layer's T = 1 step: x (1, 1, I) -> output (1, 1, H); *h (and *c for a cell state) replaced by
// the new state. The cell's forward op (layer_op.h) is looked up once per call (not per token) and
// called with workspace=false: generation never differentiates, so no workspace is kept.
using LayerStep = std::function<Tensor(const Tensor& x, Tensor* h, Tensor* c, const Tensor& w_ih, const Tensor& w_hh,
                                       const Opt& b_ih, const Opt& b_hh)>;

template <class Cell>
LayerStep layer_step(const c10::List<bool>& options) {
  const LayerOp op = layer_op<Cell>(has_option<Cell>() && options.get(0));
  return [op](const Tensor& x, Tensor* h, Tensor* c, const Tensor& w_ih, const Tensor& w_hh, const Opt& b_ih,
              const Opt& b_hh) {
    LayerResult r = op(x, *h, c ? *c : Tensor(), w_ih, w_hh, b_ih, b_hh, /*reverse=*/false, /*workspace=*/false,
                     /*lengths=*/c10::nullopt);
    *h = std::move(r.hy);
    if (c) *c = std::move(r.cy);
    return std::move(r.output);
  };
}

inline void check_like(const char* what, const Tensor& t, const Tensor& ref) {
  TORCH_CHECK(t.defined(), "rnnfast::decode: ", what, " is undefined");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type() && t.device() == ref.device(), "rnnfast::decode: ", what,
              " is ", t.scalar_type(), " on ", t.device(), " but head_weight is ", ref.scalar_type(), " on ",
              ref.device(), ": every tensor must share the head's dtype and device");
}

}  // namespace decode_detail

// cell: a cell name with ops of its own (cells.h); options: its option values (the gru op's
// reset_after), none for a cell without; params: per layer w_ih, w_hh (+ b_ih, b_hh when has_biases);
// state: [h] or [h, c], each (L, 1, H), the state after the prefix; embedding: (V, E) or None for
// one-hot input of width V; head: (V, H) and (V) or None; token: the last prefix token. Returns the
// num_preds generated tokens, int64 on the model's device.
inline at::Tensor decode(c10::string_view cell, const c10::List<bool>& options, at::TensorList params,
                         bool has_biases, at::TensorList state, const c10::optional<at::Tensor>& embedding,
                         const at::Tensor& head_weight, const c10::optional<at::Tensor>& head_bias, int64_t token,
                         int64_t num_preds, double temperature, c10::optional<int64_t> top_k,
                         c10::optional<at::Generator> generator) {
  using namespace decode_detail;
  // Below autograd: nothing here is differentiated, and the recurrent ops' autograd kernels
  // (csrc/autograd.cpp) would be a redispatch per step for nothing.
  at::AutoDispatchBelowADInplaceOrView below_autograd;

  LayerStep step;
  bool cell_state = false;
  size_t num_options = 0;
  std::string valid;
  for_each_cell([&](auto tag) {
    using Cell = typename decltype(tag)::type;
    if constexpr (has_own_op<Cell>()) {
      valid += (valid.empty() ? "" : ", ") + std::string(Cell::name);
      if (cell == Cell::name) {
        num_options = has_option<Cell>() ? 1 : 0;
        TORCH_CHECK(options.size() == num_options, "rnnfast::decode: cell '", Cell::name, "' takes ", num_options,
                    " option value(s), got ", options.size());
        step = layer_step<Cell>(options);
        cell_state = Cell::traits.has_cell_state();
      }
    }
  });
  TORCH_CHECK(step, "rnnfast::decode: unknown cell '", cell, "'; valid cells: ", valid);

  TORCH_CHECK(head_weight.defined() && head_weight.dim() == 2, "rnnfast::decode: head_weight must be 2-D (V, H)");
  const int64_t V = head_weight.size(0), H = head_weight.size(1);
  TORCH_CHECK(V > 0, "rnnfast::decode: the vocabulary (head_weight's rows) is empty");
  if (head_bias) {
    check_like("head_bias", *head_bias, head_weight);
    TORCH_CHECK(head_bias->dim() == 1 && head_bias->size(0) == V, "rnnfast::decode: head_bias must be (", V,
                "), got ", head_bias->sizes());
  }
  const size_t per_layer = has_biases ? 4 : 2;
  TORCH_CHECK(!params.empty() && params.size() % per_layer == 0, "rnnfast::decode: params must hold ", per_layer,
              " tensors per layer (w_ih, w_hh", has_biases ? ", b_ih, b_hh" : "", "), got ", params.size());
  const int64_t L = static_cast<int64_t>(params.size() / per_layer);
  for (const at::Tensor& p : params) check_like("a layer parameter", p, head_weight);
  TORCH_CHECK(state.size() == (cell_state ? 2u : 1u), "rnnfast::decode: cell '", cell, "' has ",
              cell_state ? "two state tensors (h, c)" : "one state tensor (h)", ", got ", state.size());
  for (const at::Tensor& s : state) {
    check_like("a state tensor", s, head_weight);
    TORCH_CHECK(s.dim() == 3 && s.size(0) == L && s.size(1) == 1 && s.size(2) == H, "rnnfast::decode: state ",
                "tensors must be (num_layers=", L, ", 1, H=", H, "), got ", s.sizes());
  }
  TORCH_CHECK(params[0].dim() == 2, "rnnfast::decode: w_ih of layer 0 must be 2-D");
  if (embedding) {
    check_like("embedding", *embedding, head_weight);
    TORCH_CHECK(embedding->dim() == 2 && embedding->size(0) == V, "rnnfast::decode: embedding must be (V=", V,
                ", E), got ", embedding->sizes());
  } else {
    TORCH_CHECK(params[0].size(1) == V, "rnnfast::decode: one-hot input needs layer 0's input size (",
                params[0].size(1), ") to equal the vocabulary size V=", V);
  }
  TORCH_CHECK(token >= 0 && token < V, "rnnfast::decode: token must be in [0, ", V, "), got ", token);
  TORCH_CHECK(num_preds >= 0, "rnnfast::decode: num_preds must be >= 0, got ", num_preds);
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0, "rnnfast::decode: temperature must be a finite ",
              "number >= 0, got ", temperature);
  TORCH_CHECK(!top_k || *top_k >= 1, "rnnfast::decode: top_k must be a positive integer or None, got ",
              top_k.value_or(0));

  const at::TensorOptions opts = head_weight.options();
  const at::Device device = head_weight.device();
  std::vector<at::Tensor> h(L), c(L);
  for (int64_t l = 0; l < L; ++l) {
    h[l] = state[0].select(0, l);
    if (cell_state) c[l] = state[1].select(0, l);
  }
  auto param = [&](int64_t l, size_t k) -> c10::optional<at::Tensor> {
    if (k >= per_layer) return c10::nullopt;  // no biases
    return params[l * per_layer + k];
  };
  const bool check_each_step = device.is_cpu();  // elsewhere a check per token would be a host sync
  at::Tensor all_finite = check_each_step ? at::Tensor() : at::ones({}, opts.dtype(at::kBool));
  at::Tensor tok = at::full({1}, token, opts.dtype(at::kLong));
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(num_preds));
  for (int64_t i = 0; i < num_preds; ++i) {
    // the input RNNLM.forward builds for this token: its embedding row (nn.Embedding is index_select)
    // or its one-hot row in the model's dtype
    at::Tensor x = embedding ? at::index_select(*embedding, 0, tok)
                             : at::zeros({1, V}, opts).index_fill_(1, tok, 1);
    x = x.view({1, 1, x.size(1)});  // (T = 1, B = 1, I)
    for (int64_t l = 0; l < L; ++l) {
      x = step(x, &h[l], cell_state ? &c[l] : nullptr, *param(l, 0), *param(l, 1), param(l, 2), param(l, 3));
    }
    // nn.Linear, then predict's logits.reshape(-1).float()
    const at::Tensor logits = at::linear(x.view({1, H}), head_weight, head_bias).reshape(-1).to(at::kFloat);
    if (temperature == 0) {
      tok = at::argmax(logits).reshape({1});
    } else {
      // predict's sampling, op for op (same draws from the same generator)
      if (check_each_step) {
        TORCH_CHECK_VALUE(at::isfinite(logits).all().item<bool>(), kNotFinite);
      } else {
        all_finite.logical_and_(at::isfinite(logits).all());
      }
      at::Tensor scaled = (logits.to(at::kDouble) - logits.max()) / temperature;
      if (top_k && *top_k < scaled.numel()) {
        const at::Tensor kth = std::get<0>(at::topk(scaled, *top_k)).select(0, *top_k - 1);
        scaled = scaled.masked_fill(scaled < kth, -std::numeric_limits<double>::infinity());
      }
      at::Tensor probs = at::softmax(scaled, 0);
      if (generator && generator->device() != probs.device()) probs = probs.to(generator->device());
      tok = at::multinomial(probs, 1, /*replacement=*/false, generator).to(device);
    }
    out.push_back(tok);
  }
  if (all_finite.defined()) TORCH_CHECK_VALUE(all_finite.item<bool>(), kNotFinite);  // one sync, at the end
  return out.empty() ? at::empty({0}, opts.dtype(at::kLong)) : at::cat(out);
}

}  // namespace core
}  // namespace rnnfast
