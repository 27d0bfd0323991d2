// Where a step of the recurrence finds its inputs, shared by every backend's host loop: the time
// index of a walking step, and h_{t-1} / c_{t-1} of that step. Framework-free (raw pointers).
#pragma once
#include <cstdint>

namespace rnnfast {
namespace core {

// Time index of walking step s (a reverse layer walks t = T-1 .. 0).
inline int64_t time_of(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// h_{t-1} and c_{t-1} of walking step s: hx / cx at the first step, else the previous step's output
// rows and the state slot of its workspace rows. Pointers to batch row 0; rows are h_ld (h) and
// c_ld(s) (c) apart.
template <typename T_>
struct PrevState {
  const T_* out;    // output (T, B, h_ld)
  const T_* hx;     // (B, h_ld)
  const T_* ws;     // workspace (T, B, ws_ld)
  const T_* cx;     // (B, H); cells with a cell state only
  int64_t T, B, H, h_ld, ws_ld;
  int state_slot;   // CellTraits::state_slot (-1: no cell state)
  bool reverse;
  int64_t ws_period;  // time rows the workspace holds: T, or 2 (1 at T = 1) for an inference
                      // forward that keeps only the rows the next step reads (loop.h)

  // The workspace row of time t: t itself, or t mod 2 (t and t +- 1 never share a row).
  int64_t ws_row(int64_t t) const { return t % ws_period; }

  const T_* h(int64_t s) const { return s ? out + time_of(s - 1, T, reverse) * B * h_ld : hx; }
  const T_* c(int64_t s) const {
    if (state_slot < 0) return nullptr;
    return s ? ws + ws_row(time_of(s - 1, T, reverse)) * B * ws_ld + state_slot * H : cx;
  }
  int64_t c_ld(int64_t s) const { return s ? ws_ld : H; }
};

}  // namespace core
}  // namespace rnnfast
