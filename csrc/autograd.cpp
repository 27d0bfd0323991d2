// The recurrent forward ops' autograd, in C++ (docs/design.md §4): one Autograd-key kernel for every
// forward op of csrc/core/recurrent_ops.h's list, so a new cell gets it with its ops. It replaces a
// Python autograd.Function per call, which cost ~25-35 us a call: more than a small cell's step.
//
// The kernel is boxed and reads the op's layout from its schema (csrc/ops.cpp): the tensors before
// b_ih (input, states, weights), b_ih, b_hh, reverse, the cell's options, lengths, workspace; outputs output,
// hy[, cy], workspace. The graph node is a plain autograd Node (as torch's generated kernels write
// them), not a torch::autograd::Function, which refuses to run under torch.func transforms.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>  // Node, SavedVariable, collect_next_edges, GradMode
#include <torch/library.h>

#include <memory>
#include <mutex>  // Node::mutex_
#include <string>
#include <utility>
#include <vector>

#include "core/recurrent_ops.h"

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Also rnnfast/_ops.py's FORWARD_AD_MESSAGE (tests/test_forward_ad.py holds the two equal).
constexpr const char* kForwardAdMessage =
    "rnnfast: forward-mode AD (torch.func.jvp / jacfwd / hessian, torch.autograd.forward_ad) is not "
    "implemented for rnnfast's recurrent ops; use reverse mode (backward(), torch.func.grad / vjp / "
    "jacrev) or torch.nn's modules";

// An unused output's gradient arrives undefined. At or below this many elements backward fills
// zeros (a cell's step: ~4 us against ~10 for the view); above, it passes a broadcast zero, and the
// CPU backward reads a fully broadcast grad_output through one materialized row (no (T, B, H) fill).
constexpr int64_t kSmallZeros = int64_t{1} << 14;

at::Tensor dense(const at::Tensor& grad, const at::Tensor& like) {
  if (grad.defined()) return grad;
  if (like.numel() <= kSmallZeros) return at::zeros_like(like);
  return at::zeros({}, like.options()).expand(like.sizes());
}

// One forward op: where its arguments are, and its backward op.
struct OpInfo {
  size_t args = 0;     // arguments of the forward op; the last two are lengths and workspace
  size_t front = 0;    // tensors before b_ih: input, states, weights
  size_t states = 0;   // hx[, cx] (the outputs are output, the new states, workspace)
  size_t outputs = 0;
  c10::optional<c10::OperatorHandle> backward;
  std::string node_name;
};

class RecurrentBackward final : public torch::autograd::Node {
 public:
  explicit RecurrentBackward(const OpInfo& info) : info_(info) {}

  std::vector<SavedVariable> saved;  // the front tensors, then output and workspace
  std::vector<c10::IValue> flags;    // reverse and the cell's options
  c10::optional<at::Tensor> lengths;
  bool has_b_ih = false, has_b_hh = false;

