// The Python module rnnfast._C: loading it registers the ops (csrc/ops.cpp and the backends), and it
// holds one function, the modules' eager fast path.
//
// rnnfast._C.forward_layers runs the usual call of a recurrent module (rnnfast.nn.RNN/GRU/LSTM) or
// cell (RNNCell/GRUCell/LSTMCell) in C++: zero initial states, one call of the cell's forward op per
// layer and direction through the dispatcher (core/layer_op.h: the same kernels, autograd, autocast
// and profiler scopes as rnnfast.functional's call), the directions' outputs concatenated and the
// final states stacked. It exists for small problems, where the Python around the op was most of a
// call: at H = 64, B = 1, T = 1 the module cost ~55 us, ~25 us of it in the op's Python call and the
// tensor bookkeeping around it (the op's kernel: a few us). Same ops, same arguments, so the same
// numbers as the Python path, bit for bit.
//
// It answers None for anything but the usual call, and rnnfast.nn then takes its Python path, with
// every check and error message: input or states that are not plain tensors (subclasses, a
// __torch_function__ mode), a parameter missing from module._parameters (parametrizations), shapes,
// dtypes or devices that differ from the module's, a zero-length sequence, an unknown cell. When an
// op refuses the call, the Python path runs it again and raises the error it names (the forward
// ops have no side effects, so nothing is left half done); an exception raised by Python code
// under the ops (a saved-tensor hook) propagates as it is. The caller (rnnfast/nn.py) calls it only
// outside graph capture and function transforms (rnnfast._ops.eager_fast).
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <cstring>
#include <optional>
#include <vector>

#include "core/cells.h"
#include "core/layer_op.h"
#include "core/scratch.h"
#include "core/tensors.h"
#include "cpu/isa.h"

namespace rnnfast {
namespace cpu {
bool gemm_into_for_tests(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool accumulate);  // cpu/recurrent.cpp
}  // namespace cpu
}  // namespace rnnfast

