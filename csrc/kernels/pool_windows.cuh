// 3x3, stride 1, padding 1 pool windows of one plane, in registers, shared by the CUDA
// kernels of mixed_node and pool_stats: the average without padded cells, the first maximum
// in PyTorch's scan order, and the gather form of the pools' adjoint (no atomics) from the
// 5x5 neighbourhood, plus a fixed-shape block reduction (deterministic). Torch-free device
// code (see docs/kernels.md).
#pragma once

namespace gaea_kernels {
namespace pool_windows {

template <typename Acc>
__device__ __forceinline__ bool is_nan(Acc v) {
  return v != v;
}

// Cells of the window centred at (qh, qw) inside the plane: the average pool's divisor.
__device__ __forceinline__ int window_count(int qh, int qw, int H, int W) {
  return (min(qh + 1, H - 1) - max(qh - 1, 0) + 1) * (min(qw + 1, W - 1) - max(qw - 1, 0) + 1);
}

template <typename T, typename Acc>
__device__ __forceinline__ Acc avg3(const T* plane, int h, int w, int H, int W) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  Acc s = 0;
  for (int ih = h0; ih <= h1; ++ih)
    for (int iw = w0; iw <= w1; ++iw) s += static_cast<Acc>(plane[ih * W + iw]);
  return s / static_cast<Acc>((h1 - h0 + 1) * (w1 - w0 + 1));
}

// Value and flat index of the first maximum of the window at (h, w) (PyTorch's scan order).
template <typename T, typename Acc>
__device__ __forceinline__ Acc max3(const T* plane, int h, int w, int H, int W, int* index) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  int best = h0 * W + w0;
  Acc m = static_cast<Acc>(plane[best]);
  for (int ih = h0; ih <= h1; ++ih) {
    for (int iw = w0; iw <= w1; ++iw) {
      const Acc v = static_cast<Acc>(plane[ih * W + iw]);
      if (v > m || is_nan(v)) {
        m = v;
        best = ih * W + iw;
      }
    }
  }
  *index = best;
  return m;
}

// The 3x3 windows around (h, w) are the windows centred at (h + dy, w + dx), dy, dx in -1..1,
// numbered k = (dy + 1) * 3 + (dx + 1) (qh, then qw ascending); all of them lie inside the 5x5
// neighbourhood of (h, w), whose cell (h + a - 2, w + b - 2) is bit a * 5 + b below. The
// helpers read those 25 cells once each instead of 9 cells per window (81 loads); their loops
// unroll fully, so the masks and sums are compile-time indexed registers.
__host__ __device__ constexpr unsigned window_cells(int dy, int dx) {
  unsigned bits = 0;
  for (int ky = -1; ky <= 1; ++ky)
    for (int kx = -1; kx <= 1; ++kx) bits |= 1u << ((dy + ky + 2) * 5 + (dx + kx + 2));
  return bits;
}

__device__ __forceinline__ bool window_in_plane(int k, int h, int w, int H, int W) {
  const int qh = h + k / 3 - 1, qw = w + k % 3 - 1;
  return qh >= 0 && qh < H && qw >= 0 && qw < W;
}

