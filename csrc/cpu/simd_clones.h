// GAEA_SIMD_CLONES compiles a hot loop twice (AVX2 and baseline x86-64) and picks one at
// load time, so one binary runs everywhere yet uses 256-bit vectors where it can. (Not
// "arch=haswell": that clone also demands RDRND, which some cloud vCPUs hide.)
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GAEA_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GAEA_SIMD_CLONES
#endif
