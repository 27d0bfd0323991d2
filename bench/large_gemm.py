"""The large GEMMs of a layer against MKL: the measurements behind csrc/cpu/blas.h's blocked_gemm
(which GEMMs rnnfast's cache-blocked AVX2 kernel, csrc/cpu/gemm_blocked_avx2.cpp, takes from MKL).

For each shape, C (m, n) = op(A) (m, k) op(B) (k, n) through blas.h's blas_gemm, with the AVX2
kernels on (the blocked GEMM where blocked_gemm takes the shape) and off (MKL's sgemm), times the
median µs of 7 runs of a loop, all in one C++ loop (torch.utils.cpp_extension.load compiling blas.h
and the GEMM sources, ~1 minute the first time), alternating the two so that a noisy machine
weighs on both; GMAC/s and the ratio MKL / blocked (> 1: the blocked kernel is faster). Every result
is also checked against at::mm's within 1e-3 relative (they sum in other orders).

The shapes are a layer's (LSTM, 4 gates, H = I): 'wgrad' dGᵀ [X | H | 1 | pad] (m = 4H,
n = 2H + 16, k = T*B, op(A) = Aᵀ), 'dx' dG W_ih (m = T*B, n = H, k = 4H), 'proj' X W_ihᵀ (m = T*B,
n = 4H, k = H, op(B) = Bᵀ), and 'step' one step's rows against W_hhᵀ (m = B).

    python3 bench/large_gemm.py [--threads 1] [--H 256 512 1024] [--rows 1120 6400 25600]

Not a pytest-benchmark suite (it times kernels, not ops); runs only on x86 with AVX2 and FMA.
"""
import argparse
import os
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC_CPU = os.path.join(os.path.dirname(HERE), "csrc", "cpu")

SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <chrono>
#include <vector>
#include "blas.h"

// {MKL us, blocked us} for C (m, n) = op(A) op(B); the blocked one -1 where blocked_gemm declines
std::vector<double> bench(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t iters) {
  at::InferenceMode guard;
  at::Tensor a = ta ? at::randn({k, m}) : at::randn({m, k}), b = tb ? at::randn({n, k}) : at::randn({k, n});
  at::Tensor c = at::empty({m, n});
  const at::Tensor ref = at::mm(ta ? a.t() : a, tb ? b.t() : b);
  auto run = [&] {
    TORCH_CHECK(rnnfast::cpu::blas_gemm<float>(ta, tb, m, n, k, a.const_data_ptr<float>(), a.size(1),
                                              b.const_data_ptr<float>(), b.size(1), 0.f, c.data_ptr<float>(), n));
  };
  const bool on = rnnfast::cpu::set_batch_lanes(true);
  const bool blocked = on && !rnnfast::cpu::lanes_avx512() && m >= rnnfast::cpu::kBlockedMinRows &&
                       m * n * k >= rnnfast::cpu::kBlockedMinMacs;
  std::vector<double> t[2];
  for (int r = 0; r < 7; ++r) {
    for (int side = 0; side < (blocked ? 2 : 1); ++side) {
      rnnfast::cpu::set_batch_lanes(side == 1);
      run();
      TORCH_CHECK(at::allclose(c, ref, 1e-3, 1e-3), side ? "the blocked GEMM" : "MKL", " differs from at::mm");
      auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < iters; ++i) run();
      t[side].push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters);
    }
  }
  rnnfast::cpu::set_batch_lanes(on);
  auto median = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v.empty() ? -1.0 : v[v.size() / 2]; };
  return {median(t[0]), median(t[1])};
}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--H", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--rows", type=int, nargs="+", default=[1120, 6400], help="T * B")
    ap.add_argument("--step-rows", type=int, nargs="+", default=[16, 32, 128], help="B of a step")
    args = ap.parse_args()
    from torch.utils.cpp_extension import load
    main_cpp = os.path.join(tempfile.mkdtemp(prefix="rnnfast_large_gemm_"), "large_gemm.cpp")
    with open(main_cpp, "w") as f:
        f.write(SOURCE + '\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("bench", &bench); }\n')
    sources = ["isa.cpp", "gemm_lanes.cpp", "gemm_avx512.cpp", "gemm_avx2.cpp", "gemm_blocked_avx2.cpp"]
    mod = load("rnnfast_bench_large_gemm", [main_cpp] + [os.path.join(CSRC_CPU, n) for n in sources],
               extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], extra_include_paths=[CSRC_CPU])
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), torch {torch.__version__}")
    print("| GEMM | H | m x n x k | MKL µs | blocked µs | MKL GMAC/s | blocked GMAC/s | MKL / blocked |")
    print("|---|---|---|---|---|---|---|---|")
    for H in args.H:
        cases = []
        for rows in args.rows:
            cases += [("wgrad", True, False, 4 * H, 2 * H + 16, rows), ("dx", False, False, rows, H, 4 * H),
                      ("proj", False, True, rows, 4 * H, H)]
        cases += [("step", False, True, B, 4 * H, H) for B in args.step_rows]
        for name, ta, tb, m, n, k in cases:
            iters = max(3, int(4e8 / (m * n * k)))
            mkl, blocked = mod.bench(ta, tb, m, n, k, iters)
            g = lambda t: f"{m * n * k / t / 1e3:.1f}" if t > 0 else "-"  # noqa: E731
            ratio = f"{mkl / blocked:.2f}x" if blocked > 0 else "-"
            shown = f"{blocked:.0f}" if blocked > 0 else "-"
            print(f"| {name} | {H} | {m} x {n} x {k} | {mkl:.0f} | {shown} | {g(mkl)} | {g(blocked)} | {ratio} |",
                  flush=True)


if __name__ == "__main__":
    main()