  std::string name() const override { return info_.node_name; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& s : saved) s.reset_data();
  }

  // grads: one per differentiable output (output, hy[, cy]); undefined where the loss did not use it.
  variable_list apply(variable_list&& grads) override {
    const auto self = getptr();
    std::vector<at::Tensor> t;
    t.reserve(saved.size());
    {
      std::lock_guard<std::mutex> lock(mutex_);  // against a concurrent release_variables
      for (const auto& s : saved) t.push_back(s.unpack(self));
    }
    const at::Tensor& output = t[info_.front];
    // input_grad and hx_grad skip a GEMM each (dx, and the last walked step's dL/dh0); the weights'
    // GEMMs share their work.
    const bool input_grad = task_should_compute_output(0);
    const bool hx_grad = task_should_compute_output(1);

    // The backward op's arguments: grad_output, grad_hy[, grad_cy], the front tensors, output,
    // workspace, reverse, options, input_grad, lengths, hx_grad.
    torch::jit::Stack stack;
    stack.reserve(1 + info_.states + saved.size() + flags.size() + 3);
    stack.emplace_back(dense(grads[0], output));
    for (size_t s = 0; s < info_.states; ++s) stack.emplace_back(dense(grads[1 + s], t[1 + s]));  // like hx, cx
    for (auto& x : t) stack.emplace_back(std::move(x));
    for (const auto& f : flags) stack.push_back(f);
    stack.emplace_back(input_grad);
    stack.emplace_back(lengths);
    stack.emplace_back(hx_grad);
    if (torch::autograd::GradMode::is_enabled()) {
      // create_graph=True: through the backward op's own autograd kernel (NoDoubleBackward below),
      // which refuses double backward with a NotImplementedError instead of a graph without it.
      info_.backward->callBoxed(stack);
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      info_.backward->callBoxed(stack);
    }
    // (grad_input, the states' and weights' grads, grad_b_ih, grad_b_hh)
    variable_list result;
    result.reserve(stack.size());
    for (auto& v : stack) result.push_back(std::move(v).toTensor());
    if (!input_grad) result[0] = at::Tensor();  // zeros from the op, not a gradient
    if (!hx_grad) result[1] = at::Tensor();
    if (!has_b_ih) result[info_.front] = at::Tensor();
    if (!has_b_hh) result[info_.front + 1] = at::Tensor();
    return result;
  }

 private:
  const OpInfo& info_;  // owned by the registered kernel, which lives as long as the op
};

class RecurrentAutograd final : public c10::OperatorKernel {
 public:
  explicit RecurrentAutograd(std::string backward_name) : backward_name_(std::move(backward_name)) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    std::call_once(resolved_, [&] { resolve(op); });
    const auto args = torch::jit::last(*stack, info_.args);

    // The differentiable inputs: the front tensors, b_ih, b_hh (undefined when None).
    variable_list inputs;
    inputs.reserve(info_.front + 2);
    bool needs_grad = false;
    for (size_t i = 0; i < info_.front + 2; ++i) {
      inputs.push_back(args[i].isTensor() ? args[i].toTensor() : at::Tensor());
      const at::Tensor& x = inputs.back();
      // No jvp rule: a tangent would otherwise be dropped silently (outputs without one).
      TORCH_CHECK_NOT_IMPLEMENTED(!x.defined() || !x._fw_grad(/*level=*/0).defined(), kForwardAdMessage);
      needs_grad = needs_grad || (x.defined() && x.requires_grad());
    }
    const bool record = needs_grad && torch::autograd::GradMode::is_enabled();
    // workspace=False is an inference call (the op keeps no workspace): nothing to differentiate with.
    TORCH_CHECK(!record || args.back().toBool(), "rnnfast.", op.schema().name(),
                ": called with workspace=False (an inference call, no workspace kept) on inputs that require a "
                "gradient: call it with workspace=True to differentiate it");

    c10::intrusive_ptr<RecurrentBackward> node;
    if (record) {
      node = c10::make_intrusive<RecurrentBackward>(info_);
      node->set_next_edges(torch::autograd::collect_next_edges(inputs));
      node->has_b_ih = inputs[info_.front].defined();
      node->has_b_hh = inputs[info_.front + 1].defined();
      node->flags.assign(args.begin() + info_.front + 2, args.end() - 2);  // reverse, options
      node->lengths = args[info_.args - 2].toOptional<at::Tensor>();
      node->saved.reserve(info_.front + 2);
      for (size_t i = 0; i < info_.front; ++i) node->saved.emplace_back(inputs[i], /*is_output=*/false);
    }
    {
      at::AutoDispatchBelowADInplaceOrView below;
      op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
    }
    if (!record) return;
    const auto outs = torch::jit::last(*stack, info_.outputs);
    for (size_t i = 0; i + 1 < info_.outputs; ++i) {
      const at::Tensor& out = outs[i].toTensor();
      torch::autograd::impl::set_gradient_edge(out, {node, node->add_input_metadata(out)});
    }
    // The workspace gets no history: it is not differentiable (requires_grad stays false).
    node->saved.emplace_back(outs[0].toTensor(), /*is_output=*/true);
    node->saved.emplace_back(outs[info_.outputs - 1].toTensor(), /*is_output=*/false);
  }

 private:
  void resolve(const c10::OperatorHandle& op) {
    const auto& schema = op.schema();
    const auto& arguments = schema.arguments();
    info_.args = arguments.size();
    info_.outputs = schema.returns().size();
    info_.states = info_.outputs - 2;
    while (info_.front < arguments.size() && arguments[info_.front].name() != "b_ih") ++info_.front;
    TORCH_INTERNAL_ASSERT(info_.front + 3 < info_.args && arguments[info_.front + 1].name() == "b_hh" &&
                              arguments[info_.front + 2].name() == "reverse" &&
                              arguments[info_.args - 2].name() == "lengths" && arguments.back().name() == "workspace",
                          "rnnfast: ", schema.name(), " does not have a recurrent forward op's layout");
    info_.backward = c10::Dispatcher::singleton().findSchemaOrThrow(backward_name_.c_str(), "");
    info_.node_name = schema.name() + "Backward";
  }

  std::string backward_name_;
  std::once_flag resolved_;
  OpInfo info_;
};

