"""The small-batch GEMMs against MKL: the measurements behind csrc/cpu/blas.h's `takes_small` and
`takes_lanes` (which rows gemm_small and the batch-lane GEMM take), `worth_packing_over_small` (when
packing W_hh repays against them) and `panels_ok` (where the panel GEMM replaces MKL's packed one).

For a (N, K) weight W and M rows of A, C = A Wᵀ, times (median µs of 7 runs of a loop, 1 thread
unless --threads), all in one C++ loop (torch.utils.cpp_extension.load compiling blas.h and the
AVX-512 and AVX2 GEMMs, csrc/cpu/gemm_avx512.cpp and gemm_avx2.cpp, themselves, ~1 minute the first time), so no Python or
dispatcher cost is in the numbers:
  small    gemm_small (W unpacked, read in place)
  lanes    the batch-lane GEMM (A packed per call, W read in place; AVX-512F or AVX2 with FMA, else '-')
  mm       at::mm_out (MKL; copies W on every call from 2 rows)
  pack     MKL's pack of Wᵀ for M rows (once per layer call when it packs; the AVX-512 GEMMs off)
  packed   one step on MKL's packed weight (cblas_sgemm_compute)
  p.pack   the panel GEMM's pack of Wᵀ (AVX-512F or AVX2 with FMA, else '-'; RecurrentGemm uses it where panels_ok)
  p.step   one step of the panel GEMM
and the break-even step count pack / (small - packed) ('inf': packing never repays). Every result
is also checked against at::mm's within 1e-4 (they sum in other orders).

    python3 bench/small_gemm.py [--threads 1] [--shapes 1024x256 2048x512] [--m 4 8 16 32 64]

Not a pytest-benchmark suite: it times kernels, not implementations of the library's ops; the
suites in bench/ time those.
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

// {small, lanes, mm, pack, packed, panel pack, panel step} in us for C (M, N) = A (M, K) W^T; -1 where a
// kernel does not run here
std::vector<double> bench(int64_t M, int64_t N, int64_t K, int64_t iters) {
  at::InferenceMode guard;
  at::Tensor a = at::randn({M, K}), w = at::randn({N, K}), c = at::empty({M, N}), ref = at::empty({M, N});
  const float* W = w.const_data_ptr<float>();
  const float* A = a.const_data_ptr<float>();
  at::mm_out(ref, a, w.t());
  auto check = [&](const char* what) { TORCH_CHECK(at::allclose(c, ref, 1e-4, 1e-4), what, " differs from at::mm"); };
  auto small = [&] { rnnfast::cpu::gemm_small(W, K, A, K, c.data_ptr<float>(), N, M, N, K, false); };
  small();
  check("gemm_small");
  const double t_small = median_us(small, iters);
  const bool avx512 = rnnfast::cpu::set_batch_lanes(true);  // the previous setting: on where the CPU has it
  double t_lanes = -1;
  if (avx512) {
    auto lanes = [&] { rnnfast::cpu::gemm_lanes(W, K, A, K, c.data_ptr<float>(), N, M, N, K, false); };
    lanes();
    check("the batch-lane GEMM");
    t_lanes = median_us(lanes, iters);
  }
  const double t_mm = median_us([&] { at::mm_out(c, a, w.t()); }, iters);
  double t_pack = -1, t_packed = -1, t_ppack = -1, t_pstep = -1;
  rnnfast::cpu::set_batch_lanes(false);  // RecurrentGemm packs with MKL
  if (rnnfast::cpu::mkl::api().ok()) {
    t_pack = median_us([&] { RecurrentGemm r(w, true, M, RecurrentGemm::kUnknownSteps); }, iters);
    RecurrentGemm r(w, true, M, RecurrentGemm::kUnknownSteps);
    r.run_rows(A, K, c.data_ptr<float>(), N, M, false);
    check("MKL's packed GEMM");
    t_packed = median_us([&] { r.run_rows(A, K, c.data_ptr<float>(), N, M, false); }, iters);
  }
  if (avx512) {  // the panel GEMM's own pack and step, whether or not RecurrentGemm takes it here (panels_ok)
    const int64_t floats = rnnfast::cpu::panels_pack_floats(N, K);
    at::Tensor buf = at::empty({floats + 16});
    float* wp = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(buf.data_ptr<float>()) + 63) / 64 * 64);
    t_ppack = median_us([&] { rnnfast::cpu::panels_pack(W, K, N, K, true, wp); }, iters);
    rnnfast::cpu::panels_gemm(A, K, wp, K, c.data_ptr<float>(), N, M, 0, N, false);
    check("the panel GEMM");
    t_pstep = median_us([&] { rnnfast::cpu::panels_gemm(A, K, wp, K, c.data_ptr<float>(), N, M, 0, N, false); }, iters);
  }
  rnnfast::cpu::set_batch_lanes(avx512);
  return {t_small, t_lanes, t_mm, t_pack, t_packed, t_ppack, t_pstep};
}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", nargs="+", default=["256x64", "768x256", "1024x256", "2048x512", "4096x1024"],
                    help="weights N x K (N = gates * H, K = H)")
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    args = ap.parse_args()
    from torch.utils.cpp_extension import load
    main_cpp = os.path.join(tempfile.mkdtemp(prefix="rnnfast_small_gemm_"), "small_gemm.cpp")
    with open(main_cpp, "w") as f:
        f.write(SOURCE + '\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("bench", &bench); }\n')
    mod = load("rnnfast_bench_small_gemm", [main_cpp] + [os.path.join(CSRC_CPU, n) for n in ("isa.cpp", "gemm_lanes.cpp", "gemm_avx512.cpp", "gemm_avx2.cpp", "gemm_blocked_avx2.cpp")],
               extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], extra_include_paths=[CSRC_CPU])
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), torch {torch.__version__}")
    print("| W (N x K) | M | gemm_small µs | lanes µs | MKL mm µs | pack µs | packed step µs | break-even steps "
          "| panel pack µs | panel step µs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda t: "-" if t < 0 else f"{t:.1f}"  # noqa: E731
    for shape in args.shapes:
        N, K = (int(v) for v in shape.split("x"))
        for M in args.m:
            iters = max(5, int(2e7 / (M * N * K)))
            small, lanes, mm, pack, packed, ppack, pstep = mod.bench(M, N, K, iters)
            even = "-" if pack < 0 else (f"{pack / (small - packed):.1f}" if small > packed else "inf")
            print(f"| {shape} | {M} | {small:.1f} | {fmt(lanes)} | {mm:.1f} | {fmt(pack)} | {fmt(packed)} | {even} "
                  f"| {fmt(ppack)} | {fmt(pstep)} |", flush=True)


if __name__ == "__main__":
    main()
