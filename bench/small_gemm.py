"""The small-batch GEMM against MKL: the measurements behind csrc/cpu/blas.h's `takes_small` (which
rows gemm_small takes) and `worth_packing_over_small` (when packing W_hh repays against it).

For a (N, K) weight W and M rows of A, C = A Wᵀ, times (median µs of 7 runs of a loop, 1 thread
unless --threads), all in one C++ loop (torch.utils.cpp_extension.load_inline compiling blas.h
itself, ~1 minute the first time), so no Python or dispatcher cost is in the numbers:
  small    gemm_small (W unpacked, read in place)
  mm       at::mm_out (MKL; copies W on every call from 2 rows)
  pack     RecurrentGemm's MKL pack of Wᵀ for M rows (once per layer call when it packs)
  packed   one step on the packed weight (cblas_sgemm_compute)
and the break-even step count pack / (small - packed) ('inf': packing never repays). Every small
result is also checked bit for bit against at::mm's within 1e-4 (it sums in another order).

    python3 bench/small_gemm.py [--threads 1] [--shapes 1024x256 2048x512] [--m 4 8 16 32 64]

Not a pytest-benchmark suite: it times kernels, not implementations of the library's ops; the
suites in bench/ time those.
"""
import argparse
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC_CPU = os.path.join(os.path.dirname(HERE), "csrc", "cpu")

SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <chrono>
#include <vector>
#include "blas.h"
using rnnfast::cpu::RecurrentGemm;

template <class F>
double median_us(F f, int64_t iters) {
  for (int i = 0; i < 2; ++i) f();
  std::vector<double> v;
  for (int r = 0; r < 7; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iters; ++i) f();
    v.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters);
  }
  std::sort(v.begin(), v.end());
  return v[3];
}

// {small, mm, pack, packed} in us for C (M, N) = A (M, K) W^T; pack and packed are -1 without MKL's packed API
std::vector<double> bench(int64_t M, int64_t N, int64_t K, int64_t iters) {
  at::InferenceMode guard;
  at::Tensor a = at::randn({M, K}), w = at::randn({N, K}), c = at::empty({M, N}), ref = at::empty({M, N});
  const float* W = w.const_data_ptr<float>();
  const float* A = a.const_data_ptr<float>();
  auto small = [&] { rnnfast::cpu::gemm_small(W, K, A, K, c.data_ptr<float>(), N, M, N, K, false); };
  small();
  at::mm_out(ref, a, w.t());
  TORCH_CHECK(at::allclose(c, ref, 1e-4, 1e-4), "gemm_small differs from at::mm");
  const double t_small = median_us(small, iters);
  const double t_mm = median_us([&] { at::mm_out(c, a, w.t()); }, iters);
  double t_pack = -1, t_packed = -1;
  if (rnnfast::cpu::mkl::api().ok()) {
    t_pack = median_us([&] { RecurrentGemm r(w, true, M, RecurrentGemm::kUnknownSteps); }, iters);
    RecurrentGemm r(w, true, M, RecurrentGemm::kUnknownSteps);
    t_packed = median_us([&] { r.run_rows(A, K, c.data_ptr<float>(), N, M, false); }, iters);
  }
  return {t_small, t_mm, t_pack, t_packed};
}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", nargs="+", default=["256x64", "768x256", "1024x256", "2048x512", "4096x1024"],
                    help="weights N x K (N = gates * H, K = H)")
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    args = ap.parse_args()
    from torch.utils.cpp_extension import load_inline
    mod = load_inline("rnnfast_bench_small_gemm", cpp_sources=[SOURCE], functions=["bench"],
                      extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                      extra_include_paths=[CSRC_CPU])
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), torch {torch.__version__}")
    print("| W (N x K) | M | gemm_small µs | MKL mm µs | pack µs | packed step µs | break-even steps |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        N, K = (int(v) for v in shape.split("x"))
        if K % 16:
            print(f"| {shape} | - | K must be a multiple of 16 for gemm_small | | | | |")
            continue
        for M in args.m:
            iters = max(5, int(2e7 / (M * N * K)))
            small, mm, pack, packed = mod.bench(M, N, K, iters)
            if pack < 0:
                print(f"| {shape} | {M} | {small:.1f} | {mm:.1f} | no MKL packed API | | |")
                continue
            even = pack / (small - packed) if small > packed else float("inf")
            print(f"| {shape} | {M} | {small:.1f} | {mm:.1f} | {pack:.1f} | {packed:.1f} | {even:.1f} |", flush=True)


if __name__ == "__main__":
    main()