namespace {

using rnnfast::core::LayerOp;
using rnnfast::core::LayerResult;

// Every cell with an op of its own: its name and its forward op for each value of its option.
struct CellOps {
  const char* name;
  bool cell_state;
  std::array<LayerOp, 2> op;  // [option false, option true]
};

const std::vector<CellOps>& cell_ops() {
  static const std::vector<CellOps> table = [] {
    std::vector<CellOps> t;
    rnnfast::core::for_each_cell([&](auto tag) {
      using Cell = typename decltype(tag)::type;
      if constexpr (rnnfast::core::has_own_op<Cell>()) {
        t.push_back({Cell::name, Cell::traits.has_cell_state(),
                     {rnnfast::core::layer_op<Cell>(false), rnnfast::core::layer_op<Cell>(true)}});
      }
    });
    return t;
  }();
  return table;
}

// The cell's ops by name. The last few name objects are remembered (a reference held, so an
// address can never be another string's), so the usual caller (rnnfast.nn, passing the same string
// object each time) costs a pointer comparison. Called with the GIL held, which guards `seen`.
const CellOps* find_cell_ops(PyObject* cell) {
  static std::array<std::pair<PyObject*, const CellOps*>, 4> seen{};
  static size_t next = 0;
  for (const auto& [name, ops] : seen) {
    if (name == cell) return ops;
  }
  for (const CellOps& c : cell_ops()) {
    if (PyUnicode_CompareWithASCIIString(cell, c.name) == 0) {
      auto& slot = seen[next++ % seen.size()];
      Py_INCREF(cell);
      Py_XDECREF(slot.first);
      slot = {cell, &c};
      return &c;
    }
  }
  return nullptr;
}

// A torch.Tensor or torch.nn.Parameter exactly (a subclass may override __torch_function__).
bool plain_tensor(PyObject* o) { return o != nullptr && THPVariable_CheckExact(o); }

// An int argument that is an int (not a bool, as `type(x) is int`), or -1.
int64_t exact_int(PyObject* o) { return PyLong_CheckExact(o) ? PyLong_AsLongLong(o) : -1; }

struct ReleasedGil {
  PyThreadState* state = PyEval_SaveThread();
  ~ReleasedGil() { PyEval_RestoreThread(state); }
};

// A CPU zero initial state, filled by memset (no zero_ dispatch). With `keep` (a call that
// differentiates nothing: nothing keeps its state) and not above kKeptZeroBytes: this thread's
// zeros from an earlier such call where nothing else holds them (the ops only read a state) and
// the shape and dtype match, else fresh zeros kept for the next call. A small call then allocates
// and fills none (each at::empty ~0.2 us of a ~4 us call).
constexpr int64_t kKeptZeroBytes = int64_t(64) << 10;

at::Tensor cpu_zero_state(at::IntArrayRef shape, const at::TensorOptions& opts, bool keep) {
  thread_local at::Tensor kept;
  if (keep && kept.defined() && kept.use_count() == 1 && kept.storage().use_count() == 1 && kept.sizes() == shape &&
      kept.dtype() == opts.dtype()) {
    return kept;
  }
  at::Tensor z = at::empty(shape, opts);
  if (z.nbytes() > 0) std::memset(z.data_ptr(), 0, z.nbytes());
  if (keep && int64_t(z.nbytes()) <= kKeptZeroBytes) kept = z;
  return z;
}

// t (B, H) as (1, B, H): in place where this call holds t alone and no autograd history records
// its shape (one dispatcher call fewer than unsqueeze, ~0.15 us), else unsqueeze(0).
at::Tensor with_leading_one(at::Tensor t) {
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  if (t.use_count() == 1 && !t.requires_grad() && t.is_contiguous() && impl->allow_tensor_metadata_change() &&
      t.layout() == c10::kStrided && !impl->has_symbolic_sizes_strides()) {
    impl->set_sizes_contiguous({1, t.size(0), t.size(1)});
    return t;
  }
  return t.unsqueeze(0);
}

PyObject* tuple_of(std::initializer_list<at::Tensor> ts) {
  PyObject* t = PyTuple_New(static_cast<Py_ssize_t>(ts.size()));
  if (!t) return nullptr;
  Py_ssize_t i = 0;
  for (const at::Tensor& x : ts) {
    PyObject* v = THPVariable_Wrap(x);
    if (!v) {
      Py_DECREF(t);
      return nullptr;
    }
    PyTuple_SET_ITEM(t, i++, v);
  }
  return t;
}

// A PackedSequence's layout, as rnnfast.nn._Packing: packed row k is row idx[k] of the (T*B, *)
// zero-padded batch, time-major, its sequences in the PackedSequence's sorted order (longest first,
// so the ops' steps run over their live rows only: cpu/backend.h live_end), idx[k] = t * B + j for
// the j-th of time t's batch_sizes[t] rows (ascending: one run of rows per time step); lengths (B,)
// int64 in that order. sorted / unsorted: the PackedSequence's indices (undefined when it has none),
// which put states given in the caller's batch order into the sorted order and the final states
// back.
struct Packing {
  at::Tensor lengths, idx, sorted, unsorted;
  int64_t T = 0, B = 0;
  bool full = false;  // every sequence T long: idx is the identity, the data already the padded batch
};

// The Packing of (batch_sizes, sorted_indices, unsorted_indices) for packed data `data` (N, I) on the
// CPU, the three as torch.nn.utils.rnn makes them. nullopt for anything else: what _Packing.of must
// check and name (its errors), and index tensors or data off the CPU (it copies those to the host).
std::optional<Packing> cpu_packing(PyObject* packing, const at::Tensor& data) {
  if (!PyTuple_Check(packing) || PyTuple_GET_SIZE(packing) != 3 || !data.is_cpu() || data.dim() != 2) {
    return std::nullopt;
  }
  PyObject *sizes_o = PyTuple_GET_ITEM(packing, 0), *sorted_o = PyTuple_GET_ITEM(packing, 1),
           *unsorted_o = PyTuple_GET_ITEM(packing, 2);
  if (!plain_tensor(sizes_o)) return std::nullopt;
  const at::Tensor& sizes = THPVariable_Unpack(sizes_o);
  if (sizes.scalar_type() != at::kLong || sizes.dim() != 1 || !sizes.is_cpu() || sizes.numel() == 0) {
    return std::nullopt;
  }
  const at::Tensor batch_sizes = sizes.contiguous();
  const int64_t* b = batch_sizes.const_data_ptr<int64_t>();
  const int64_t T = batch_sizes.numel(), B = b[0];
  int64_t N = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (b[t] < 1 || (t > 0 && b[t] > b[t - 1])) return std::nullopt;
    N += b[t];
  }
  if (data.size(0) != N) return std::nullopt;
  Packing p;
  if (sorted_o != Py_None || unsorted_o != Py_None) {
    if (!plain_tensor(sorted_o) || !plain_tensor(unsorted_o)) return std::nullopt;
    std::array<at::Tensor, 2> ix = {THPVariable_Unpack(sorted_o), THPVariable_Unpack(unsorted_o)};
    for (at::Tensor& t : ix) {
      if (t.scalar_type() != at::kLong || t.dim() != 1 || t.size(0) != B || !t.is_cpu()) return std::nullopt;
      t = t.contiguous();
    }
    const int64_t *sorted = ix[0].const_data_ptr<int64_t>(), *unsorted = ix[1].const_data_ptr<int64_t>();
    std::vector<char> seen(static_cast<size_t>(B), 0);
    for (int64_t j = 0; j < B; ++j) {  // a permutation, and unsorted its inverse
      const int64_t s = sorted[j];
      if (s < 0 || s >= B || seen[s] || unsorted[s] != j) return std::nullopt;
      seen[s] = 1;
    }
    p.sorted = ix[0];
    p.unsorted = ix[1];
  }
  p.T = T;
  p.B = B;
  p.full = N == T * B;
  p.lengths = at::zeros({B}, at::kLong);
  p.idx = at::empty({N}, at::kLong);
  int64_t *lengths = p.lengths.data_ptr<int64_t>(), *idx = p.idx.data_ptr<int64_t>(), k = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < b[t]; ++j) {
      idx[k++] = t * B + j;
      ++lengths[j];
    }
  }
  return p;
}

