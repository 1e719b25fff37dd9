// Per-call limits of the CUDA kernels (and exp_grad_step_'s flag bits), as plain integer
// constants: the device code sizes its
// fixed argument arrays by them, csrc/cuda_limits.h gives them to the host code, and the
// NVRTC backend (gaea_ext/cupy_backend.py) reads them from this file. Torch-free and
// standard-library-free, so NVRTC compiles it (see docs/kernels.md).
#pragma once

namespace gaea_kernels {

constexpr int kMaxMixedTerms = 64;
constexpr int kMaxMixedSources = 16;
constexpr int kMaxPartialChannelStates = 16;
constexpr int kMaxExpGradSegments = 64;
constexpr int kMaxInputsPerLaunch = 64;
constexpr int kMaxExpGradParamsPerLaunch = 40;
constexpr int kDotRowBytes = 64;

// Bits of the flag exp_grad_step_ returns.
constexpr int kNonFiniteGrad = 1;
constexpr int kInvalidParam = 2;

}  // namespace gaea_kernels
