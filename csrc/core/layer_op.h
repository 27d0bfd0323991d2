// One call of a cell's registered forward op (schemas: csrc/ops.cpp) from C++, through the
// dispatcher: the same kernels, autograd (csrc/autograd.cpp), autocast, profiler scopes and Python
// dispatch modes as a call from Python, without Python's per-argument parsing of the op call.
// rnnfast::decode (decode.h) steps its layers with it, and the modules' eager fast path
// (csrc/python.cpp) runs whole layer stacks with it.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Optional.h>

#include <functional>
#include <string>
#include <tuple>

#include "cells.h"

namespace rnnfast {
namespace core {

// What a forward op returns, less the workspace (its autograd node keeps that).
struct LayerResult {
  at::Tensor output, hy, cy;  // cy: cells with a cell state only
};

// x (T, B, I), h (B, H), c (B, H) or undefined -> the op's (output, hy[, cy]). `workspace`: keep the
// workspace for backward (false when nothing will be differentiated: the op's workspace=False).
// `lengths`: the op's per-sequence lengths (B,) int64 on the CPU (a PackedSequence's), or none.
using LayerOp = std::function<LayerResult(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                          const at::Tensor& w_ih, const at::Tensor& w_hh,
                                          const c10::optional<at::Tensor>& b_ih,
                                          const c10::optional<at::Tensor>& b_hh, bool reverse, bool workspace,
                                          const c10::optional<at::Tensor>& lengths)>;

// Cell's forward op, looked up and typed once (by the shape of its schema: csrc/ops.cpp's
// templates, the entry points of csrc/core/recurrent_ops.h have the same types); `option` is the
// value of the cell's op option (gru: reset_after), ignored by a cell without one.
template <class Cell>
LayerOp layer_op(bool option) {
  using Tensor = at::Tensor;
  using Opt = c10::optional<at::Tensor>;
  const std::string name = std::string("rnnfast::") + Cell::name + "_forward";
  const c10::OperatorHandle handle = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "");
  if constexpr (Cell::traits.has_cell_state()) {
    auto op = handle.typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Opt&, const Opt&, bool,
        const Opt&, bool)>();
    return [op](const Tensor& x, const Tensor& h, const Tensor& c, const Tensor& w_ih, const Tensor& w_hh,
                const Opt& b_ih, const Opt& b_hh, bool reverse, bool workspace, const Opt& lengths) {
      auto r = op.call(x, h, c, w_ih, w_hh, b_ih, b_hh, reverse, lengths, workspace);
      return LayerResult{std::move(std::get<0>(r)), std::move(std::get<1>(r)), std::move(std::get<2>(r))};
    };
  } else if constexpr (has_option<Cell>()) {
    auto op = handle.typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                              const Tensor&, const Opt&, const Opt&, bool, bool,
                                                              const Opt&, bool)>();
    return [op, option](const Tensor& x, const Tensor& h, const Tensor&, const Tensor& w_ih, const Tensor& w_hh,
                        const Opt& b_ih, const Opt& b_hh, bool reverse, bool workspace, const Opt& lengths) {
      auto r = op.call(x, h, w_ih, w_hh, b_ih, b_hh, reverse, option, lengths, workspace);
      return LayerResult{std::move(std::get<0>(r)), std::move(std::get<1>(r)), Tensor()};
    };
  } else {
    auto op = handle.typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                              const Tensor&, const Opt&, const Opt&, bool,
                                                              const Opt&, bool)>();
    return [op](const Tensor& x, const Tensor& h, const Tensor&, const Tensor& w_ih, const Tensor& w_hh,
                const Opt& b_ih, const Opt& b_hh, bool reverse, bool workspace, const Opt& lengths) {
      auto r = op.call(x, h, w_ih, w_hh, b_ih, b_hh, reverse, lengths, workspace);
      return LayerResult{std::move(std::get<0>(r)), std::move(std::get<1>(r)), Tensor()};
    };
  }
}

// LSTM with a projection (proj_size > 0): lstm_proj_forward's call, the LayerOp's arguments plus
// w_hr (P, H); h (B, P), c (B, H), output (T, B, P).
using ProjLayerOp = std::function<LayerResult(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                              const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_hr,
                                              const c10::optional<at::Tensor>& b_ih,
                                              const c10::optional<at::Tensor>& b_hh, bool reverse, bool workspace,
                                              const c10::optional<at::Tensor>& lengths)>;

inline ProjLayerOp lstm_proj_layer_op() {
  using Tensor = at::Tensor;
  using Opt = c10::optional<at::Tensor>;
  const c10::OperatorHandle handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("rnnfast::lstm_proj_forward", "");
  auto op = handle.typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Opt&,
      const Opt&, bool, const Opt&, bool)>();
  return [op](const Tensor& x, const Tensor& h, const Tensor& c, const Tensor& w_ih, const Tensor& w_hh,
              const Tensor& w_hr, const Opt& b_ih, const Opt& b_hh, bool reverse, bool workspace,
              const Opt& lengths) {
    auto r = op.call(x, h, c, w_ih, w_hh, w_hr, b_ih, b_hh, reverse, lengths, workspace);
    return LayerResult{std::move(std::get<0>(r)), std::move(std::get<1>(r)), std::move(std::get<2>(r))};
  };
}

}  // namespace core
}  // namespace rnnfast