// Between the packed rows (N, F) and the padded batch (T*B, F): core::scatter_rows / gather_rows
// over idx (core/tensors.h), one memcpy per time step (the packed rows of time t are the padded rows
// [t*B, t*B + batch_sizes[t])) and the padding zeroed, rather than the Python path's index_copy_ /
// index_select and, in backward, their index kernels (RNN-tanh I = 512 B = 100 T = 3 packed spent
// ~0.5 ms a forward+backward call in them). Plain copies: the same values, bit for bit. With grad,
// two autograd functions, each the other's backward (so differentiable to any order).
struct PadRows : public torch::autograd::Function<PadRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& idx,
                            int64_t padded_rows) {
    ctx->saved_data["idx"] = idx;
    return rnnfast::core::scatter_rows(rows, idx, at::empty({padded_rows, rows.size(1)}, rows.options()));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads);
};

struct GatherRows : public torch::autograd::Function<GatherRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& padded2d, const at::Tensor& idx) {
    ctx->saved_data["idx"] = idx;
    ctx->saved_data["padded_rows"] = padded2d.size(0);
    return rnnfast::core::gather_rows(padded2d, idx, at::empty({idx.size(0), padded2d.size(1)}, padded2d.options()));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return {PadRows::apply(grads[0], ctx->saved_data["idx"].toTensor(), ctx->saved_data["padded_rows"].toInt()),
            at::Tensor()};
  }
};

torch::autograd::variable_list PadRows::backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
  return {GatherRows::apply(grads[0], ctx->saved_data["idx"].toTensor()), at::Tensor(), at::Tensor()};
}

// Packed rows (N, F) -> (T, B, F), zeros past each sequence's end (_Packing.padded), each element
// written once. `lend`: a call that differentiates nothing takes the buffer from the scratch pool
// (core/scratch.h; lent while the result lives), so a large padded batch does not fault its pages
// in afresh on every call.
at::Tensor padded(const Packing& p, const at::Tensor& rows, bool lend) {
  const int64_t F = rows.size(1);
  if (p.full) return rows.reshape({p.T, p.B, F});
  if (rows.requires_grad() && at::GradMode::is_enabled()) {
    return PadRows::apply(rows, p.idx, p.T * p.B).view({p.T, p.B, F});
  }
  at::Tensor out = lend ? rnnfast::core::ScratchPool::instance().take(p.T * p.B * F, rows.options()).view({p.T * p.B, F})
                        : at::empty({p.T * p.B, F}, rows.options());
  return rnnfast::core::scatter_rows(rows, p.idx, out).view({p.T, p.B, F});
}

