"""When does packing W_hh repay? The measurement behind csrc/cpu/blas.h's worth_packing.

For a (G*H, H) recurrent weight and m rows per step, times (median µs, 1 thread unless --threads):
  pack     cblas_sgemm_pack of Wᵀ for m rows (what RecurrentGemm's constructor pays once per call)
  compute  one packed step, cblas_sgemm_compute (m, G*H) = (m, H) · packed Wᵀ
  mm       one unpacked step, torch.mm (what the host loop runs without packing)
and the break-even step count pack / (mm - compute) ('inf' when packing never repays).

    python3 bench/pack_breakeven.py [--threads 1] [--H 64 256 512 1024] [--m 1 2 4 8 32 128]

MKL's packed API is looked up in libtorch_cpu as the extension does (blas.h); a torch without MKL
has none and this script says so.
"""
import argparse
import time

import torch

# torch's MKL packed-GEMM entry points and their CBLAS constants, as bench/gemm_floor.py loads them
from gemm_floor import _BMatrix as B_MATRIX, _mkl as load_mkl, _NoTrans as NO_TRANS  # noqa: E402
from gemm_floor import _Packed as PACKED, _RowMajor as ROW_MAJOR, _Trans as TRANS  # noqa: E402


def median_us(fn, n=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gates", type=int, nargs="+", default=[1, 3, 4])
    ap.add_argument("--H", type=int, nargs="+", default=[64, 256, 512, 1024])
    ap.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 128])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    get_size, pack, compute = load_mkl()
    print("| G | H | m | pack µs | packed step µs | mm step µs | break-even steps |")
    print("|---|---|---|---|---|---|---|")
    for G in args.gates:
        for H in args.H:
            for m in args.m:
                N, K = G * H, H
                w = torch.randn(N, K)
                buf = torch.empty(get_size(B_MATRIX, m, N, K) // 4 + 16)
                x, c = torch.randn(m, K), torch.empty(m, N)
                t_pack = median_us(lambda: pack(ROW_MAJOR, B_MATRIX, TRANS, m, N, K, 1.0, w.data_ptr(), K,
                                                buf.data_ptr()))
                t_compute = median_us(lambda: compute(ROW_MAJOR, NO_TRANS, PACKED, m, N, K, x.data_ptr(), K,
                                                      buf.data_ptr(), N, 0.0, c.data_ptr(), N))
                torch.testing.assert_close(c, x @ w.t(), rtol=1e-4, atol=1e-4)  # the packed result is right
                t_mm = median_us(lambda: torch.mm(x, w.t(), out=c))
                saving = t_mm - t_compute
                even = f"{t_pack / saving:.1f}" if saving > 0 else "inf"
                print(f"| {G} | {H} | {m} | {t_pack:.0f} | {t_compute:.1f} | {t_mm:.1f} | {even} |")


if __name__ == "__main__":
    main()
