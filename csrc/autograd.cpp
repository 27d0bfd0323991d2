// The recurrent forward ops' autograd, in C++ (docs/design.md §4): one Autograd-key kernel for every
// forward op of csrc/core/recurrent_ops.h's list, so a new cell gets it with its ops. It replaces a
// Python autograd.Function per call, which cost ~25-35 us a call: more than a small cell's step.
//
// The kernel is boxed and reads the op's layout from its schema (csrc/ops.cpp): the tensors before
// b_ih (input, states, weights), b_ih, b_hh, reverse, the cell's options, lengths, workspace; outputs output,
// hy[, cy], workspace. The graph node is a plain autograd Node (as torch's generated kernels write
// them), not a torch::autograd::Function, which refuses to run under torch.func transforms.
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>  // Node, SavedVariable, collect_next_edges, GradMode
#include <torch/csrc/autograd/anomaly_mode.h>
#include <torch/csrc/autograd/graph_task.h>  // get_current_graph_task_id
#include <torch/library.h>

#include <array>

#include <memory>
#include <mutex>  // Node::mutex_
#include <string>
#include <utility>
#include <vector>

#include "core/grad_accumulation.h"
#include "core/recurrent_ops.h"

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Also rnnfast/_ops.py's FORWARD_AD_MESSAGE (tests/test_forward_ad.py holds the two equal).
constexpr const char* kForwardAdMessage =
    "rnnfast: forward-mode AD (torch.func.jvp / jacfwd / hessian, torch.autograd.forward_ad) is not "
    "implemented for rnnfast's recurrent ops; use reverse mode (backward(), torch.func.grad / vjp / "
    "jacrev) or torch.nn's modules";

// An unused output's gradient arrives undefined. Outside a plain CPU call (zero_grad_like there), at
// or below this many elements backward fills zeros (a cell's step: ~4 us against ~10 for the view);
// above, it passes a broadcast zero, which the op reads through one materialized row.
constexpr int64_t kSmallZeros = int64_t{1} << 14;

at::Tensor dense(const at::Tensor& grad, const at::Tensor& like) {
  if (grad.defined()) return grad;
  if (like.numel() <= kSmallZeros) return at::zeros_like(like);
  return at::zeros({}, like.options()).expand(like.sizes());
}

// A zero gradient for an unused output `like` (T, B, W) of a plain CPU call: a row of W zeros
// broadcast over (T, B), the same tensor for every call of this shape on this thread (read only:
// the CPU op reads grad_output one (t, b) row at a time, CpuFamily::grad_output_rows), so no fill and
// no view op per call. (It replaced a (T, B, W) zero fill up to 16K elements, ~4 us at a cell's
// step, and above that a broadcast 0-dim zero the op then had to materialize a row of.)
at::Tensor zero_grad_like(const at::Tensor& like) {
  thread_local at::Tensor cached;
  if (!cached.defined() || cached.sizes() != like.sizes() || cached.scalar_type() != like.scalar_type()) {
    cached = at::zeros({like.size(like.dim() - 1)}, like.options()).expand(like.sizes());
  }
  return cached;
}

// Whether the incoming gradient `grad` of a state is the engine's alone (nothing else holds the
// tensor or its storage: not a hook that kept it, a retained or captured grad, a view) and a dense
// buffer of the state's layout: then the op may use it as its running dL/dh (dL/dc), updated in
// place and returned as grad_hx, instead of a fresh copy of it (AccumulationTargets::grad_hy_owned).
bool owned_dense(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() && grad.use_count() == 1 && !grad.is_view() && grad.storage().use_count() == 1 &&
         grad.is_contiguous() && grad.sizes() == like.sizes() && grad.scalar_type() == like.scalar_type() &&
         grad.is_cpu() && grad.layout() == c10::kStrided && !grad.is_conj() && !grad.is_neg() &&
         grad.storage_offset() == 0;
}