// (T, B, F) -> its packed rows (N, F) (_Packing.rows).
at::Tensor packed_rows(const Packing& p, const at::Tensor& x) {
  const at::Tensor rows = x.reshape({p.T * p.B, x.size(2)});
  if (p.full) return rows;
  if (x.requires_grad() && at::GradMode::is_enabled()) return GatherRows::apply(rows, p.idx);
  return rnnfast::core::gather_rows(rows, p.idx, at::empty({p.idx.size(0), rows.size(1)}, rows.options()));
}

// forward_layers(cell, option, input, states, params, names, num_layers, bidirectional, batch_first,
//                input_size, hidden_size, step, dropout, packing, proj_size)
//   cell         the cell's op name ("rnn_tanh", "gru", "lstm", ...); option: its option value (gru's
//                reset_after; False for the others)
//   input        module (step False): (T, B, I), or (B, T, I) with batch_first, or unbatched (T, I);
//                cell: (B, I) or unbatched (I,); with packing: the PackedSequence's data (N, I)
//   states       None, or a tuple of h (and c): module (L*D, B, H) each (unbatched (L*D, H)), cell
//                (B, H) each (unbatched (H,))
//   params       module._parameters; names: a list or tuple of the parameter names, per layer and
//                direction w_ih, w_hh, (when there are biases) b_ih, b_hh and (with proj_size) w_hr,
//                in torch.nn's _flat_weights_names order
//   dropout      the probability of dropout between layers (torch.nn's, drawn by the same
//                at::dropout calls as the Python path), 0 for none (eval mode)
//   packing      None, or a PackedSequence's (batch_sizes, sorted_indices, unsorted_indices)
//   proj_size    0, or an LSTM's projection size P (torch.nn.LSTM proj_size): each layer-direction
//                runs lstm_proj_forward, h states and outputs have P features, c states H
// Returns module: (output, h_n) or (output, (h_n, c_n)), output the packed rows (N, D*H) with
// packing (the caller makes them a PackedSequence); cell: (h',) or (h', c'); None to decline.
PyObject* forward_layers(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 15) {
    PyErr_SetString(PyExc_TypeError, "rnnfast._C.forward_layers takes 15 arguments");
    return nullptr;
  }
  PyObject *cell = args[0], *input = args[2], *states = args[3], *params = args[4], *names = args[5];
  const bool option = args[1] == Py_True, bidirectional = args[7] == Py_True, batch_first = args[8] == Py_True;
  const bool step = args[11] == Py_True;
  const int64_t L = exact_int(args[6]), I = exact_int(args[9]), H = exact_int(args[10]), P = exact_int(args[14]);
  double dropout = -1;  // declined unless a float or int in [0, 1]
  if (PyFloat_CheckExact(args[12])) {
    dropout = PyFloat_AS_DOUBLE(args[12]);
  } else if (PyLong_CheckExact(args[12])) {
    dropout = double(exact_int(args[12]));
  }
  if (!PyUnicode_Check(cell) || !PyDict_Check(params) || !(PyList_Check(names) || PyTuple_Check(names)) ||
      !plain_tensor(input) || (args[7] != Py_True && args[7] != Py_False) || L < 1 || I < 0 || H < 0 || P < 0 ||
      (step && P != 0) ||
      !(dropout >= 0 && dropout <= 1) || (step && args[13] != Py_None) || at::impl::torch_function_mode_enabled()) {
    Py_RETURN_NONE;
  }
  const CellOps* ops = find_cell_ops(cell);
  if (!ops) Py_RETURN_NONE;
  // An LSTM with a projection runs lstm_proj_forward (looked up once); only the LSTM has one.
  const bool proj = P > 0;
  if (proj && std::strcmp(ops->name, "lstm") != 0) Py_RETURN_NONE;
  static const rnnfast::core::ProjLayerOp proj_op = rnnfast::core::lstm_proj_layer_op();

  // The parameters, per layer-direction w_ih, w_hh[, b_ih, b_hh][, w_hr].
  const int64_t D = bidirectional ? 2 : 1, n = PySequence_Fast_GET_SIZE(names);
  const int64_t per = n / (L * D), biases = per - 2 - (proj ? 1 : 0);
  if (per * L * D != n || (biases != 0 && biases != 2)) Py_RETURN_NONE;
  std::vector<at::Tensor> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    PyObject* p = PyDict_GetItemWithError(params, PySequence_Fast_GET_ITEM(names, i));  // borrowed
    if (!plain_tensor(p)) {
      if (PyErr_Occurred()) return nullptr;
      Py_RETURN_NONE;
    }
    w[i] = THPVariable_Unpack(p);
  }
  const at::Tensor& w0 = w[0];
  at::Tensor x = THPVariable_Unpack(input);
  if (x.scalar_type() != w0.scalar_type() || x.device() != w0.device() || x.dim() == 0 || x.size(-1) != I) {
    Py_RETURN_NONE;
  }
  // Unbatched input (a module's (T, I), a cell's (I,)) runs as a batch of one: (T, 1, I) (whatever
  // batch_first says, as torch.nn), states and results with that batch dimension added and removed.
  std::optional<Packing> packing;
  bool unbatched = false;
  if (args[13] != Py_None) {
    packing = cpu_packing(args[13], x);
    if (!packing) Py_RETURN_NONE;
  } else if (x.dim() == (step ? 1 : 2)) {
    unbatched = true;
  } else if (x.dim() != (step ? 2 : 3)) {
    Py_RETURN_NONE;
  }
  const at::Tensor packed_data = packing ? x : at::Tensor();  // padded below, once the GIL is let go
  if (step) {
    x = unbatched ? x.unsqueeze(0).unsqueeze(0) : x.unsqueeze(0);
  } else if (unbatched) {
    x = x.unsqueeze(1);
  } else if (batch_first && !packing) {  // packed data is time-major whatever batch_first says
    x = x.transpose(0, 1);
  }
  if (!packing && x.size(0) == 0) Py_RETURN_NONE;  // a zero-length sequence: the Python path's error
  const int64_t B = packing ? packing->B : x.size(1), num_states = ops->cell_state ? 2 : 1;
  // h's shape (P features with a projection) and c's
  const std::array<std::vector<int64_t>, 2> state_shapes = {
      step ? std::vector<int64_t>{B, proj ? P : H} : std::vector<int64_t>{L * D, B, proj ? P : H},
      step ? std::vector<int64_t>{B, H} : std::vector<int64_t>{L * D, B, H}};
  std::vector<at::Tensor> s(static_cast<size_t>(num_states));
  if (states != Py_None) {
    if (!PyTuple_Check(states) || PyTuple_GET_SIZE(states) != num_states) Py_RETURN_NONE;
    for (int64_t k = 0; k < num_states; ++k) {
      PyObject* o = PyTuple_GET_ITEM(states, k);
      if (!plain_tensor(o)) Py_RETURN_NONE;
      s[k] = THPVariable_Unpack(o);
      if (s[k].scalar_type() != w0.scalar_type() || s[k].device() != w0.device()) Py_RETURN_NONE;
      const std::vector<int64_t>& state_shape = state_shapes[static_cast<size_t>(k)];
      if (unbatched) {  // the unbatched state: the shape without its batch dimension
        if (s[k].dim() != int64_t(state_shape.size()) - 1) Py_RETURN_NONE;
        s[k] = s[k].unsqueeze(step ? 0 : 1);
      }
      if (s[k].sizes() != at::IntArrayRef(state_shape)) Py_RETURN_NONE;
    }
  }
  const bool reorder = packing && packing->sorted.defined();  // states to and from the sorted order

  // The workspace is kept only where something will be differentiated (as rnnfast._ops does).
  bool grad = at::GradMode::is_enabled() && x.requires_grad();
  if (at::GradMode::is_enabled()) {
    for (const at::Tensor& t : w) grad = grad || t.requires_grad();
    for (const at::Tensor& t : s) grad = grad || t.requires_grad();
  }
  at::Tensor output, h_n, c_n;
  try {
    const int64_t T = packing ? packing->T : x.size(0);
    // The GIL is let go for the ops, unless the call is a few us at most (letting it go and
    // taking it back costs ~0.05 us): under 2^15 multiply-adds per gate, T*B*(I+H)*H per layer.
    std::optional<ReleasedGil> released;
    if (double(T) * double(B) * double(I + H) * double(H) * double(L * D) >= double(1 << 15)) {
      released.emplace();
    }
    if (packing) x = padded(*packing, packed_data, /*lend=*/!grad);
    const c10::optional<at::Tensor> lengths =
        packing ? c10::optional<at::Tensor>(packing->lengths) : c10::optional<at::Tensor>();
    // No states given: one zeros tensor serves h0 and c0 alike (the ops only read them; one
    // allocation and fill fewer per LSTM call; with a projection h0 is its first B*P zeros).
    // Given: all of them (checked above).
    // On CPU the fill is a memset, and with one layer-direction the tensor is made (B, H) at once,
    // so no select() per call either (each dispatch ~0.3 us of a ~12 us call).
    at::Tensor zero_state, zero_h;
    const bool single = !step && L * D == 1;
    const at::IntArrayRef full_shape(state_shapes[num_states - 1]);  // c's (H wide), else h's
    if (states == Py_None) {
      const at::IntArrayRef shape = single ? full_shape.slice(1) : full_shape;
      if (w0.is_cpu()) {
        zero_state = cpu_zero_state(shape, w0.options(), /*keep=*/!grad);
      } else {
        zero_state = at::zeros(shape, w0.options());
      }
    }
    for (int64_t k = 0; k < num_states; ++k) {
      s[k] = zero_state.defined() ? zero_state
             : reorder            ? s[k].index_select(1, packing->sorted)
                                  : s[k].contiguous();
    }
    if (proj && zero_state.defined()) zero_h = zero_state.view(-1).narrow(0, 0, B * P).view({B, P});
    const LayerOp& op = ops->op[option ? 1 : 0];
    at::Tensor layer_input = x.contiguous();
    std::vector<at::Tensor> hs, cs;
    for (int64_t l = 0; l < L; ++l) {
      std::array<at::Tensor, 2> outs;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t idx = l * D + d;
        const at::Tensor* p = &w[static_cast<size_t>(idx * per)];
        const c10::optional<at::Tensor> b_ih = biases ? c10::optional<at::Tensor>(p[2]) : c10::nullopt;
        const c10::optional<at::Tensor> b_hh = biases ? c10::optional<at::Tensor>(p[3]) : c10::nullopt;
        const bool whole = step || (single && zero_state.defined());  // s[k] is this layer-direction's (B, H) state
        const at::Tensor h0 = zero_h.defined() ? zero_h : whole ? s[0] : s[0].select(0, idx);
        const at::Tensor c0 = num_states == 2 ? (whole ? s[1] : s[1].select(0, idx)) : at::Tensor();
        LayerResult r = proj ? proj_op(layer_input, h0, c0, p[0], p[1], p[per - 1], b_ih, b_hh, /*reverse=*/d == 1,
                                       grad, lengths)
                             : op(layer_input, h0, c0, p[0], p[1], b_ih, b_hh, /*reverse=*/d == 1, grad, lengths);
        outs[d] = std::move(r.output);
        hs.push_back(std::move(r.hy));
        if (num_states == 2) cs.push_back(std::move(r.cy));
      }
      layer_input = D == 1 ? outs[0] : at::cat({outs[0], outs[1]}, 2);
      if (dropout > 0 && l < L - 1) {  // as rnnfast.nn's _dropout: on the packed rows for packed input
        layer_input = packing ? padded(*packing, at::dropout(packed_rows(*packing, layer_input), dropout, true), false)
                              : at::dropout(layer_input, dropout, true);
      }
    }
    if (step) {
      h_n = unbatched ? hs[0].squeeze(0) : hs[0];
      if (num_states == 2) c_n = unbatched ? cs[0].squeeze(0) : cs[0];
    } else if (unbatched) {  // (T, D*H), (L*D, H)
      output = layer_input.squeeze(1);
      h_n = hs.size() == 1 ? hs[0] : at::cat(hs);
      if (num_states == 2) c_n = cs.size() == 1 ? cs[0] : at::cat(cs);
    } else {
      output = packing ? packed_rows(*packing, layer_input) : batch_first ? layer_input.transpose(0, 1) : layer_input;
      h_n = hs.size() == 1 ? with_leading_one(std::move(hs[0])) : at::stack(hs);
      if (num_states == 2) c_n = cs.size() == 1 ? with_leading_one(std::move(cs[0])) : at::stack(cs);
      if (reorder) {
        h_n = h_n.index_select(1, packing->unsorted);
        if (num_states == 2) c_n = c_n.index_select(1, packing->unsorted);
      }
    }
  } catch (python_error& e) {
    // Python code under the ops raised (a saved-tensor hook, the autocast kernel). As in the
    // Python path (rnnfast.functional._layer), a RuntimeError, TypeError or ValueError is an op's
    // refusal, checked and named there; anything else propagates as it is (non-reentrant
    // checkpointing stops its recomputation this way: running the call again would be wrong)
    e.restore();
    if (PyErr_ExceptionMatches(PyExc_RuntimeError) || PyErr_ExceptionMatches(PyExc_TypeError) ||
        PyErr_ExceptionMatches(PyExc_ValueError)) {
      PyErr_Clear();
      Py_RETURN_NONE;
    }
    return nullptr;
  } catch (...) {
    // an op refused the call: the Python path runs it again and raises the error that names the
    // problem
    if (PyErr_Occurred()) PyErr_Clear();
    Py_RETURN_NONE;
  }

  if (step) return num_states == 2 ? tuple_of({h_n, c_n}) : tuple_of({h_n});
  PyObject* out = THPVariable_Wrap(output);
  PyObject* state = num_states == 2 ? tuple_of({h_n, c_n}) : THPVariable_Wrap(h_n);
  if (!out || !state) {
    Py_XDECREF(out);
    Py_XDECREF(state);
    return nullptr;
  }
  PyObject* result = PyTuple_Pack(2, out, state);
  Py_DECREF(out);
  Py_DECREF(state);
  return result;
}

