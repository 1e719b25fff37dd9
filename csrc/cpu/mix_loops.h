// The loops of the weighted sums (weighted_sum, sample_weighted_sum) over flat storage cut into
// `samples` equal stretches, each with its own K weights (weighted_sum: one stretch). Each
// stretch is walked in chunks of kCpuChunk elements (L1-sized); the forward reads up to 8
// inputs per pass with the running sum in vector registers, the backward keeps the grad chunk
// in L1 and streams each input once, and the weight gradients sum per-chunk partials in chunk
// order, in double: results do not depend on the thread count.
//
// Internal linkage (unnamed namespace), as vector_loops.h.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "simd_clones.h"
#include "vector_loops.h"

namespace gaea_ext {
namespace {

// Chunks per parallel task: about 64K elements, so small tensors stay on one thread.
constexpr int64_t kChunksPerTask = 32;

// Chunks of kCpuChunk elements covering numel elements.
inline int64_t num_chunks(int64_t numel) { return (numel + kCpuChunk - 1) / kCpuChunk; }

// The data of tensors[0:count].
template <typename scalar_t>
std::vector<const scalar_t*> data_pointers(const std::vector<at::Tensor>& tensors, size_t count) {
  std::vector<const scalar_t*> ptrs(count);
  for (size_t k = 0; k < count; ++k) ptrs[k] = tensors[k].const_data_ptr<scalar_t>();
  return ptrs;
}

// The data of the needed gradients, per tensor (nullptr where none is needed).
template <typename scalar_t>
std::vector<scalar_t*> needed_pointers(NeededGrads& needed) {
  std::vector<scalar_t*> ptrs(needed.slot.size(), nullptr);
  for (size_t k = 0; k < ptrs.size(); ++k) {
    if (at::Tensor* grad = needed.of(static_cast<int64_t>(k))) ptrs[k] = grad->mutable_data_ptr<scalar_t>();
  }
  return ptrs;
}

// Inputs mixed per pass: all G streams of a group are read in one loop, as an unrolled sum
// held in vector registers, so each output element is written once per group.
constexpr int kGroup = 8;

// dst[0:n] = (kFirst ? 0 : acc[0:n]) + sum_{g<G} w[g] * ys[g][offset:offset+n], where dst is
// `out` (scalar_t) for the last group and the float chunk `acc` otherwise.
template <int G, bool kFirst, bool kLast, typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void mix_group(scalar_t* __restrict out, acc_t* __restrict acc, const scalar_t* const* ys,
                                const acc_t* w, int64_t offset, int64_t n) {
  const scalar_t* y[G];
  acc_t wg[G];
  for (int g = 0; g < G; ++g) {
    y[g] = ys[g] + offset;
    wg[g] = w[g];
  }
  for (int64_t i = 0; i < n; ++i) {
    acc_t sum = kFirst ? acc_t(0) : acc[i];
    for (int g = 0; g < G; ++g) sum += wg[g] * static_cast<acc_t>(y[g][i]);
    if constexpr (kLast) {
      out[i] = static_cast<scalar_t>(sum);
    } else {
      acc[i] = sum;
    }
  }
}

template <bool kFirst, bool kLast, typename scalar_t, typename acc_t>
void mix_group_of(int group_size, scalar_t* out, acc_t* acc, const scalar_t* const* ys, const acc_t* w,
                  int64_t offset, int64_t n) {
  switch (group_size) {
    case 1: return mix_group<1, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 2: return mix_group<2, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 3: return mix_group<3, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 4: return mix_group<4, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 5: return mix_group<5, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 6: return mix_group<6, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 7: return mix_group<7, kFirst, kLast>(out, acc, ys, w, offset, n);
    default: return mix_group<kGroup, kFirst, kLast>(out, acc, ys, w, offset, n);
  }
}

// out[offset : offset + n] = sum_k w[k] * ys[k][offset : offset + n], kGroup inputs per pass;
// with more than kGroup inputs the partial sums stay in the L1-sized float chunk `acc`.
template <typename scalar_t, typename acc_t>
void mix_chunk(scalar_t* out, acc_t* acc, const scalar_t* const* ys, const acc_t* w, int64_t num_inputs,
               int64_t offset, int64_t n) {
  for (int64_t k0 = 0; k0 < num_inputs; k0 += kGroup) {
    const int group = static_cast<int>(std::min<int64_t>(kGroup, num_inputs - k0));
    const bool first = k0 == 0;
    const bool last = k0 + kGroup >= num_inputs;
    scalar_t* dst = out + offset;
    if (first && last) mix_group_of<true, true>(group, dst, acc, ys + k0, w + k0, offset, n);
    else if (first) mix_group_of<true, false>(group, dst, acc, ys + k0, w + k0, offset, n);
    else if (last) mix_group_of<false, true>(group, dst, acc, ys + k0, w + k0, offset, n);
    else mix_group_of<false, false>(group, dst, acc, ys + k0, w + k0, offset, n);
  }
}

// The backward of one chunk [offset, offset + n) from g_chunk (grad_out there, in acc_t): for
// each k, grads[k][chunk] = w[k] * g_chunk when grads[k] is set, and partials[k] = the chunk's
// <ys[k], g> when partials is set (as dot_chunk: fixed lanes, deterministic).
template <typename scalar_t, typename acc_t>
void unmix_chunk(scalar_t* const* grads, const scalar_t* const* ys, const acc_t* g_chunk, const acc_t* w,
                 int64_t num_inputs, int64_t offset, int64_t n, acc_t* partials) {
  for (int64_t k = 0; k < num_inputs; ++k) {
    if (grads[k] != nullptr && partials != nullptr) {
      partials[k] = scale_and_dot_chunk<scalar_t, acc_t>(grads[k] + offset, ys[k] + offset, g_chunk, w[k], n);
    } else if (grads[k] != nullptr) {
      scale_chunk<scalar_t, acc_t>(grads[k] + offset, g_chunk, w[k], n);
    } else if (partials != nullptr) {
      partials[k] = dot_chunk<scalar_t, acc_t>(ys[k] + offset, g_chunk, n);
    }
  }
}

// Chunk c of a walk over `samples` stretches of `inner` elements: its stretch, [offset, offset + n).
struct StretchChunk {
  int64_t sample, offset, n;
};

inline StretchChunk stretch_chunk(int64_t c, int64_t per_sample, int64_t inner) {
  const int64_t sample = c / per_sample;
  const int64_t start = (c % per_sample) * kCpuChunk;
  return {sample, sample * inner + start, std::min(kCpuChunk, inner - start)};
}

// out[s-th stretch] = sum_k w[s * K + k] * ys[k][s-th stretch] for the `samples` stretches of
// numel / samples elements (w: [samples, K]).
template <typename scalar_t, typename acc_t>
void mix_stretches(scalar_t* out, const std::vector<const scalar_t*>& ys, const acc_t* w, int64_t samples,
                   int64_t numel) {
  const int64_t K = static_cast<int64_t>(ys.size());
  const int64_t inner = numel / samples;
  const int64_t per_sample = num_chunks(inner);
  at::parallel_for(0, samples * per_sample, kChunksPerTask, [&](int64_t c0, int64_t c1) {
    acc_t acc[kCpuChunk];
    for (int64_t c = c0; c < c1; ++c) {
      const StretchChunk chunk = stretch_chunk(c, per_sample, inner);
      mix_chunk<scalar_t, acc_t>(out, acc, ys.data(), w + chunk.sample * K, K, chunk.offset, chunk.n);
    }
  });
}

// The backward of mix_stretches from g (grad_out): grads[k] = w[s, k] * g on stretch s where
// grads[k] is set, and, when grad_weights is set, grad_weights[k * samples + s] = <ys[k], g> over
// stretch s (ys[k] is read only then).
template <typename scalar_t, typename acc_t>
void unmix_stretches(const scalar_t* g, const std::vector<const scalar_t*>& ys, const std::vector<scalar_t*>& grads,
                     const acc_t* w, int64_t samples, int64_t numel, acc_t* grad_weights) {
  const int64_t K = static_cast<int64_t>(ys.size());
  const int64_t inner = numel / samples;
  const int64_t per_sample = num_chunks(inner);
  const int64_t chunks = samples * per_sample;
  std::vector<acc_t> partials(grad_weights != nullptr ? chunks * K : 0);
  at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
    acc_t g_chunk[kCpuChunk];
    for (int64_t c = c0; c < c1; ++c) {
      const StretchChunk chunk = stretch_chunk(c, per_sample, inner);
      load_chunk<scalar_t, acc_t>(g_chunk, g + chunk.offset, chunk.n);
      unmix_chunk<scalar_t, acc_t>(grads.data(), ys.data(), g_chunk, w + chunk.sample * K, K, chunk.offset, chunk.n,
                                   grad_weights != nullptr ? &partials[c * K] : nullptr);
    }
  });
  if (grad_weights == nullptr) return;
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t s = 0; s < samples; ++s) {
      double total = 0.0;  // chunk order is fixed, so this sum is deterministic
      for (int64_t j = 0; j < per_sample; ++j) total += static_cast<double>(partials[(s * per_sample + j) * K + k]);
      grad_weights[k * samples + s] = static_cast<acc_t>(total);
    }
  }
}

}  // namespace
}  // namespace gaea_ext