// Every defined tensor a plain strided CPU tensor (no subclass, functorch wrapper, sparse or meta).
bool plain_cpu(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& x : tensors) {
    if (x.defined() && (!x.is_cpu() || x.layout() != c10::kStrided || at::isTensorSubclassLike(x))) return false;
  }
  return true;
}

// One forward op: where its arguments are, and its backward op.
struct OpInfo {
  size_t args = 0;     // arguments of the forward op; the last two are lengths and workspace
  size_t front = 0;    // tensors before b_ih: input, states, weights
  size_t states = 0;   // hx[, cx] (the outputs are output, the new states, workspace)
  size_t outputs = 0;
  std::array<size_t, 2> weights{};  // positions of w_ih and w_hh (inputs and grads alike)
  c10::optional<c10::OperatorHandle> backward;
  std::string node_name;
};

// The weight gradients this thread's nodes handed the engine in the current backward pass, so a
// later node of the same pass can add into them (core/grad_accumulation.h says why and when that is
// safe). The gradient is held weakly: the engine's input buffer owns it. The edge's node is named
// by address only, never held (a weak reference to a node would keep its members, an
// AccumulateGrad's parameter among them, alive until the entry is reused); an address can only
// name another node in another graph task (a task's nodes live as long as the task, and its
// roots hold them), and entries match on the task too.
class PendingWeightGrads {
 public:
  // The gradient handed to the engine earlier in graph task `task` for `edge`, if it is still the
  // engine's alone (nobody else can see an in-place add), else undefined. `weight` is the tensor
  // the edge is for: a gradient that is already its .grad (consumed) is never returned.
  static at::Tensor find(const torch::autograd::Edge& edge, int task, const at::Tensor& weight) {
    for (Entry& e : entries()) {
      if (e.task != task || e.input_nr != edge.input_nr || e.fn != edge.function.get()) continue;
      at::Tensor grad(e.grad.lock());
      // (its layout the op checks: take_accumulation_targets)
      if (!grad.defined() || grad.use_count() != 2 || grad.storage().use_count() != 1 ||
          (weight.is_leaf() && weight.grad().defined() && weight.grad().is_same(grad))) {
        return at::Tensor();
      }
      return grad;
    }
    return at::Tensor();
  }

  static void remember(const torch::autograd::Edge& edge, int task, const at::Tensor& grad) {
    auto& all = entries();
    Entry* slot = nullptr;
    for (Entry& e : all) {  // the same edge's entry, else a stale one, else round robin
      if (e.input_nr == edge.input_nr && e.fn == edge.function.get()) { slot = &e; break; }
    }
    if (!slot) {
      for (Entry& e : all) {
        if (e.task != task || e.grad.expired()) { slot = &e; break; }
      }
    }
    if (!slot) slot = &all[next()++ % all.size()];
    slot->fn = edge.function.get();
    slot->input_nr = edge.input_nr;
    slot->task = task;
    slot->grad = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(grad.getIntrusivePtr());
  }

