// Per-call limits of the CUDA kernels, for the host code; the values are defined in
// kernels/limits.cuh (read by the device code and the NVRTC backend too). The kernels size their
// fixed argument arrays by them; gaea_ext._C.cuda_limits() hands them to Python, where one
// function (gaea_ext._backend.use_reference) sends a call beyond a limit to the reference;
// the tests build their cases just past them.
#pragma once

#include <cstdint>

#include "kernels/limits.cuh"

namespace gaea_ext {

// mixed_node: terms and xs of one call (a DARTS node has at most 5 x 8 terms). Above either,
// the call goes to the reference.
constexpr int64_t kMaxMixedTerms = gaea_kernels::kMaxMixedTerms;
constexpr int64_t kMaxMixedSources = gaea_kernels::kMaxMixedSources;
// partial_channel_node: states of one call. Above it, the call goes to the reference.
constexpr int64_t kMaxPartialChannelStates = gaea_kernels::kMaxPartialChannelStates;
// exp_grad_step_: segments of one param. Above it, the call goes to the reference.
constexpr int64_t kMaxExpGradSegments = gaea_kernels::kMaxExpGradSegments;

// Batching inside one call (no limit on the call): weighted_sum mixes this many inputs per
// launch (larger K takes several launches); exp_grad_step_ steps this many params per launch
// (more take further launches; 72 bytes of launch arguments each, under the 4 KB limit).
constexpr int64_t kMaxInputsPerLaunch = gaea_kernels::kMaxInputsPerLaunch;
constexpr int64_t kMaxExpGradParamsPerLaunch = gaea_kernels::kMaxExpGradParamsPerLaunch;
// mixed_node backward: the bytes of dot products (weight gradients, BN-term sums) one row of
// blocks keeps in registers, i.e. 16 float or 8 double sums per row.
constexpr int64_t kDotRowBytes = gaea_kernels::kDotRowBytes;

}  // namespace gaea_ext