// The backward ops' autograd: double backward is not implemented. Differentiating a backward op
// (a gradient computed with create_graph=True, then differentiated again) raises this
// NotImplementedError instead of silently returning a graph without the op. Its grads still flow
// out of a create_graph=True backward (they require grad, with this node as their history), so
// torch.func.grad, which differentiates with create_graph, works. (In C++ rather than through
// torch.library.register_autograd: that Python autograd.Function refuses to run under torch.func.)
class DoubleBackwardRefusal final : public torch::autograd::Node {
 public:
  explicit DoubleBackwardRefusal(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string name() const override { return "rnnfast::" + prefix_ + "_backwardBackward"; }
  variable_list apply(variable_list&&) override {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "double backward through rnnfast.", prefix_,
                                " is not supported (the gradient of its backward op rnnfast::", prefix_,
                                "_backward is not implemented); use torch.nn's layers for higher-order gradients");
    return {};
  }

 private:
  std::string prefix_;
};

class NoDoubleBackward final : public c10::OperatorKernel {
 public:
  explicit NoDoubleBackward(std::string prefix) : prefix_(std::move(prefix)) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    const size_t n_args = op.schema().arguments().size();
    variable_list inputs;
    bool needs_grad = false;
    for (const auto& a : torch::jit::last(*stack, n_args)) {
      if (!a.isTensor()) continue;
      inputs.push_back(a.toTensor());
      needs_grad = needs_grad || (inputs.back().defined() && inputs.back().requires_grad());
    }
    const bool record = needs_grad && torch::autograd::GradMode::is_enabled();
    {
      at::AutoDispatchBelowADInplaceOrView below;
      op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
    }
    if (!record) return;
    auto node = c10::make_intrusive<DoubleBackwardRefusal>(prefix_);
    node->set_next_edges(torch::autograd::collect_next_edges(inputs));
    for (const auto& out : torch::jit::last(*stack, op.schema().returns().size())) {
      const at::Tensor& t = out.toTensor();
      if (t.defined() && torch::autograd::isDifferentiableType(t.scalar_type())) {
        torch::autograd::impl::set_gradient_edge(t, {node, node->add_input_metadata(t)});
      }
    }
  }

 private:
  std::string prefix_;
};

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, Autograd, m) {
  rnnfast::core::for_each_recurrent_op_pair([&](const char* forward, const char* backward, auto, auto) {
    m.impl(forward,
           torch::CppFunction::makeFromBoxedFunctor(std::make_unique<RecurrentAutograd>(std::string("rnnfast::") + backward)));
    std::string prefix(backward);
    prefix.resize(prefix.size() - std::string("_backward").size());
    m.impl(backward, torch::CppFunction::makeFromBoxedFunctor(std::make_unique<NoDoubleBackward>(prefix)));
  });
}