 private:
  struct Entry {
    const torch::autograd::Node* fn = nullptr;
    uint32_t input_nr = 0;
    int task = -1;
    c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> grad{
        c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
  };
  static std::array<Entry, 8>& entries() {
    thread_local std::array<Entry, 8> e;
    return e;
  }
  static size_t& next() {
    thread_local size_t n = 0;
    return n;
  }
};

// Weight gradients deferred along a chain of steps (a cell stepped in a Python loop).
//
// Why: each step's dW = dGᵀ x is a rank-B update of a (G*H, I) matrix (and the same for W_hh):
// at B = 8-32 the GEMM streams the whole gradient through the cache to do 8-32 MACs per element, and
// at B = 1 it is a GER. Measured on the 2-core box, 1 thread, (H, H) dW with K = B per step against
// K = 256 rows at once, us per step: H 1024 B 8 268 -> 95, B 32 493 -> 339; H 512 B 8 38 -> 25.
//
// What: a node whose h_{t-1} comes straight from another node of the same op with the same weight
// and bias edges (the previous step, its predecessor) asks its backward op to leave this step's
// pre-activation grads in a Carry's rows (core/grad_accumulation.h DeferredRows) and return no
// weight or bias gradient, and hands the Carry to the predecessor, which adds its own rows. A node
// that cannot hand it on (the chain's first step, a predecessor of another kind, a full Carry, an op
// that declines) computes the weight and bias gradients of all the rows in one GEMM each (flush)
// and returns them (or adds them into the engine's gradient, PendingWeightGrads). The sum is the
// same; only where it is computed moves.
//
// Why it is safe: the predecessor is an input of this node (the h_{t-1} edge), so the engine runs
// it after this node and in the same graph task; it needs the weights' gradients too (its weight
// edges are this node's, which the task computes), so it runs. Its results are not observed
// (a predecessor with post hooks is never handed a Carry), and a node handles a Carry whatever path
// it takes (any op call, create_graph or not). Carries are keyed by graph task, so concurrent
// backward passes through one retained graph never mix; a node that finds its predecessor already
// holding a Carry of this task (two successors) flushes its own.
struct Carry {
  int task = -1;
  rnnfast::core::DeferredRows rows;
  bool active() const { return rows.row > 0; }
};

// The most rows a Carry collects before it is flushed: K = 256 gets a (G*H, I) GEMM to within a
// few % of what all of a 100-step loop at once gets (the measurements above). Steps of more than
// half of it never defer (two would not fit; a GEMM with K > 128 is efficient already).
constexpr int64_t kCarryRows = 256;
// Only weights of this many elements (W_ih and W_hh together) defer: below, a step's own dW is a
// fraction of a microsecond and the Carry's bookkeeping costs more. Cells loop, 100 steps with
// backward, 1 thread, alternating processes, us a step without / with deferral: RNNCell H64 B8
// (8K elements) 34-38 / 40-44, GRUCell H64 B1 (24K) 3.41x / 3.06x torch.nn in the cells suite;
// from H = 256 (RNN, 131K) it pays or ties (above).
constexpr int64_t kCarryMinWeightElements = int64_t(1) << 16;

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

    // Weight gradients to add into rather than return (PendingWeightGrads): only for a plain CPU
    // call of the backward op (no create_graph, anomaly checks, post hooks on this node, dispatch
    // modes or tensor subclasses, which could see or keep the gradients this node returns).
    const int task = torch::autograd::get_current_graph_task_id();
    std::array<bool, 2> tracked{};
    std::array<at::Tensor, 2> into;
    const bool plain = task >= 0 && !torch::autograd::GradMode::is_enabled() &&
                       !torch::autograd::AnomalyMode::is_enabled() && post_hooks().empty() &&
                       !c10::impl::dispatch_mode_enabled() && plain_cpu(t) && plain_cpu(grads);
    if (plain) {
      for (size_t k = 0; k < 2; ++k) {
        const size_t pos = info_.weights[k];
        if (!task_should_compute_output(pos) || !next_edge(pos).is_valid()) continue;
        tracked[k] = true;
        into[k] = PendingWeightGrads::find(next_edge(pos), task, t[pos]);
      }
    }

    // Weight gradients deferred from later steps (Carry), and whether this step can defer its own:
    // to a predecessor of its kind, or into a Carry it already holds (then flushed below).
    Carry carry = take_carry(task);
    // (sizes read only when plain: a symbolic tensor under torch.compile has none to read)
    const int64_t batch = plain && t[0].dim() == 3 ? t[0].size(1) : 0;
    const bool may_defer = plain && !lengths && batch > 0 && 2 * batch <= kCarryRows &&
                           t[info_.weights[0]].numel() + t[info_.weights[1]].numel() >= kCarryMinWeightElements &&
                           all_weight_grads_wanted();
    RecurrentBackward* const pred = may_defer ? deferral_target() : nullptr;
    const bool defer = may_defer && (pred || carry.active());
    if (defer && !carry.active()) {
      carry.task = task;
      carry.rows.capacity = kCarryRows;
    }
    // Handed on after this step's rows if another step's fit; else the op flushes them all.
    const bool hand_on = pred && carry.rows.row + 2 * batch <= carry.rows.capacity;
    carry.rows.flush = defer && !hand_on;
    carry.rows.flushed = false;
    const int64_t rows_before = carry.rows.row;

