"""GEMM-only lower bound of one recurrent layer's forward+backward on this CPU.

Every backend (rnnfast, torch.nn, the scratch reference) must do the same three GEMMs of H x G*H
per step: the forward h_{t-1} W_hhᵀ, the backward dG_t W_hh, and dW_hh = dGᵀ H_prev (one GEMM
over all T*B rows). This script times exactly those, at their best on this machine, with torch's
MKL, and nothing else: the per-step GEMMs with W_hh packed once (cblas_sgemm_pack/compute, as
csrc/cpu/blas.h does), dW_hh with torch.mm. No pointwise math, no input projection, no copies.

The sum is a floor for any implementation built on MKL's sgemm; `floor / measured` says how much
of the layer is GEMM, and `scratch / floor` is the largest speed-up over the scratch reference
that sgemm leaves room for. The GFLOP/s column is the floor's rate: compare it with the machine's
FMA peak (AVX-512: 2 FMA units x 16 floats x 2 flops per cycle per core) to see how much a faster
GEMM could still gain. Run: python3 bench/gemm_floor.py [--threads N]
"""
import argparse
import ctypes
import functools
import os
import time

import torch

from _common import SIZES
from rnnfast.functional import GATES

_RowMajor, _NoTrans, _Trans, _Packed, _BMatrix = 101, 111, 112, 151, 162


@functools.lru_cache(maxsize=None)
def _mkl():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    try:
        get_size, pack, compute = lib.cblas_sgemm_pack_get_size, lib.cblas_sgemm_pack, lib.cblas_sgemm_compute
    except AttributeError:
        raise SystemExit("this torch build exports no MKL packed GEMM (cblas_sgemm_pack); nothing to measure")
    get_size.restype = ctypes.c_size_t
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    pack.argtypes = [i] * 6 + [f, p, i, p]
    compute.argtypes = [i] * 6 + [p, i, p, i, f, p, i]
    return get_size, pack, compute


def _time(fn, seconds=0.5):
    for _ in range(5):
        fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def packed_step(M, N, K, transpose):
    """Median seconds of C (M, N) = A (M, K) · op(W), W packed once; op(W) = Wᵀ if transpose."""
    get_size, pack, compute = _mkl()
    w = torch.randn(N, K) if transpose else torch.randn(K, N)
    buf = torch.empty(get_size(_BMatrix, M, N, K) // 4 + 16)
    pack(_RowMajor, _BMatrix, _Trans if transpose else _NoTrans, M, N, K, 1.0, w.data_ptr(), w.size(1),
         buf.data_ptr())
    a, c = torch.randn(M, K), torch.empty(M, N)
    return _time(lambda: compute(_RowMajor, _NoTrans, _Packed, M, N, K, a.data_ptr(), K, buf.data_ptr(), N, 0.0,
                                 c.data_ptr(), N))


def floor_ms(cell, B, T, H):
    GH = GATES[cell] * H
    fwd = T * packed_step(B, GH, H, transpose=True)      # h_{t-1} W_hhᵀ per step
    bwd = T * packed_step(B, H, GH, transpose=False)     # dG_t W_hh per step
    dG, hprev = torch.randn(T * B, GH), torch.randn(T * B, H)
    dw = _time(lambda: torch.mm(dG.t(), hprev))           # dW_hh over all steps
    return 1e3 * fwd, 1e3 * bwd, 1e3 * dw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--sizes", default="d2l-256,d2l-512")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; GEMM-only floor of one layer's forward+backward")
    print(f"{'cell':8} {'size':9} {'fwd':>7} {'bwd':>7} {'dW_hh':>7} {'floor ms':>9} {'GFLOP/s':>8}")
    for size in args.sizes.split(","):
        s = SIZES[size]
        for cell in ("gru", "lstm"):
            f, b, w = floor_ms(cell, s["B"], s["T"], s["H"])
            flops = 3 * 2 * s["T"] * s["B"] * GATES[cell] * s["H"] * s["H"]  # three GEMMs of T*B x G*H x H
            print(f"{cell:8} {size:9} {f:7.2f} {b:7.2f} {w:7.2f} {f + b + w:9.2f} {flops / (f + b + w) / 1e6:8.0f}")


if __name__ == "__main__":
    main()
