// 3x3, stride 1, padding 1 pool windows of one plane, in registers, shared by the CUDA
// kernels of mixed_node and pool_stats: the average without padded cells, the first maximum
// in PyTorch's scan order, and the gather form of the pools' adjoint (no atomics), plus a
// fixed-shape block reduction (deterministic).
#pragma once

#include "../gaea_ext.h"

namespace gaea_ext {
namespace pool_windows {

template <typename acc_t>
__device__ __forceinline__ bool is_nan(acc_t v) {
  return v != v;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t avg3(const scalar_t* plane, int h, int w, int H, int W) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  acc_t s = 0;
  for (int ih = h0; ih <= h1; ++ih)
    for (int iw = w0; iw <= w1; ++iw) s += static_cast<acc_t>(plane[ih * W + iw]);
  return s / static_cast<acc_t>((h1 - h0 + 1) * (w1 - w0 + 1));
}

// Value and flat index of the first maximum of the window at (h, w) (PyTorch's scan order).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t max3(const scalar_t* plane, int h, int w, int H, int W, int* index) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  int best = h0 * W + w0;
  acc_t m = static_cast<acc_t>(plane[best]);
  for (int ih = h0; ih <= h1; ++ih) {
    for (int iw = w0; iw <= w1; ++iw) {
      const acc_t v = static_cast<acc_t>(plane[ih * W + iw]);
      if (v > m || is_nan(v)) {
        m = v;
        best = ih * W + iw;
      }
    }
  }
  *index = best;
  return m;
}

// grad_x of source s at (h, w) from its avg terms' adjoint and max terms' routing.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t pool_adjoint(const scalar_t* __restrict g, const scalar_t* x, int kind, int h, int w,
                                              int H, int W) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  const int p = h * W + w;
  acc_t s = 0;
  for (int qh = h0; qh <= h1; ++qh) {
    for (int qw = w0; qw <= w1; ++qw) {
      const acc_t gq = static_cast<acc_t>(g[qh * W + qw]);
      if (is_avg_kind(kind)) {
        const int cnt = (min(qh + 1, H - 1) - max(qh - 1, 0) + 1) * (min(qw + 1, W - 1) - max(qw - 1, 0) + 1);
        s += gq / static_cast<acc_t>(cnt);
      } else {
        int index;
        max3<scalar_t, acc_t>(x, qh, qw, H, W, &index);
        if (index == p) s += gq;
      }
    }
  }
  return s;
}

// Sum of `v` over the block (blockDim.x == kBlock threads), the same tree every call;
// every thread gets the result. `red` is shared scratch of kBlock elements.
template <int kBlock, typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
    __syncthreads();
  }
  const acc_t total = red[0];
  __syncthreads();
  return total;
}

}  // namespace pool_windows
}  // namespace gaea_ext