// rnnfast._C._set_vector_rows(on), _set_batch_lanes(on) and _set_lanes_avx512(on) -> the previous
// setting: the SIMD paths' switches (csrc/cpu/isa.h: the AVX-512 forward row passes; the batch-lane
// and panel GEMMs; whether those run their AVX-512 or their AVX2 kernels). Tests run every path;
// on is refused (stays False) where the CPU or the build has no such path.
// rnnfast._C._gemm_into(dst, a, b, accumulate) -> whether rnnfast's blocked GEMM took dst = [dst +]
// a b (CpuFamily::gemm_into, the weight gradients' path; csrc/cpu/recurrent.cpp); tests only.
PyObject* gemm_into(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *d, *a, *b;
  int accumulate = 0;
  if (!PyArg_ParseTuple(args, "OOOp", &d, &a, &b, &accumulate)) return nullptr;
  if (!THPVariable_Check(d) || !THPVariable_Check(a) || !THPVariable_Check(b)) {
    PyErr_SetString(PyExc_TypeError, "_gemm_into: dst, a and b must be tensors");
    return nullptr;
  }
  at::Tensor dst = THPVariable_Unpack(d);
  const at::Tensor &ta = THPVariable_Unpack(a), &tb = THPVariable_Unpack(b);
  TORCH_CHECK(!dst.is_cuda() && dst.dim() == 2 && ta.dim() == 2 && tb.dim() == 2 && ta.size(1) == tb.size(0) &&
                  dst.size(0) == ta.size(0) && dst.size(1) == tb.size(1),
              "_gemm_into: CPU matrices dst (m, n), a (m, k), b (k, n)");
  return PyBool_FromLong(rnnfast::cpu::gemm_into_for_tests(dst, ta, tb, accumulate != 0));
  END_HANDLE_TH_ERRORS
}

