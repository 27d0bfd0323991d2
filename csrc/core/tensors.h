// ATen helpers shared by every backend's host loop (CPU, CUDA, the CUDA emulation).
#pragma once
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace rnnfast {
namespace core {

// at::empty for the tensors a kernel returns: on the CPU at::detail::empty_cpu, which at::empty's
// CPU kernel runs after two dispatcher hops (~0.05 us of a small call's few), except under
// torch.use_deterministic_algorithms, whose fill of uninitialized memory only at::empty does.
inline at::Tensor new_tensor(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return opts.device().is_cpu() && !at::globalContext().deterministicAlgorithms() ? at::detail::empty_cpu(sizes, opts)
                                                                                  : at::empty(sizes, opts);
}

// h_{t-1} for every time index t, in time order, into dst (T*B, width), any row stride (one copy, no
// per-step copies): walking forward that is [hx, output[0 .. T-2]], walking in reverse
// [output[1 .. T-1], hx]. output (T, B, width), hx (B, width).
inline void fill_prev_states(const at::Tensor& dst, const at::Tensor& hx, const at::Tensor& output, bool reverse) {
  const int64_t T = output.size(0), B = output.size(1), rest = (T - 1) * B;
  dst.narrow(0, reverse ? rest : 0, B).copy_(hx);
  if (T > 1) {
    dst.narrow(0, reverse ? 0 : B, rest).copy_(output.narrow(0, reverse ? 1 : 0, T - 1).reshape({rest, dst.size(1)}));
  }
}

// A dense (contiguous, unit-strided) copy of t: the buffer a loop then writes through raw pointers
// (a clone would keep a stride-0 broadcast layout).
// On the CPU a contiguous t is one memcpy (a cell's step: no empty and copy_ dispatch).
inline at::Tensor dense_copy(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous() && !t.is_conj() && !t.is_neg()) {
    at::Tensor out = new_tensor(t.sizes(), t.options());
    if (t.numel() > 0) std::memcpy(out.data_ptr(), t.const_data_ptr(), t.nbytes());
    return out;
  }
  return at::empty(t.sizes(), t.options()).copy_(t);
}

// A fresh dense (B, cols) copy of src[t, :, col0 : col0 + cols], src (T, B, W): the final states a
// forward returns (hy from the output, cy from the workspace). On the CPU, with src contiguous,
// plain row copies: at a small size the select, narrow and clone ops cost more than the copy.
inline at::Tensor state_copy(const at::Tensor& src, int64_t t, int64_t col0, int64_t cols) {
  if (src.device().is_cpu() && src.is_contiguous()) {
    const int64_t B = src.size(1), W = src.size(2);
    const size_t esz = src.element_size(), row = static_cast<size_t>(cols) * esz;
    at::Tensor out = new_tensor({B, cols}, src.options());
    const char* s = static_cast<const char*>(src.const_data_ptr()) + (t * B * W + col0) * esz;
    char* d = static_cast<char*>(out.data_ptr());
    for (int64_t b = 0; b < B; ++b) std::memcpy(d + b * row, s + b * W * esz, row);
    return out;
  }
  return src.select(0, t).narrow(1, col0, cols).clone(at::MemoryFormat::Contiguous);
}

// Row runs of ascending row indices idx: calls f(k, row, n) for each run of n consecutive indices
// starting at position k (idx[k] = row), over the intra-op threads in blocks of about 64 KB of rows
// (as ATen's index kernels are: a single-threaded fill of a 3.2 MB padded gradient cost RNN-tanh
// H = 256 B = 32 T = 100 ragged packed forward+backward ~15% at 2 threads). A block boundary may
// split a run. CPU, idx contiguous int64.
template <class F>
void for_row_runs(const at::Tensor& idx, int64_t row_bytes, const F& f) {
  const int64_t n = idx.size(0);
  const int64_t* r = idx.const_data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, row_bytes));
  at::parallel_for(0, n, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1;) {
      int64_t e = k + 1;
      while (e < k1 && r[e] == r[e - 1] + 1) ++e;
      f(k, r[k], e - k);
      k = e;
    }
  });
}

// Rows idx (ascending) of a 2-D CPU tensor into dst (idx.size(0), F), one memcpy per run of
// consecutive rows: index_select's values, without its per-row index kernel. (A PackedSequence's
// rows in its sorted order are one run per time step of the padded batch.)
inline at::Tensor gather_rows(const at::Tensor& src, const at::Tensor& idx, at::Tensor dst) {
  const at::Tensor s = src.contiguous();
  const size_t bytes = size_t(s.size(1)) * s.element_size();
  const char* from = static_cast<const char*>(s.const_data_ptr());
  char* to = static_cast<char*>(dst.data_ptr());
  for_row_runs(idx, int64_t(bytes), [&](int64_t k, int64_t row, int64_t n) {
    std::memcpy(to + k * bytes, from + row * bytes, n * bytes);
  });
  return dst;
}

// The inverse: src's rows into dst (rows, F) at idx (ascending), zeros in every other row, each
// element written once (at::zeros(...).index_copy_(0, idx, src)'s values). Each run zeroes the
// gap before it (and the last one the rows after it), so the fill is split over the threads too.
inline at::Tensor scatter_rows(const at::Tensor& src, const at::Tensor& idx, at::Tensor dst) {
  const at::Tensor s = src.contiguous();
  const size_t bytes = size_t(s.size(1)) * s.element_size();
  const int64_t n = idx.size(0), rows = dst.size(0);
  const int64_t* r = idx.const_data_ptr<int64_t>();
  const char* from = static_cast<const char*>(s.const_data_ptr());
  char* to = static_cast<char*>(dst.data_ptr());
  if (n == 0) {
    if (rows > 0) std::memset(to, 0, rows * bytes);
    return dst;
  }
  for_row_runs(idx, int64_t(bytes), [&](int64_t k, int64_t row, int64_t m) {
    const int64_t gap = k == 0 ? 0 : r[k - 1] + 1;  // the row after the previous index
    if (row > gap) std::memset(to + gap * bytes, 0, (row - gap) * bytes);
    std::memcpy(to + row * bytes, from + k * bytes, m * bytes);
    if (k + m == n && row + m < rows) std::memset(to + (row + m) * bytes, 0, (rows - row - m) * bytes);
  });
  return dst;
}

}  // namespace core
}  // namespace rnnfast