// Bit k set: window k's first maximum under PyTorch's rule (max3's: scan rows then columns,
// take `v > m || isnan(v)`) is (h, w), so its max-pool gradient goes to (h, w). That holds iff
// every other cell r of the window allows it: a cell scanned before (h, w) must be smaller
// (any value if x(h, w) is NaN), a cell scanned after must not be larger nor NaN (not NaN if
// x(h, w) is NaN). "Before" is the same in every window, so each cell gets one bit.
template <typename T, typename Acc>
__device__ __forceinline__ unsigned max_windows_routing_to(const T* plane, int h, int w, int H, int W) {
  const Acc xp = static_cast<Acc>(plane[h * W + w]);
  const bool nan_p = is_nan(xp);
  unsigned rows = 0, cols = 0;  // bit a: row h + a - 2 (column w + a - 2) lies inside the plane
#pragma unroll
  for (int a = 0; a < 5; ++a) {
    rows |= static_cast<unsigned>(h + a - 2 >= 0 && h + a - 2 < H) << a;
    cols |= static_cast<unsigned>(w + a - 2 >= 0 && w + a - 2 < W) << a;
  }
  unsigned allows = 1u << (2 * 5 + 2);  // (h, w) itself
#pragma unroll 1  // a row of 5 loads at a time: 25 loads in flight would take 25 registers
  for (int a = 0; a < 5; ++a) {
    const int row = (h + a - 2) * W + (w - 2);  // an index, not a pointer: it may lie before the plane
#pragma unroll
    for (int b = 0; b < 5; ++b) {
      if (a == 2 && b == 2) continue;
      bool ok = true;  // cells outside the plane are in no window
      if ((rows >> a & cols >> b) & 1u) {
        const Acc v = static_cast<Acc>(plane[row + b]);
        const bool before = a < 2 || (a == 2 && b < 2);
        ok = nan_p ? (before || !is_nan(v)) : (before ? v < xp : v <= xp);
      }
      allows |= static_cast<unsigned>(ok) << (a * 5 + b);
    }
  }
  unsigned routed = 0;
#pragma unroll 1
  for (int k = 0; k < 9; ++k) {
    const unsigned cells = window_cells(-1, -1) << (k / 3 * 5 + k % 3);
    const bool in_plane = (rows >> (k / 3 + 1) & cols >> (k % 3 + 1)) & 1u;
    if (in_plane && (allows & cells) == cells) routed |= 1u << k;
  }
  return routed;
}

// avg[k]: the average (without padded cells) of window k, for every window k in the plane,
// with avg3's sum order (rows, then columns), so the same bits as avg3.
template <typename T, typename Acc>
__device__ __forceinline__ void window_averages(const T* plane, int h, int w, int H, int W, Acc (&avg)[9]) {
#pragma unroll
  for (int k = 0; k < 9; ++k) avg[k] = 0;
#pragma unroll
  for (int a = 0; a < 5; ++a) {
#pragma unroll
    for (int b = 0; b < 5; ++b) {
      const int r = h + a - 2, c = w + b - 2;
      if (r < 0 || r >= H || c < 0 || c >= W) continue;
      const Acc v = static_cast<Acc>(plane[r * W + c]);
#pragma unroll
      for (int k = 0; k < 9; ++k)
        if (window_cells(k / 3 - 1, k % 3 - 1) >> (a * 5 + b) & 1u) avg[k] += v;
    }
  }
#pragma unroll
  for (int k = 0; k < 9; ++k) avg[k] /= static_cast<Acc>(window_count(h + k / 3 - 1, w + k % 3 - 1, H, W));
}

// grad_x of source s at (h, w) from its avg terms' adjoint (avg) or max terms' routing.
template <typename T, typename Acc>
__device__ __forceinline__ Acc pool_adjoint(const T* __restrict g, const T* x, bool avg, int h, int w,
                                              int H, int W) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  Acc s = 0;
  if (avg) {
    for (int qh = h0; qh <= h1; ++qh) {
      for (int qw = w0; qw <= w1; ++qw) {
        s += static_cast<Acc>(g[qh * W + qw]) / static_cast<Acc>(window_count(qh, qw, H, W));
      }
    }
    return s;
  }
  const unsigned routed = max_windows_routing_to<T, Acc>(x, h, w, H, W);
#pragma unroll
  for (int k = 0; k < 9; ++k)
    if (routed >> k & 1u) s += static_cast<Acc>(g[(h + k / 3 - 1) * W + (w + k % 3 - 1)]);
  return s;
}

// Sum of `v` over the block (blockDim.x == kBlock threads), the same tree every call;
// every thread gets the result. `red` is shared scratch of kBlock elements.
template <int kBlock, typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v, Acc* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
    __syncthreads();
  }
  const Acc total = red[0];
  __syncthreads();
  return total;
}

}  // namespace pool_windows
}  // namespace gaea_kernels
