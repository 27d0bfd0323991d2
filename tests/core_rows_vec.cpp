// Test helper, not part of the package: every cell's CPU row pass (csrc/cpu/rows.h over
// csrc/core/cells.h), one function per line below, compiled for AVX2 so that
// tests/test_core_cells.py can check from GCC's -fopt-info that each one's loop over H vectorizes.
#include "csrc/cpu/rows.h"
using namespace rnnfast;
using namespace rnnfast::cpu;
#define ROW __attribute__((target("avx2,fma")))
// Not listed: relu's backward and the float64 LSTM passes, which GCC leaves scalar (as it did the
// per-cell loops before csrc/core; checked with this file's recipe on the old csrc/cpu/cells.h).
// ---- one row pass per line from here (the test reads the line numbers) ----
ROW void f_rnn_tanh(const FwdRow<float>& r, int64_t H) { forward_row<core::RnnTanhCell, 0>(r, H); }
ROW void b_rnn_tanh(const BwdRow<float>& r, int64_t H) { backward_row<core::RnnTanhCell, 0>(r, H); }
ROW void f_rnn_relu(const FwdRow<float>& r, int64_t H) { forward_row<core::RnnReluCell, 0>(r, H); }
ROW void f_gru(const FwdRow<float>& r, int64_t H) { forward_row<core::GruCell, 0>(r, H); }
ROW void b_gru(const BwdRow<float>& r, int64_t H) { backward_row<core::GruCell, 0>(r, H); }
ROW void f0_gru_rb(const FwdRow<float>& r, int64_t H) { forward_row<core::GruResetBeforeCell, 0>(r, H); }
ROW void f1_gru_rb(const FwdRow<float>& r, int64_t H) { forward_row<core::GruResetBeforeCell, 1>(r, H); }
ROW void b0_gru_rb(const BwdRow<float>& r, int64_t H) { backward_row<core::GruResetBeforeCell, 0>(r, H); }
ROW void b1_gru_rb(const BwdRow<float>& r, int64_t H) { backward_row<core::GruResetBeforeCell, 1>(r, H); }
ROW void f_lstm(const FwdRow<float>& r, int64_t H) { forward_row<core::LstmCell, 0>(r, H); }
ROW void b_lstm(const BwdRow<float>& r, int64_t H) { backward_row<core::LstmCell, 0>(r, H); }
