// Test helper, not part of the package: prints every cell's traits from csrc/core/cells.h as one
// JSON object per line, compiled with a plain C++17 compiler (no ATen, no CUDA), so that
// tests/test_core_cells.py can hold them against what the Python layer and the compiled ops allocate.
#include <cstdio>

#include "csrc/core/cells.h"
#include "csrc/core/norm_kind.h"
#include "csrc/core/sequence.h"

using namespace rnnfast::core;

template <class Cell>
void print(const char* key) {
  constexpr CellTraits t = Cell::traits;
  static_assert(traits_of(Cell::kind).slots == t.slots && traits_of(Cell::kind).gates == t.gates, "kind table");
  std::printf(
      "{\"key\": \"%s\", \"name\": \"%s\", \"gates\": %d, \"slots\": %d, \"phases\": %d, \"phase0_gates\": %d, "
      "\"gemm_slot\": %d, \"state_slot\": %d, \"inner_bias_gate\": %d, \"split_grad\": %s, \"direct_dh\": %s}\n",
      key, Cell::name, t.gates, t.slots, t.phases, t.phase0_gates, t.gemm_slot, t.state_slot, t.inner_bias_gate,
      t.split_grad ? "true" : "false", t.direct_dh ? "true" : "false");
}

int main() {
  print<RnnTanhCell>("rnn_tanh");
  print<RnnReluCell>("rnn_relu");
  print<GruCell>("gru");
  print<GruResetBeforeCell>("gru_reset_before");
  print<LstmCell>("lstm");
  return 0;
}