    // The backward op's arguments: grad_output, grad_hy[, grad_cy], the front tensors, output,
    // workspace, reverse, options, input_grad, lengths, hx_grad.
    torch::jit::Stack stack;
    stack.reserve(1 + info_.states + saved.size() + flags.size() + 3);
    // plain: an unused output's gradient is the shared zero row; a state's gradient the engine
    // handed over alone is the op's to update in place (owned)
    std::array<bool, 2> owned{};
    for (size_t s = 0; s < info_.states; ++s) owned[s] = plain && owned_dense(grads[1 + s], t[1 + s]);
    stack.emplace_back(plain && !grads[0].defined() && output.dim() == 3 && output.size(2) > 0 ? zero_grad_like(output)
                                                                                              : dense(grads[0], output));
    for (size_t s = 0; s < info_.states; ++s) stack.emplace_back(dense(grads[1 + s], t[1 + s]));  // like hx, cx
    for (size_t s = 0; s < info_.states; ++s) grads[1 + s] = at::Tensor();  // the stack's alone now (owned)
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
      // plain: the op may also leave out the grad_input this node drops (input_grad false)
      rnnfast::core::AccumulationScope scope({into[0], into[1], /*drops_unrequested=*/plain,
                                              defer ? &carry.rows : nullptr, owned[0], owned[1]});
      info_.backward->callBoxed(stack);
    }
    // (grad_input, the states' and weights' grads, grad_b_ih, grad_b_hh)
    variable_list result;
    result.reserve(stack.size());
    for (auto& v : stack) result.push_back(std::move(v).toTensor());
    // The op took its rows and either returned no dW, db (on to the predecessor), or flushed all
    // the rows into its results. Where it did not take them, or the predecessor already holds a
    // Carry of this task, the rows held are flushed here.
    const bool took = carry.rows.row > rows_before;
    if (carry.rows.flushed) {
      carry = Carry();
    } else if (carry.active() && !(took && hand_on && pred->give_carry(carry))) {
      flush(carry, result, into);
    }
    for (size_t k = 0; k < 2; ++k) {
      const size_t pos = info_.weights[k];
      // added into the engine's gradient (undefined here), or a fresh one a later node may add into
      TORCH_INTERNAL_ASSERT(!into[k].defined() || !result[pos].defined(), "rnnfast: ", info_.node_name,
                            " returned a weight gradient it was asked to accumulate");
      if (tracked[k] && result[pos].defined()) PendingWeightGrads::remember(next_edge(pos), task, result[pos]);
    }
    if (!input_grad) result[0] = at::Tensor();  // zeros (or nothing) from the op, not a gradient
    if (!hx_grad) result[1] = at::Tensor();
    if (!has_b_ih) result[info_.front] = at::Tensor();
    if (!has_b_hh) result[info_.front + 1] = at::Tensor();
    return result;
  }

 private:
  // The previous step's node, if this node may hand it a Carry: the node h_{t-1}'s gradient goes to,
  // of the same op, with the same weight and bias edges and no post hooks (which would see the
  // deferred gradients in its results).
  RecurrentBackward* deferral_target() const {
    const torch::autograd::Edge& hx = next_edge(1);
    if (!hx.is_valid() || !task_should_compute_output(1)) return nullptr;
    auto* pred = dynamic_cast<RecurrentBackward*>(hx.function.get());
    if (!pred || pred == this || &pred->info_ != &info_ || pred->has_b_ih != has_b_ih || pred->has_b_hh != has_b_hh ||
        !pred->post_hooks().empty() || pred->num_outputs() != num_outputs()) {
      return nullptr;
    }
    for (size_t pos : parameter_positions()) {
      const torch::autograd::Edge& mine = next_edge(pos);
      const torch::autograd::Edge& theirs = pred->next_edge(pos);
      if (mine.function != theirs.function || mine.input_nr != theirs.input_nr) return nullptr;
    }
    return pred;
  }

  // w_ih, w_hh and the biases there are: the positions a Carry's flush fills (the first n).
  struct Positions {
    std::array<size_t, 4> at{};
    size_t n = 0;
    const size_t* begin() const { return at.data(); }
    const size_t* end() const { return at.data() + n; }
  };
  Positions parameter_positions() const {
    Positions p;
    p.at[p.n++] = info_.weights[0];
    p.at[p.n++] = info_.weights[1];
    if (has_b_ih) p.at[p.n++] = info_.front;
    if (has_b_hh) p.at[p.n++] = info_.front + 1;
    return p;
  }

  bool all_weight_grads_wanted() const {
    for (size_t pos : parameter_positions()) {
      if (!task_should_compute_output(pos) || !next_edge(pos).is_valid()) return false;
    }
    return true;
  }

  // This task's Carry handed over by a later step (empty if none).
  Carry take_carry(int task) {
    if (task < 0) return Carry();
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      if (it->task == task) {
        Carry c = std::move(*it);
        inbox_.erase(it);
        return c;
      }
    }
    return Carry();
  }

  // Takes `carry` unless it already holds one of the same task (a second successor).
  bool give_carry(Carry& carry) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Carry& c : inbox_) {
      if (c.task == carry.task) return false;
    }
    inbox_.push_back(std::move(carry));
    carry = Carry();
    return true;
  }

  // The weight and bias gradients of the Carry's rows, added into this node's results: into a
  // result the op returned, else into the engine's gradient this node was given to accumulate into
  // (into), else as a fresh result.
  void flush(Carry& carry, variable_list& result, const std::array<at::Tensor, 2>& into) const {
    const int64_t K = carry.rows.row;
    const at::Tensor dg = carry.rows.dg.narrow(0, 0, K);
    RECORD_FUNCTION("rnnfast::weight_grad_rows", std::vector<c10::IValue>({dg}));
    const at::Tensor dgh = carry.rows.dgh.defined() ? carry.rows.dgh.narrow(0, 0, K) : dg;
    const std::array<at::Tensor, 2> operands{carry.rows.x.narrow(0, 0, K), carry.rows.h.narrow(0, 0, K)};
    const std::array<at::Tensor, 2> grads{dg, dgh};
    for (size_t k = 0; k < 2; ++k) {
      at::Tensor& r = result[info_.weights[k]];
      if (r.defined()) {
        r.addmm_(grads[k].t(), operands[k]);
      } else if (into[k].defined()) {
        into[k].addmm_(grads[k].t(), operands[k]);
      } else {
        r = at::mm(grads[k].t(), operands[k]);
      }
    }
    const std::array<bool, 2> has_bias{has_b_ih, has_b_hh};
    for (size_t k = 0; k < 2; ++k) {
      if (!has_bias[k]) continue;
      at::Tensor& r = result[info_.front + k];
      at::Tensor sum = grads[k].sum(0);
      if (r.defined()) {
        r.add_(sum);
      } else {
        r = std::move(sum);
      }
    }
    carry = Carry();
  }

  const OpInfo& info_;  // owned by the registered kernel, which lives as long as the op
  std::vector<Carry> inbox_;  // Carries handed over by later steps, one per graph task (mutex_)
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
    for (size_t i = 0; i < info_.front; ++i) {
      if (arguments[i].name() == "w_ih") info_.weights[0] = i;
      if (arguments[i].name() == "w_hh") info_.weights[1] = i;
    }
    TORCH_INTERNAL_ASSERT(info_.weights[0] > 0 && info_.weights[1] > info_.weights[0], "rnnfast: ", schema.name(),
                          " has no w_ih, w_hh before b_ih");
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
