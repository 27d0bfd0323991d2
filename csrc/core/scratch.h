// Reuse of the large scratch buffers a CPU call allocates and frees again: the packed W_hh
// (MKL's cblas_sgemm_pack_get_size asks for the packed weight plus about 7.5 MB whatever the
// size: 7.9 MB for a 256 x 64 W_hh), the forward's input-projection buffer (up to 8 MiB) and the
// backward's gate gradients dG (T, B, G*H) and the weight-gradient operands.
//
// Why: freed, such blocks go back to glibc, which returns the top of its heap to the kernel once
// the free space there passes its trim threshold (dynamic: twice the largest block it ever
// unmapped), and unmaps a block above its mmap threshold. The next call faults every page it
// touches in again. Measured (1 thread, one process calling in a loop): LSTM H64 B32 T200 forward
// about 1,000 page faults per call, 6.6 ms against 4.5 ms without them; GRU H64 B32 T200
// forward+backward ~590 faults per call; the same points in a process with another allocation
// history: none. torch.nn: 0-20 per call.
//
// What: one process-wide pool of up to kSlots CPU buffers holding at most kMaxTotalBytes, each
// kept after use and lent again to a later request that fits. A buffer is free when nothing but
// the pool holds its storage: a request gets a view of it, and the loan lasts as long as any view
// of it lives (so a buffer that reached a caller is never handed out again while it is held).
// Requests below kMinBytes (the call's arena, below, takes those in a CPU op) or above kMaxBytes,
// on another device, or finding no slot, get a fresh at::empty. Every user writes its buffer before reading it, so
// results do not depend on what an earlier call left there.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <mutex>

namespace rnnfast {
namespace core {

class ScratchPool {
 public:
  static constexpr int kSlots = 8;
  static constexpr int64_t kMinBytes = int64_t(256) << 10, kMaxBytes = int64_t(32) << 20;
  static constexpr int64_t kMaxTotalBytes = int64_t(64) << 20;

  static ScratchPool& instance() {
    static ScratchPool* pool = new ScratchPool();  // never destroyed: no teardown-order questions
    return *pool;
  }

  // A 1-D tensor of `numel` elements of `opts`, uninitialized.
  at::Tensor take(int64_t numel, const at::TensorOptions& opts) {
    const int64_t bytes = numel * int64_t(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
    if (bytes < kMinBytes || bytes > kMaxBytes || opts.device().type() != c10::DeviceType::CPU) {
      return at::empty({numel}, opts);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    int spare = -1;  // an empty slot, else a free one that is too small (or of another dtype)
    for (int i = 0; i < kSlots; ++i) {
      const at::Tensor& s = slots_[i];
      if (!s.defined()) {
        if (spare < 0 || slots_[spare].defined()) spare = i;
      } else if (s.storage().use_count() == 1) {
        if (s.dtype() == opts.dtype() && s.numel() >= numel) return s.narrow(0, 0, numel);
        if (spare < 0) spare = i;
      }
    }
    if (spare < 0) return at::empty({numel}, opts);  // every slot on loan
    const int64_t old = slots_[spare].defined() ? int64_t(slots_[spare].nbytes()) : 0;
    if (retained_bytes() - old + bytes > kMaxTotalBytes) return at::empty({numel}, opts);
    slots_[spare] = at::Tensor();  // the old block goes back before the new one is allocated
    slots_[spare] = at::empty({numel}, opts);
    return slots_[spare].narrow(0, 0, numel);
  }

 private:
  int64_t retained_bytes() const {
    int64_t total = 0;
    for (const at::Tensor& s : slots_) total += s.defined() ? int64_t(s.nbytes()) : 0;
    return total;
  }

  std::mutex mutex_;
  std::array<at::Tensor, kSlots> slots_;
};

// The small scratch of one CPU op call without an allocation: this thread's arena, a block of
// kBytes allocated on first use and kept for the thread's life, lent out in pieces by a bump
// pointer while a Scope is open. The CPU ops open one for each call (CpuFamily::Guard); when it
// closes, everything taken under it is given back at once, so a piece and any tensor over it must
// never outlive the call (nothing taken here is ever returned to the caller). Scopes nest: a call
// under another's scope takes after the pieces of the outer one.
//
// Why: a small call's few buffers each cost an at::empty, ~0.2 us (a dispatcher call, three
// mallocs and their frees), against a few us for the whole call (RNN H = 64, B = 1, T = 1). No
// scope is open on other threads or for other devices' ops, and take() then answers nullptr.
class CallArena {
 public:
  static constexpr size_t kBytes = size_t(256) << 10;
  static constexpr size_t kAlign = 64;

  class Scope {
   public:
    Scope() : saved_(state().used) { ++state().depth; }
    ~Scope() {
      State& s = state();
      s.used = saved_;
      --s.depth;
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    size_t saved_;
  };

  // `bytes` of this thread's arena, 64-byte aligned and uninitialized, until the innermost open
  // scope closes; nullptr where no scope is open on this thread or the arena has no room left.
  static void* take(size_t bytes) {
    State& s = state();
    if (s.depth == 0) return nullptr;
    const size_t start = (s.used + kAlign - 1) / kAlign * kAlign;
    if (bytes > kBytes || start > kBytes - bytes) return nullptr;
    if (!s.block && !(s.block = static_cast<char*>(std::aligned_alloc(kAlign, kBytes)))) return nullptr;
    s.used = start + bytes;
    return s.block + start;
  }

 private:
  struct State {
    char* block = nullptr;
    size_t used = 0;
    int depth = 0;
    ~State() { std::free(block); }
  };
  static State& state() {
    thread_local State s;
    return s;
  }
};

// `numel` uninitialized elements of `opts` used within this op call only and never returned
// (every caller writes them before reading them): below ScratchPool::kMinBytes a piece of the
// thread's CallArena where a scope is open and it has room (a CPU op's call; `owner` undefined),
// else the ScratchPool's buffer or a fresh at::empty (`owner`, which must live as long as `ptr`
// is used). The pointer form spares a small call the tensor around an arena piece.
struct ScratchBuffer {
  void* ptr;
  at::Tensor owner;
};

inline ScratchBuffer scratch_buffer(int64_t numel, const at::TensorOptions& opts) {
  const int64_t bytes = numel * int64_t(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
  if (bytes < ScratchPool::kMinBytes && opts.device().is_cpu()) {
    if (void* piece = CallArena::take(static_cast<size_t>(bytes))) return {piece, at::Tensor()};
  }
  at::Tensor t = ScratchPool::instance().take(numel, opts);
  return {t.data_ptr(), std::move(t)};
}

// The same as a contiguous tensor of `sizes`.
inline at::Tensor scratch_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  ScratchBuffer b = scratch_buffer(numel, opts);
  return b.owner.defined() ? b.owner.view(sizes) : at::from_blob(b.ptr, sizes, opts);
}

}  // namespace core
}  // namespace rnnfast