template <bool (*Set)(bool)>
PyObject* set_switch(PyObject*, PyObject* on) {
  const int flag = PyObject_IsTrue(on);
  if (flag < 0) return nullptr;
  return PyBool_FromLong(Set(flag != 0));
}

PyMethodDef methods[] = {
    {"_set_vector_rows", set_switch<rnnfast::cpu::set_vector_rows>, METH_O,
     "Turn the AVX-512 forward row passes on or off (tests); returns the previous setting."},
    {"_set_batch_lanes", set_switch<rnnfast::cpu::set_batch_lanes>, METH_O,
     "Turn the batch-lane and panel GEMMs (AVX-512 or AVX2) on or off (tests); returns the previous setting."},
    {"_set_lanes_avx512", set_switch<rnnfast::cpu::set_lanes_avx512>, METH_O,
     "Run the batch-lane and panel GEMMs' AVX-512 kernels (True) or their AVX2 ones (tests); returns the previous "
     "setting."},
    {"_gemm_into", gemm_into, METH_VARARGS,
     "dst = [dst +] a b on rnnfast's blocked AVX2 GEMM where it takes them (tests); returns whether it did."},
    {"forward_layers", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(forward_layers)), METH_FASTCALL,
     "The usual call of a recurrent module or cell in C++ (csrc/python.cpp); None to decline."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// `import rnnfast._C` loads this shared object, so the op registrations run, and gives the module.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
