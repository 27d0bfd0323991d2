// Whether this build can compile code for a wider x86 ISA than its baseline inside one binary:
// gcc's `target_clones` (blas.h gemm_small_rows, backend.h's row passes) and `#pragma GCC target`
// (rows_avx512.cpp). x86-64 with GCC; clang spells these differently. No code here, so any file may
// include it before switching its target.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNFAST_GCC_X86 1
#else
#define RNNFAST_GCC_X86 0
#endif
