// The term kinds of mixed_node (also pool_stats' kind) as the device code sees them: the values
// of gaea_ext::MixedKind (csrc/gaea_ext.h), which the nvcc launchers static_assert equal.
// Torch-free device code (see docs/kernels.md).
#pragma once

namespace gaea_kernels {

constexpr int kNone = 0;
constexpr int kSkip = 1;
constexpr int kAvgPool = 2;
constexpr int kMaxPool = 3;
constexpr int kTensor = 4;
constexpr int kAvgPoolBN = 5;
constexpr int kMaxPoolBN = 6;
constexpr int kOnes = 7;
constexpr int kTensorBN = 8;

__device__ __forceinline__ bool is_avg_kind(int kind) { return kind == kAvgPool || kind == kAvgPoolBN; }
// Kinds whose term reads outputs[sources[t]] rather than xs.
__device__ __forceinline__ bool is_output_kind(int kind) { return kind == kTensor || kind == kTensorBN; }

}  // namespace gaea_kernels

// Included by a launcher (after csrc/gaea_ext.h): the kinds must agree with gaea_ext::MixedKind.
#define GAEA_KERNELS_CHECK_TERM_KINDS()                                                                     \
  static_assert(gaea_kernels::kNone == gaea_ext::kNone && gaea_kernels::kSkip == gaea_ext::kSkip &&          \
                    gaea_kernels::kAvgPool == gaea_ext::kAvgPool && gaea_kernels::kMaxPool == gaea_ext::kMaxPool && \
                    gaea_kernels::kTensor == gaea_ext::kTensor && gaea_kernels::kAvgPoolBN == gaea_ext::kAvgPoolBN && \
                    gaea_kernels::kMaxPoolBN == gaea_ext::kMaxPoolBN && gaea_kernels::kOnes == gaea_ext::kOnes && \
                    gaea_kernels::kTensorBN == gaea_ext::kTensorBN,                                          \
                "csrc/kernels/term_kinds.cuh must hold the values of gaea_ext::MixedKind")
